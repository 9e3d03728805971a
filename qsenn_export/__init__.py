"""Export of trained Q-SENN models to ONNX and TensorRT, verified against the source model.

Light on import: the CLI reads `formats` at start-up; the exporters load torch when called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .formats import ExportOptions


def export(source: Path, options: ExportOptions, echo: Callable[[str], None] = print) -> Path:
    """Export a run directory (RUN/final.pt) or a checkpoint file; returns the written file."""
    if options.format == "trt":
        from .trt_build import export_trt

        return export_trt(source, options, echo)
    from .onnx_export import export_onnx

    return export_onnx(source, options, echo)
