"""Shared by the runtime benchmarks: a toy model of realistic size when no export is given and
result files named by CPU and library versions. The trtexec-style latency summary and the CPU
name come from qsenn_export.timing, which `qsenn bench` uses too."""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path

from qsenn_export.timing import cpu_name, latency_summary  # noqa: F401  (the scripts import both from here)

RESULTS = Path(__file__).resolve().parent / "results"
TESTS = Path(__file__).resolve().parents[1] / "tests"


def toy_model_file(
    folder: Path,
    size: int = 448,
    classes: int = 200,
    features: int = 50,
    widths: tuple[int, ...] = (32, 64, 128, 256, 512),
) -> Path:
    """A contract-conforming ONNX model with five stride-2 3×3 convolutions (~1 GMAC per 448 px
    image, a sixteenth of ResNet-50's), 14×14 feature maps and a paper-sized head (F = 50)."""
    sys.path.insert(0, str(TESTS))
    from toy_onnx import save_toy_model, toy_metadata

    path = folder / f"toy-{size}px-{classes}c-{features}f.onnx"
    save_toy_model(path, toy_metadata(classes, features, size=size, channels=widths[-1]), widths=widths)
    return path


def write_results(kind: str, model: Path, data: dict) -> Path:
    import onnxruntime

    slug = re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-")
    path = RESULTS / f"{kind}_{slug}_ort{onnxruntime.__version__}_{model.stem}.json"
    RESULTS.mkdir(exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "cpu": cpu_name(),
                "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version(),
                "model": str(model),
                **data,
            },
            indent=2,
        )
        + "\n"
    )
    return path
