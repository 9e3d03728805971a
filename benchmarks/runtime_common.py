"""Shared by the runtime benchmarks: a toy model of realistic size when no export is given and
result files named like every result (qsenn_bench.reporting). The trtexec-style latency summary and
the CPU name are the ones `qsenn bench` uses."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


@dataclass
class QuantisationInputs:
    """What the INT8 benchmarks start from: the model, its fp32 ONNX graph, agreement and
    calibration images (with their descriptions)."""

    source: Any  # qsenn_export.source.ExportSource
    metadata: Any  # qsenn_runtime.metadata.ModelMetadata
    fp32_model: Any  # onnx.ModelProto
    images: np.ndarray
    images_description: str
    calibration: np.ndarray
    calibration_description: str


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", type=Path, help="run directory or checkpoint (default: random)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--calib-count", type=int, default=16)
    parser.add_argument("--images", type=int, default=32, help="agreement images")


def quantisation_inputs(args: argparse.Namespace, threads: int | None) -> QuantisationInputs:
    """The inputs of `add_model_arguments`' arguments: a trained run, or random weights of --arch."""
    from qsenn_bench.bench import BenchConfig, agreement_images, calibration_images
    from qsenn_bench.sources import bench_source
    from qsenn_export._common import OPSET, fold_source, to_onnx
    from qsenn_export.metadata import build_metadata

    random_weights = args.source is None
    source = bench_source(
        args.source, args.arch if random_weights else None, args.img_size if random_weights else None, random_weights
    )
    config = BenchConfig(threads=threads, images=args.images, calib_count=args.calib_count)
    metadata = build_metadata(source, OPSET)
    images, images_description = agreement_images(source, config, print)
    calibration, calibration_description = calibration_images(source, config, print)
    fp32_model = to_onnx(fold_source(source), metadata, batch=None)
    return QuantisationInputs(
        source, metadata, fp32_model, images, images_description, calibration, calibration_description
    )
