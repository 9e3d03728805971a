"""`qsenn export --format onnx`: fold, export with torch.onnx (dynamo), store T as int8 (ternary
heads), attach the metadata, check, (with --int8) quantise the backbone, write atomically and
verify against the PyTorch model."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from ._common import OPSET, default_output, describe, fold_source, report_macs, to_onnx, write_verified
from .atlas import find_atlas, with_atlas
from .evidence import with_evidence
from .formats import CALIBRATION_LIMIT, ExportOptions, validate
from .int8 import Int8Settings, quantize_backbone
from .metadata import build_metadata
from .source import load_source
from .verify import folder_images, torch_outputs, verification_images, verify_onnx


def export_onnx(source_path: Path, options: ExportOptions, echo: Callable[[str], None] = print) -> Path:
    validate(options)
    source = load_source(source_path, options.model_type)
    # An INT8 model sits beside the fp32 one (qsenn.int8.onnx) instead of replacing it.
    out = options.out or default_output(source, (".int8" if options.int8 else "") + options.export_format.suffix)
    echo(
        f"exporting {source.checkpoint} ({describe(source)}) to ONNX opset {OPSET}, "
        f"{'batch ' + str(options.batch) if options.batch else 'dynamic batch'}"
    )
    folded = fold_source(source)
    report_macs(source, folded, echo)
    metadata = build_metadata(source, OPSET, options.feature_names)
    metadata = with_atlas(
        metadata, source, find_atlas(source, options.atlas), options.prototypes, options.feature_names is not None, echo
    )
    metadata = with_evidence(metadata, source, options.evidence_count, options.evidence_images, echo)
    model = to_onnx(folded, metadata, options.batch)
    if options.int8:
        assert options.calib is not None  # validate() refuses --int8 without --calib
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
        reference = torch_outputs(source.model, source.head.scale, source.info, images)
        verify = partial(
            verify_onnx, reference=reference, images=images, description=description, tolerance=options.tolerance
        )
    write_verified(out, data, verify, echo)
    return out
