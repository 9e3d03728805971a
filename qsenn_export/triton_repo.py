"""`qsenn export --format triton | triton-trt`: a Triton model repository.

    REPO/<name>/config.pbtxt     inputs, outputs, max_batch_size, dynamic batching, instance
                                 group, and the qsenn metadata in `parameters`
    REPO/<name>/labels.txt       class names (Triton's classification extension)
    REPO/<name>/1/model.onnx     the verified `--format onnx` export (dynamic batch), or
    REPO/<name>/1/model.plan     the verified `--format trt` engine's TensorRT plan

The model folder is assembled beside its place and renamed into it, so a Triton server polling
the repository never sees half of it; other models in REPO are left alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from qsenn_runtime import load
from qsenn_runtime.engine_file import read_engine_file
from qsenn_runtime.metadata import ModelMetadata
from qsenn_runtime.serving.triton_config import (
    LABELS_FILE,
    MODEL_FILES,
    PLATFORM_ONNX,
    PLATFORM_TENSORRT,
    labels_text,
    model_config,
    to_pbtxt,
)

from ._common import failed_path
from .errors import ExportError
from .formats import DEFAULT_TRT_BATCH, TRITON_MODEL_FORMATS, ExportOptions, validate
from .onnx_export import export_onnx
from .trt_build import export_trt

MODEL_VERSION = "1"
CONFIG_FILE = "config.pbtxt"
_VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def default_repository(source_path: Path) -> Path:
    """RUN/triton for a run (or a checkpoint in one), else a `triton` folder beside the checkpoint."""
    source_path = Path(source_path)
    if source_path.is_dir():
        return source_path / "triton"
    return source_path.parent / "triton"


def default_name(metadata: ModelMetadata) -> str:
    """<arch>_<dataset>, e.g. resnet50_CUB2011, from the model's provenance."""
    provenance = metadata.provenance
    parts = [str(provenance.get("arch") or "qsenn"), str(provenance.get("dataset") or "model")]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", "_".join(parts))


def export_triton(source_path: Path, options: ExportOptions, echo: Callable[[str], None] = print) -> Path:
    """Write REPO/<name>/ and return it."""
    validate(options)
    if options.name is not None and not _VALID_NAME.fullmatch(options.name):
        raise ExportError(
            f"--name {options.name!r}: use letters, digits, '_', '.' and '-' (Triton names folders by it)"
        )
    repository = options.out or default_repository(source_path)
    if repository.exists() and not repository.is_dir():
        raise ExportError(f"--out {repository} is a file; a Triton repository is a folder")
    inner_format = TRITON_MODEL_FORMATS[options.format]
    max_batch = options.batch or DEFAULT_TRT_BATCH
    staging = repository / f".qsenn-export.tmp{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / MODEL_VERSION).mkdir(parents=True)
    try:
        # The ONNX model keeps a dynamic batch (Triton's max_batch_size needs one); an engine's
        # profile ends at max_batch.
        artifact = staging / (
            "model.engine" if inner_format == "trt" else f"{MODEL_VERSION}/{MODEL_FILES[PLATFORM_ONNX]}"
        )
        inner = dataclasses.replace(
            options,
            format=inner_format,
            out=artifact,
            batch=max_batch if inner_format == "trt" else None,
            name=None,
            given=options.given - {"name", "batch"},
        )
        # The exporters' lines name the staging folder; show the place the model will have.
        place = f"{repository / (options.name or '<name>')}"

        def echo_placed(line: str) -> None:
            echo(line.replace(str(staging), place))

        try:
            (export_trt if inner_format == "trt" else export_onnx)(source_path, inner, echo_placed)
        except ExportError as exc:
            raise _keep_failed(exc, artifact, repository) from None
        # The runtime opens the artifact once more: its graph and metadata agree, and the
        # config takes the feature-map size from the graph itself.
        model = load(artifact)
        metadata = model.metadata
        name = options.name or default_name(metadata)
        maps = model.backend.output_shapes["feature_maps"]
        del model
        if inner_format == "trt":
            plan = read_engine_file(artifact)[1]
            (staging / MODEL_VERSION / MODEL_FILES[PLATFORM_TENSORRT]).write_bytes(plan)
            artifact.unlink()
        platform = PLATFORM_TENSORRT if inner_format == "trt" else PLATFORM_ONNX
        config = model_config(
            name,
            metadata,
            platform=platform,
            max_batch_size=max_batch,
            feature_map_size=None if None in maps[2:] else (int(maps[2]), int(maps[3])),
            # ONNX: on the GPUs when Triton has any, else on the CPU; a plan runs on GPUs only.
            instance_kind="KIND_GPU" if platform == PLATFORM_TENSORRT else "KIND_AUTO",
        )
        (staging / CONFIG_FILE).write_text(to_pbtxt(config), encoding="utf-8")
        (staging / LABELS_FILE).write_text(labels_text(metadata), encoding="utf-8")
        target = repository / name
        _replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    echo(
        f"wrote the Triton model repository {repository}: model {name!r} ({platform}, max_batch_size {max_batch}; "
        f"{CONFIG_FILE}, {LABELS_FILE}, {MODEL_VERSION}/{MODEL_FILES[platform]})"
    )
    return target


def _keep_failed(exc: ExportError, artifact: Path, repository: Path) -> ExportError:
    """A model that failed verification stays for inspection, in REPO rather than the staging folder."""
    failed = failed_path(artifact)
    if not failed.exists():
        return exc
    kept = repository / failed.name
    os.replace(failed, kept)
    return ExportError(str(exc).replace(str(failed), str(kept)).replace(str(artifact), "the repository"))


def _replace_folder(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; an existing `target` is swapped out first, then removed."""
    old = target.with_name(f".{target.name}.old{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
