"""The ModelMetadata that travels with an exported model, filled in from the source's checkpoint
record, its head and its run's metrics. The schema is qsenn_runtime.metadata's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qsenn_runtime.metadata import HEAD_TERNARY, Feature, InputSpec, ModelMetadata
from qsenn_train.versions import library_versions

from .errors import ExportError
from .source import ExportSource


def exporter_versions(opset: int) -> dict:
    return {"name": "qsenn export", **library_versions(), "opset": opset}


def read_feature_names(path: Path, n_features: int) -> list[str]:
    """Names of the F features from a JSON list (one per feature) or an {index: name} object
    (features it leaves out keep `feature j`)."""
    names = [f"feature {j}" for j in range(n_features)]
    try:
        given = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read feature names from {path} ({exc})") from None
    if isinstance(given, list):
        if len(given) != n_features:
            raise ExportError(f"{path} lists {len(given)} feature names; the model has {n_features} features")
        entries = dict(enumerate(given))
    elif isinstance(given, dict):
        try:
            entries = {int(j): name for j, name in given.items()}
        except ValueError:
            raise ExportError(f"{path}: the keys must be feature indices 0..{n_features - 1}") from None
    else:
        raise ExportError(f"{path} must hold a JSON list of names or an object {{index: name}}")
    for j, name in entries.items():
        if not 0 <= j < n_features or not isinstance(name, str) or not name.strip():
            raise ExportError(f"{path}: entry {j}: {name!r} is not a non-empty name of a feature 0..{n_features - 1}")
        names[j] = name.strip()
    return names


def build_metadata(source: ExportSource, opset: int, feature_names: Path | None = None) -> ModelMetadata:
    info, record, head = source.info, source.record, source.head
    selection = source.model.sparse_head.selection.tolist()
    names = (
        read_feature_names(feature_names, len(selection))
        if feature_names is not None
        else [f"feature {j}" for j in range(len(selection))]
    )
    weights = head.weights.numpy()
    metadata = ModelMetadata(
        class_names=info.class_names,
        features=tuple(Feature(j, int(channel), names[j]) for j, channel in enumerate(selection)),
        head_kind=head.kind,
        weights=weights.astype(np.int8) if head.kind == HEAD_TERNARY else weights.astype(np.float32),
        bias=head.bias.numpy().astype(np.float32),
        scale=head.scale,
        input=InputSpec(source.img_size, info.resize_mode, info.mean, info.std),
        model_type=source.model_type or ("qsenn" if head.kind == HEAD_TERNARY else "sldd"),
        provenance={
            "dataset": info.name,
            "crop_gt": info.crop_gt,
            "arch": record["arch"],
            "reduced_strides": record["reduced_strides"],
            "recipe": record.get("recipe"),
            "seed": record.get("seed"),
            "metrics": source.metrics,
            "checkpoint": source.checkpoint.name,
            **({"imported_from": record["imported_from"]} if "imported_from" in record else {}),
        },
        exporter=exporter_versions(opset),
    )
    metadata.validate()
    return metadata
