"""What is exported (a run or a checkpoint file) and the ModelMetadata that travels with it.

The schema is qsenn_runtime.metadata's; this module only fills it in from a checkpoint
record, the run's configuration and its metrics.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime

from qsenn_runtime.metadata import Feature, InputSpec, ModelMetadata
from qsenn_train.checkpoint import load_checkpoint
from qsenn_train.context import library_versions
from qsenn_train.data.base import DatasetInfo
from qsenn_train.errors import QsennError
from qsenn_train.model import QResNet
from qsenn_train.quantize import TernaryHead
from qsenn_train.rundir import CONFIG, FINAL_LINK

from .fold import ternary_head

RUN_LAYOUT_DEPTH = "*/*/*"  # OUT/<arch>/<dataset>/<seed>/, as `qsenn train --out OUT` writes


@dataclass
class ExportSource:
    """A loaded model with everything the metadata and the verification need."""

    model: QResNet
    record: dict
    checkpoint: Path
    run_dir: Path | None
    model_type: str
    metrics: dict | None
    head: TernaryHead

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo.from_json(self.record["dataset"])

    @property
    def img_size(self) -> int:
        return int(self.record["img_size"])


def _newest_run(folder: Path) -> Path | None:
    """The most recently finished run below a `qsenn train --out` folder."""
    finals = [p for p in folder.glob(f"{RUN_LAYOUT_DEPTH}/{FINAL_LINK}") if p.exists()]
    return max(finals, key=lambda p: p.stat().st_mtime).parent if finals else None


def resolve_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, its run directory or None) for a run, a runs folder or a file."""
    path = Path(path)
    if path.is_file():
        return path, path.parent if (path.parent / CONFIG).is_file() else None
    if not path.is_dir():
        raise QsennError(f"{path} does not exist; pass a run directory or a checkpoint file")
    if (path / CONFIG).is_file():
        if not (path / FINAL_LINK).exists():
            raise QsennError(
                f"run {path} has no {FINAL_LINK} (training has not finished); finish it with `qsenn train ... --resume`"
            )
        return path / FINAL_LINK, path
    run = _newest_run(path)
    if run is None:
        raise QsennError(
            f"{path} is neither a run directory (no {CONFIG}) nor a folder of finished "
            f"runs; pass RUN or RUN/{FINAL_LINK}"
        )
    return run / FINAL_LINK, run


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QsennError(f"cannot read {path} ({exc}); the run directory is damaged") from None


def load_source(path: Path) -> ExportSource:
    checkpoint, run_dir = resolve_checkpoint(path)
    model_type, metrics = "qsenn", None
    if run_dir is not None:
        try:
            model_type = _read_json(run_dir / CONFIG)["recipe"]["model_type"]
        except (KeyError, TypeError):
            raise QsennError(f"{run_dir / CONFIG} names no recipe.model_type; the run directory is damaged") from None
        if model_type != "qsenn":
            raise QsennError(
                f"run {run_dir} trained a {model_type} model, whose head is real-valued; "
                f"qsenn export takes Q-SENN models only (the exported contract is a ternary head)"
            )
        metrics_file = run_dir / f"metrics_{model_type}.json"
        metrics = _read_json(metrics_file) if metrics_file.is_file() else None
    model, record = load_checkpoint(checkpoint)
    model.eval()
    return ExportSource(
        model=model,
        record=record,
        checkpoint=checkpoint,
        run_dir=run_dir,
        model_type=model_type,
        metrics=metrics,
        head=ternary_head(model, str(checkpoint)),
    )


def qsenn_version() -> str:
    try:
        return importlib.metadata.version("qsenn")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "source tree"


def exporter_versions(opset: int) -> dict:
    return {
        "name": "qsenn export",
        "qsenn": qsenn_version(),
        **library_versions(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": opset,
    }


def read_feature_names(path: Path, n_features: int) -> list[str]:
    """Names of the F features from a JSON list (one per feature) or an {index: name} object
    (features it leaves out keep `feature j`)."""
    names = [f"feature {j}" for j in range(n_features)]
    try:
        given = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QsennError(f"cannot read feature names from {path} ({exc})") from None
    if isinstance(given, list):
        if len(given) != n_features:
            raise QsennError(f"{path} lists {len(given)} feature names; the model has {n_features} features")
        entries = dict(enumerate(given))
    elif isinstance(given, dict):
        try:
            entries = {int(j): name for j, name in given.items()}
        except ValueError:
            raise QsennError(f"{path}: the keys must be feature indices 0..{n_features - 1}") from None
    else:
        raise QsennError(f"{path} must hold a JSON list of names or an object {{index: name}}")
    for j, name in entries.items():
        if not 0 <= j < n_features or not isinstance(name, str) or not name.strip():
            raise QsennError(f"{path}: entry {j}: {name!r} is not a non-empty name of a feature 0..{n_features - 1}")
        names[j] = name.strip()
    return names


def build_metadata(source: ExportSource, opset: int, feature_names: Path | None = None) -> ModelMetadata:
    info, record, head = source.info, source.record, source.head
    selection = source.model.linear.selection.tolist()
    names = (
        read_feature_names(feature_names, len(selection))
        if feature_names is not None
        else [f"feature {j}" for j in range(len(selection))]
    )
    metadata = ModelMetadata(
        class_names=info.class_names,
        features=tuple(Feature(j, int(channel), names[j]) for j, channel in enumerate(selection)),
        ternary=head.ternary.numpy().astype("int8"),
        bias=head.bias.numpy().astype("float32"),
        scale=head.magnitude,
        input=InputSpec(source.img_size, info.resize_mode, info.mean, info.std),
        model_type=source.model_type,
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
