"""`qsenn bench`: latency, throughput, memory and agreement of a Q-SENN model across backends.

Backends come from the format table (formats.BENCH_BACKENDS): `torch`, the trained model in fp32
eager mode as the original code runs inference — the baseline of every ratio; the exported
artifacts run by qsenn_runtime (`onnx`, `onnx-int8`, `trt`), exported on the fly from the same
model; and on a GPU the optimised PyTorch paths (`torch-fp16`, `torch-compile`,
`torch-cudagraphs`), which run the folded graph with BN fused into the convs, the backbone in
fp16 channels-last and the head in fp32.

Timing: per batch size every backend is warmed up, then the timed calls of all backends are
interleaved (the order rotates every round), so that drifts in machine load hit all alike;
the ratios to the baseline come from these interleaved runs ("speedup" = ratio of the median
latencies, "paired" = median of the per-round ratios). Latency statistics are trtexec's; images
per second = batch / median latency. GPU calls synchronise before the clock stops; their inputs
are already on the GPU.

Agreement: every backend runs the same images as the baseline. top-1 = share of images with the
baseline's class; top-5 features = share of images whose 5 largest |contributions| to the
baseline's class come from the same features (verify.top_feature_agreement); the relative
errors and the verdict are verify.compare's against the backend's tolerance in the table.

Memory: peak RSS of a fresh process that loads the backend and runs one batch (CPU backends:
interpreter, libraries, weights and activations), or the CUDA allocator's peak during the
backend's runs plus its weights (GPU backends).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qsenn_export._common import OPSET
from qsenn_export.formats import FORMATS, TOP_FEATURES, Tolerance
from qsenn_export.metadata import build_metadata
from qsenn_export.source import ExportSource
from qsenn_export.verify import (
    Outputs,
    compare,
    folder_images,
    top_feature_agreement,
    training_images,
    verification_images,
)
from qsenn_runtime.errors import first_line
from qsenn_runtime.metadata import ModelMetadata
from qsenn_train.device import resolve_torch_device
from qsenn_train.errors import QsennError

from .backend_table import BASELINE_BACKEND, BENCH_BACKENDS, BenchBackend
from .backends import (
    FP16_TOLERANCE,
    Artifacts,
    Runner,
    build_runner,
    unavailable,
)
from .environment import environment
from .errors import BenchError
from .measurement import (
    PROFILE_BATCH,
    first_call,
    latency_summary,
    onnx_op_profile,
    peak_gpu_mib,
    peak_rss_mib,
    profile_line,
    time_interleaved,
)
from .sources import RANDOM_DATASET, model_label

TOP = f"top{TOP_FEATURES}_features"  # key of the top-feature agreement in results


@dataclass(frozen=True)
class BenchConfig:
    backends: tuple[str, ...] = tuple(BENCH_BACKENDS)  # timed; the baseline is always added
    check_only: tuple[str, ...] = ()  # compared with the baseline, not timed
    batches: tuple[int, ...] = (1, 8, 32)
    warmup: int = 3
    iters: int = 20
    threads: int | None = None  # CPU threads of torch and onnxruntime (None: every usable CPU)
    device: str = "auto"  # torch device: auto, cpu, cuda, cuda:N
    provider: str | None = None  # onnxruntime execution provider of the `onnx` backend
    images: int = 64  # agreement images
    calib: Path | None = None  # INT8 calibration folder (default: training images)
    calib_count: int = 128
    memory: bool = True
    artifacts: Path | None = None  # keep the exported models here (default: a temporary folder)
    gpu_backends_on_cpu: bool = False  # dry runs: run the GPU-only torch backends on the CPU

    def validate(self) -> None:
        unknown = [b for b in (*self.backends, *self.check_only) if b not in BENCH_BACKENDS]
        if unknown:
            raise BenchError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BENCH_BACKENDS)}")
        if not self.batches or min(self.batches) < 1:
            raise BenchError("--batch needs positive batch sizes, e.g. --batch 1,8,32")
        if self.warmup < 1 or self.iters < 1:
            raise BenchError("--warmup and --iters must be at least 1")
        if self.images < 1 or self.calib_count < 1:
            raise BenchError("--images and --calib-count must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise BenchError("--threads must be at least 1")

    @property
    def cpu_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


def agreement(
    reference: Outputs, candidate: Outputs, metadata: ModelMetadata, tolerance: Tolerance | None, images: str
) -> dict:
    """top-1 (exact argmax equality), top-5 features, relative errors and, where the table has a
    tolerance for the backend, the verdict of verify.compare against it."""
    report = compare(reference, candidate, metadata, tolerance or FORMATS["onnx"].tolerances["fp32"], images)
    result: dict[str, float | str] = {
        "images": len(reference["logits"]),
        "top1": float(np.mean(reference["logits"].argmax(1) == candidate["logits"].argmax(1))),
        TOP: top_feature_agreement(reference, candidate, metadata.weights),
        "logit_rel_err": report.logit_rel,
        "feature_rel_err": report.feature_rel,
        "contribution_rel_err": contribution_error(reference, candidate, metadata.weights),
        "feature_map_rel_err": report.feature_map_rel,
        "identity_rel_err": report.identity_rel,
    }
    if tolerance is not None:
        result["verdict"] = "OK" if report.ok else "; ".join(report.failures)
    return result


def contribution_error(reference: Outputs, candidate: Outputs, weights: np.ndarray) -> float:
    """max |W[k, j]·c_j − W[k, j]·c_ref_j| over the images, k the reference's class, relative to
    max(1, the largest reference contribution): how far the explanations themselves moved."""
    rows = weights[reference["logits"].argmax(1)].astype(np.float64)
    ours, theirs = rows * candidate["features"], rows * reference["features"]
    return float(np.abs(ours - theirs).max()) / max(1.0, float(np.abs(theirs).max()))


def tolerance_of(backend: BenchBackend) -> Tolerance | None:
    if backend.name == BASELINE_BACKEND:
        return None
    if backend.format is None:
        return FP16_TOLERANCE
    return FORMATS[backend.format].tolerances[backend.artifact_precision]


def run_bench(source: ExportSource, config: BenchConfig, echo: Callable[[str], None] = print) -> dict:
    """Build the runners, measure agreement, memory and interleaved latencies; the result dict
    is what --json writes (see write_csv for its rows)."""
    config.validate()
    device = resolve_torch_device(config.device)
    threads = config.cpu_threads
    torch.set_num_threads(threads)
    wanted = [BASELINE_BACKEND] + [
        b for b in dict.fromkeys((*config.backends, *config.check_only)) if b != BASELINE_BACKEND
    ]
    skipped = {}
    for name in wanted:
        reason = unavailable(BENCH_BACKENDS[name], device, config)
        if reason:
            skipped[name] = reason
            echo(f"{name}: skipped, {reason}")
    metadata = build_metadata(source, OPSET)
    images, images_description = agreement_images(source, config, echo)
    chunk = max(config.batches)
    with tempfile.TemporaryDirectory(prefix="qsenn-bench-") as scratch:
        folder = config.artifacts or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        artifacts = Artifacts(folder, source, metadata, lambda: calibration_images(source, config, echo), echo)
        runners = {}
        for name in (n for n in wanted if n not in skipped):
            runner = attempt(name, skipped, echo, build_runner, BENCH_BACKENDS[name], artifacts, device, config, chunk)
            if runner is not None:
                runners[name] = runner
                echo(f"{name}: {runner.describe}")

        reference = runners[BASELINE_BACKEND].outputs(images)
        agreements = {}
        for name, runner in list(runners.items())[1:]:
            outputs = attempt(name, skipped, echo, runner.outputs, images)
            if outputs is None:
                del runners[name]
            else:
                agreements[name] = agreement(
                    reference, outputs, metadata, tolerance_of(BENCH_BACKENDS[name]), images_description
                )
        profiles = {
            name: onnx_op_profile(
                artifacts.onnx(BENCH_BACKENDS[name].artifact_precision), images[:PROFILE_BATCH], threads
            )
            for name in runners
            if BENCH_BACKENDS[name].format == "onnx" and name not in config.check_only
        }
        for name, profile in profiles.items():
            echo(profile_line(name, profile))

        timed = [runners[n] for n in runners if n == BASELINE_BACKEND or n not in config.check_only]
        rows = []
        for batch_size in config.batches:
            batch = images[np.arange(batch_size) % len(images)]
            started = {r.name: attempt(r.name, skipped, echo, first_call, r, batch) for r in timed}
            timed = [r for r in timed if started[r.name] is not None]
            times = time_interleaved(
                timed, {r.name: started[r.name][0] for r in timed}, config.warmup - 1, config.iters
            )
            # after timing: warm runners, so a GPU peak holds no compilation or graph capture
            memory = {r.name: _peak_memory(r, batch, device) for r in timed} if config.memory else {}
            baseline = times[BASELINE_BACKEND]
            for runner in timed:
                summary = latency_summary(times[runner.name])
                rows.append(
                    {
                        "backend": runner.name,
                        "batch": batch_size,
                        **summary,
                        "images_per_s": batch_size / (summary["median_ms"] / 1e3),
                        "speedup": float(np.median(baseline)) / (summary["median_ms"] / 1e3),
                        "paired_speedup": float(np.median(np.asarray(baseline) / np.asarray(times[runner.name]))),
                        "first_call_ms": 1e3 * started[runner.name][1],
                        **memory.get(runner.name, {}),
                    }
                )
            echo(
                f"batch {batch_size}: "
                + ", ".join(f"{r['backend']} {r['median_ms']:.2f} ms" for r in rows if r["batch"] == batch_size)
            )

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    env = {
        **environment(gpu),
        "torch_device": str(device),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        env["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return {
        "kind": "qsenn-bench",
        "model": {
            "label": model_label(source),
            "arch": source.record["arch"],
            "img_size": source.img_size,
            "classes": len(source.head.bias),
            "features": source.head.num_features,
            "source": str(source.checkpoint),
        },
        "environment": env,
        "settings": {
            "batches": list(config.batches),
            "warmup": config.warmup,
            "iters": config.iters,
            "agreement_images": images_description,
            "baseline": BASELINE_BACKEND,
        },
        "backends": {name: runner.describe for name, runner in runners.items()},
        "skipped": skipped,
        "agreement": agreements,
        "onnx_profiles": profiles,
        "results": rows,
    }


def attempt(
    name: str, skipped: dict[str, str], echo: Callable[[str], None], call: Callable[..., Any], *args: Any
) -> Any:
    """call(*args), or None with the failure recorded as the backend's skip reason: a backend that
    breaks (a compiler, driver or provider error) must not cost the other backends' figures,
    least of all on a rented GPU. The baseline's failures propagate: without it nothing compares."""
    if name == BASELINE_BACKEND:
        return call(*args)
    try:
        return call(*args)
    except Exception as exc:  # any library's error: report it and go on without this backend
        reason = f"failed: {type(exc).__name__}: {first_line(exc)}"
        skipped[name] = reason
        echo(f"{name}: {reason}")
        return None


def _peak_memory(runner: Runner, batch: np.ndarray, device: torch.device) -> dict:
    if runner.gpu and device.type == "cuda" and runner.weights_bytes:
        return {"peak_memory_mib": peak_gpu_mib(runner, batch, device), "memory_kind": "cuda-allocator"}
    if runner.rss_probe:
        return {"peak_memory_mib": peak_rss_mib(runner.rss_probe, len(batch)), "memory_kind": "process-rss"}
    return {}


def agreement_images(source: ExportSource, config: BenchConfig, echo) -> tuple[np.ndarray, str]:
    if source.info.name == RANDOM_DATASET:
        generator = torch.Generator().manual_seed(1)
        images = torch.rand(config.images, 3, source.img_size, source.img_size, generator=generator)
        return images.numpy(), f"{config.images} random images"
    images, description = verification_images(source.info, source.img_size, config.images, None, echo)
    return images.numpy(), description


def calibration_images(source: ExportSource, config: BenchConfig, echo) -> tuple[np.ndarray, str]:
    if config.calib is not None:
        images = folder_images(config.calib, source.info, source.img_size, config.calib_count, spread=True)
        return images.numpy(), f"{len(images)} images of {config.calib}"
    if source.info.name != RANDOM_DATASET:
        try:
            images = training_images(source.info, source.img_size, config.calib_count)
            return images.numpy(), f"{len(images)} training images of {source.info.name}"
        except QsennError as exc:
            echo(
                f"the training images are not available ({str(exc).split(';')[0]}); calibrating on random "
                f"images, pass --calib DIR for real ones"
            )
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(config.calib_count, 3, source.img_size, source.img_size, generator=generator)
    return images.numpy(), f"{config.calib_count} random images"
