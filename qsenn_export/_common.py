"""What the ONNX and TensorRT exports share: the folded model, its ONNX graph with the head and
metadata, the output path, and the verified atomic write of the artifact."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from qsenn_runtime.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata
from qsenn_train.rundir import atomic_write, remove_stale_temporaries, temporary_name

from .errors import ExportError
from .fold import FoldedQSENN, count_macs
from .graph import attach_metadata, store_ternary_as_int8
from .source import ExportSource
from .verify import Report

OPSET = 18  # the dynamo exporter's native opset (≥ 17 as TensorRT 10 and ORT ≥ 1.14 read)
EXAMPLE_BATCH = 2  # a batch of 1 would let torch.export specialise the batch dimension


def fold_source(source: ExportSource) -> FoldedQSENN:
    info = source.info
    return FoldedQSENN(source.model, source.head, info.mean, info.std)


def have_onnxscript() -> bool:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError:
        return False
    return True


def _export_graph(folded: FoldedQSENN, example: torch.Tensor, dynamic_batch: bool) -> onnx.ModelProto:
    """torch.onnx's dynamo exporter; where onnxscript is missing (a bare GPU machine that only
    benchmarks) the TorchScript exporter, which writes the same contract (names, shapes, a float
    head matrix feeding the logits node) at the same opset."""
    if have_onnxscript():
        dynamic = {INPUT_NAME: {0: torch.export.Dim("batch")}} if dynamic_batch else None
        program = torch.onnx.export(
            folded,
            (example,),
            None,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes=dynamic,
            verbose=False,
        )
        if program is None:
            raise ExportError("internal error: torch.onnx.export returned no program")
        return program.model_proto
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
    torch.onnx.export(
        folded,
        (example,),
        buffer,  # type: ignore[arg-type]  # file objects work; torch's annotation names paths only
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=OPSET,
        dynamo=False,
        dynamic_axes=axes,
    )
    return onnx.load_from_string(buffer.getvalue())


def to_onnx(folded: FoldedQSENN, metadata: ModelMetadata, batch: int | None) -> onnx.ModelProto:
    """The checked ONNX model: `batch` None gives a dynamic batch dimension named "batch"; a
    ternary head is stored as an int8 T."""
    size = metadata.input.size
    example = torch.rand(batch or EXAMPLE_BATCH, 3, size, size)
    # The exporter narrates every step on stdout and warns about internals; keep the CLI quiet.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _export_graph(folded, example, dynamic_batch=batch is None)
    if metadata.is_ternary:
        store_ternary_as_int8(model, metadata.weights)
    return attach_metadata(model, metadata, "the exported graph")


def default_output(source: ExportSource, suffix: str) -> Path:
    """RUN/<model type><suffix> for a run's model (RUN/qsenn.onnx, RUN/sldd.engine), else the
    checkpoint's name with the format's suffix."""
    if source.run is not None and source.model_type is not None:
        return source.run.path / f"{source.model_type}{suffix}"
    return source.checkpoint.with_suffix(suffix)


def failed_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.failed{path.suffix}")


def write_verified(
    path: Path, data: bytes, verify: Callable[[Path], Report] | None, echo: Callable[[str], None]
) -> Report | None:
    """Write `data` under a temporary name, verify that file, then rename it to `path`.

    A file that fails verification is kept as <name>.failed<suffix> for inspection and `path` is
    left untouched; an error during verification removes the temporary file. Temporaries carry
    the writer's pid like every other (rundir.temporary_name): those of a killed export are removed
    by the next one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, recursive=False)
    if verify is None:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
        echo(f"wrote {path} ({len(data) / 1e6:.1f} MB, not verified)")
        return None
    tmp = temporary_name(path)
    try:
        tmp.write_bytes(data)
        report = verify(tmp)
        echo(report.line())
        if not report.ok:
            os.replace(tmp, failed_path(path))
            raise ExportError(
                f"verification failed ({'; '.join(report.failures)}); the unverified "
                f"model was kept as {failed_path(path)}, {path} was not written"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    failed_path(path).unlink(missing_ok=True)  # a failure of an earlier attempt is stale now
    echo(f"wrote {path} ({len(data) / 1e6:.1f} MB)")
    return report


def describe(source: ExportSource) -> str:
    head = source.head
    kind = f"{source.model_type}, " if source.model_type else ""
    return (
        f"{kind}{source.record['arch']}, {len(head.bias)} classes, {head.num_features} features "
        f"({head.kind} head), {source.img_size} px"
    )


def report_macs(source: ExportSource, folded: FoldedQSENN, echo: Callable[[str], None]) -> tuple[int, int]:
    """MACs per image of the trained model and of the folded graph (see count_macs)."""
    before, after = count_macs(source.model, source.img_size), count_macs(folded, source.img_size)
    echo(
        f"last block computes {source.head.num_features} of {source.model.feature_dim} channels: "
        f"{before / 1e9:.3f} → {after / 1e9:.3f} GMACs per image ({100 * (after - before) / before:+.2f}%)"
    )
    return before, after
