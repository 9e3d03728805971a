"""The ModelMetadata that travels with an exported model, filled in from the source's checkpoint
record, its head and its run's metrics. The schema is qsenn_runtime.metadata's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsenn_runtime.metadata import HEAD_TERNARY, Feature, InputSpec, ModelMetadata
from qsenn_train.atlas.feature_names import default_texts, read_feature_names
from qsenn_train.versions import library_versions

from .source import ExportSource


def exporter_versions(opset: int) -> dict:
    return {"name": "qsenn export", **library_versions(), "opset": opset}


def build_metadata(source: ExportSource, opset: int, feature_names: Path | None = None) -> ModelMetadata:
    info, record, head = source.info, source.record, source.head
    selection = source.model.sparse_head.selection.tolist()
    texts = (
        read_feature_names(feature_names, len(selection))
        if feature_names is not None
        else default_texts(len(selection))
    )
    weights = head.weights.numpy()
    metadata = ModelMetadata(
        class_names=info.class_names,
        features=tuple(
            Feature(j, int(channel), texts[j].name, texts[j].description) for j, channel in enumerate(selection)
        ),
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
