"""Export of trained Q-SENN models to ONNX and TensorRT, verified against the source model.

Light on import: the CLI reads `formats` at start-up; the exporters load torch when called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .formats import TRITON_MODEL_FORMATS, ExportOptions


def export(source: Path, options: ExportOptions, echo: Callable[[str], None] = print) -> Path:
    """Export a run directory (RUN/final.pt) or a checkpoint file; returns the written file
    (for a Triton format, the model's folder in the repository)."""
    if options.format in TRITON_MODEL_FORMATS:
        from .triton_repo import export_triton

        return export_triton(source, options, echo)
    if options.format == "trt":
        from .trt_build import export_trt

        return export_trt(source, options, echo)
    from .onnx_export import export_onnx

    return export_onnx(source, options, echo)
