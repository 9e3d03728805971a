"""`qsenn export --format onnx`: fold, export with torch.onnx (dynamo), store T as int8,
attach the metadata, check, (with --int8) quantise the backbone, write atomically and verify
against the PyTorch model."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import onnx
import torch

from qsenn_runtime.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata
from qsenn_train.errors import QsennError
from qsenn_train.rundir import atomic_write

from .fold import FoldedQSENN, attach_metadata, count_macs, store_ternary_as_int8
from .formats import CALIBRATION_LIMIT, ExportOptions, validate
from .int8 import Int8Settings, quantize_backbone
from .metadata import ExportSource, build_metadata, load_source
from .verify import Report, folder_images, torch_outputs, verification_images, verify_onnx

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
    benchmarks) the TorchScript exporter, which writes the same contract (names, shapes, a float T
    feeding the logits node) at the same opset."""
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
        return program.model_proto
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
    torch.onnx.export(
        folded,
        (example,),
        buffer,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=OPSET,
        dynamo=False,
        dynamic_axes=axes,
    )
    return onnx.load_from_string(buffer.getvalue())


def to_onnx(folded: FoldedQSENN, metadata: ModelMetadata, batch: int | None) -> onnx.ModelProto:
    """The checked ONNX model: `batch` None gives a dynamic batch dimension named "batch"."""
    size = metadata.input.size
    example = torch.rand(batch or EXAMPLE_BATCH, 3, size, size)
    # The exporter narrates every step on stdout and warns about internals; keep the CLI quiet.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _export_graph(folded, example, dynamic_batch=batch is None)
    store_ternary_as_int8(model, metadata.ternary)
    return attach_metadata(model, metadata, "the exported graph")


def default_output(source: ExportSource, suffix: str) -> Path:
    """RUN/model<suffix> for a run, else the checkpoint's name with the format's suffix."""
    if source.run_dir is not None:
        return source.run_dir / f"model{suffix}"
    return source.checkpoint.with_suffix(suffix)


def failed_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.failed{path.suffix}")


def write_verified(
    path: Path, data: bytes, verify: Callable[[Path], Report] | None, echo: Callable[[str], None]
) -> Report | None:
    """Write `data` under a temporary name, verify that file, then rename it to `path`.

    A file that fails verification is kept as <name>.failed<suffix> for inspection and
    `path` is left untouched; an error during verification removes the temporary file.
    """
    if verify is None:
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
        echo(f"wrote {path} ({len(data) / 1e6:.1f} MB, not verified)")
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        tmp.write_bytes(data)
        report = verify(tmp)
        echo(report.line())
        if not report.ok:
            os.replace(tmp, failed_path(path))
            raise QsennError(
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
    return f"{source.record['arch']}, {len(head.bias)} classes, {head.ternary.shape[1]} features, {source.img_size} px"


def report_macs(source: ExportSource, folded: FoldedQSENN, echo: Callable[[str], None]) -> tuple[int, int]:
    """MACs per image of the trained model and of the folded graph (see count_macs)."""
    before, after = count_macs(source.model, source.img_size), count_macs(folded, source.img_size)
    echo(
        f"last block computes {source.head.ternary.shape[1]} of {source.model.feature_dim} channels: "
        f"{before / 1e9:.3f} → {after / 1e9:.3f} GMACs per image ({100 * (after - before) / before:+.2f}%)"
    )
    return before, after


def export_onnx(source_path: Path, options: ExportOptions, echo: Callable[[str], None] = print) -> Path:
    validate(options)
    source = load_source(source_path)
    # An INT8 model sits beside the fp32 one (model.int8.onnx) instead of replacing it.
    out = options.out or default_output(source, (".int8" if options.int8 else "") + options.export_format.suffix)
    echo(
        f"exporting {source.checkpoint} ({describe(source)}) to ONNX opset {OPSET}, "
        f"{'batch ' + str(options.batch) if options.batch else 'dynamic batch'}"
    )
    folded = fold_source(source)
    report_macs(source, folded, echo)
    metadata = build_metadata(source, OPSET, options.feature_names)
    model = to_onnx(folded, metadata, options.batch)
    if options.int8:
        calibration = folder_images(options.calib, source.info, source.img_size, CALIBRATION_LIMIT, spread=True)
        settings = Int8Settings()
        echo(
            f"quantising the backbone to INT8 ({settings.describe()}; the head stays float), "
            f"calibrating on {len(calibration)} images of {options.calib}"
        )
        model = quantize_backbone(model, calibration.numpy(), metadata, str(options.calib), settings)
    data = model.SerializeToString()

    verify = None
    if options.verify:
        images, description = verification_images(
            source.info, source.img_size, options.verify_count, options.verify_images, echo
        )
        reference = torch_outputs(source.model, source.head.magnitude, source.info, images)
        verify = partial(
            verify_onnx, reference=reference, images=images, description=description, tolerance=options.tolerance
        )
    write_verified(out, data, verify, echo)
    return out
