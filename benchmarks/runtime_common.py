"""Shared by the runtime benchmarks: a toy model of realistic size when no export is given and
result files named like every result (qsenn_bench.reporting). The trtexec-style latency summary and
the CPU name are the ones `qsenn bench` uses."""

from __future__ import annotations

from pathlib import Path

from qsenn_bench.environment import cpu_name  # noqa: F401  (the scripts import these from here)
from qsenn_bench.measurement import latency_summary  # noqa: F401
from qsenn_bench.reporting import RESULTS, save_result


def toy_model_file(
    folder: Path,
    size: int = 448,
    classes: int = 200,
    features: int = 50,
    widths: tuple[int, ...] = (32, 64, 128, 256, 512),
) -> Path:
    """A contract-conforming ONNX model with five stride-2 3×3 convolutions (~1 GMAC per 448 px
    image, a sixteenth of ResNet-50's), 14×14 feature maps and a paper-sized head (F = 50)."""
    from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata

    path = folder / f"toy-{size}px-{classes}c-{features}f.onnx"
    save_toy_model(path, toy_metadata(classes, features, size=size, channels=widths[-1]), widths=widths)
    return path


def write_results(kind: str, model: Path, data: dict) -> Path:
    return save_result(kind, model.stem, {"model": str(model), **data}, RESULTS, ("onnxruntime",))
