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

import copy
import csv
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from qsenn_runtime.metadata import INPUT_NAME, OUTPUT_NAMES, ModelMetadata
from qsenn_train.checkpoint import model_record
from qsenn_train.data.base import RESIZE_SHORTER, DatasetInfo
from qsenn_train.errors import QsennError
from qsenn_train.model import build_model

from .fold import FoldedQSENN, ternary_head
from .formats import BASELINE_BACKEND, BENCH_BACKENDS, FORMATS, TOP_FEATURES, BenchBackend, Tolerance, make_options
from .int8 import quantize_backbone
from .metadata import ExportSource, build_metadata, load_source
from .onnx_export import OPSET, fold_source, to_onnx
from .timing import PEAK_RSS_KIB, environment, latency_summary, result_name
from .verify import (
    Outputs,
    SourceForward,
    compare,
    folder_images,
    run_in_batches,
    top_feature_agreement,
    training_images,
    verification_images,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# A random model has the paper's CUB head: 200 classes, 50 features, 5 per class.
RANDOM_CLASSES, RANDOM_FEATURES, RANDOM_PER_CLASS, RANDOM_MAGNITUDE = 200, 50, 5, 0.5
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FP16_TOLERANCE = FORMATS["trt"].tolerances["fp16"]  # the optimised torch paths run fp16 like an fp16 engine
# After a CPU backend's call its worker threads spin for a moment; a short pause keeps them from
# stealing cores from the next backend's timed call.
CPU_PAUSE_S = 0.005
PROFILE_RUNS = 3
PROFILE_BATCH = 1
TOP = f"top{TOP_FEATURES}_features"  # key of the top-feature agreement in results

RSS_PROBE_TORCH = (
    """
import sys, torch
from qsenn_train.checkpoint import load_checkpoint
path, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
model, record = load_checkpoint(path)
model.eval()
size = record["img_size"]
images = torch.rand(batch, 3, size, size)
with torch.no_grad():
    for _ in range(2):
        model(images)
"""
    + PEAK_RSS_KIB
)
RSS_PROBE_RUNTIME = (
    """
import sys, numpy as np, qsenn_runtime
path, batch, threads, provider = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] or None
model = qsenn_runtime.load(path, provider, threads=threads, batch_size=batch)
size = model.metadata.input.size
images = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
for _ in range(2):
    model.predict_tensor(images)
"""
    + PEAK_RSS_KIB
)


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
            raise QsennError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BENCH_BACKENDS)}")
        if not self.batches or min(self.batches) < 1:
            raise QsennError("--batch needs positive batch sizes, e.g. --batch 1,8,32")
        if self.warmup < 1 or self.iters < 1:
            raise QsennError("--warmup and --iters must be at least 1")
        if self.images < 1 or self.calib_count < 1:
            raise QsennError("--images and --calib-count must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise QsennError("--threads must be at least 1")

    @property
    def cpu_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


# ---- the model ------------------------------------------------------------------------------


def random_source(arch: str, img_size: int, seed: int = 0) -> ExportSource:
    """A randomly initialised backbone with a random ternary head of the paper's size, for
    architectures no trained model exists for (speed only: its agreement figures say little)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(arch, RANDOM_CLASSES)
    selection = torch.randperm(model.feature_dim, generator=generator)[:RANDOM_FEATURES].sort().values
    ternary = torch.zeros(RANDOM_CLASSES, RANDOM_FEATURES)
    for k in range(RANDOM_CLASSES):
        columns = torch.randperm(RANDOM_FEATURES, generator=generator)[:RANDOM_PER_CLASS]
        ternary[k, columns] = torch.randint(0, 2, (RANDOM_PER_CLASS,), generator=generator).float() * 2 - 1
    model.install_sparse_head(
        selection,
        torch.zeros(RANDOM_FEATURES),
        torch.ones(RANDOM_FEATURES),
        RANDOM_MAGNITUDE * ternary,
        torch.randn(RANDOM_CLASSES, generator=generator),
    )
    model.eval()
    info = DatasetInfo(
        name="random",
        root="",
        class_names=tuple(f"class {k}" for k in range(RANDOM_CLASSES)),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize_mode=RESIZE_SHORTER,
    )
    name = f"{arch}-{img_size}-random"
    return ExportSource(
        model=model,
        record=model_record(model, info, img_size, recipe="random", seed=seed),
        checkpoint=Path(f"{name}.pt"),
        run_dir=None,
        model_type="qsenn",
        metrics=None,
        head=ternary_head(model, name),
    )


def bench_source(path: Path | None, arch: str | None, img_size: int | None, random_weights: bool) -> ExportSource:
    """A trained model (run directory, runs folder or checkpoint), or with `random_weights` a
    random one of `arch` at `img_size`."""
    if random_weights:
        if path is not None:
            raise QsennError("pass either MODEL_OR_RUN or --random, not both")
        if arch is None or img_size is None:
            raise QsennError("--random needs --arch and --img-size, e.g. --arch resnet50 --img-size 448 --random")
        return random_source(arch, img_size)
    if path is None:
        raise QsennError("pass a run directory or checkpoint, or --arch A --img-size N --random")
    if arch is not None or img_size is not None:
        raise QsennError("--arch and --img-size go with --random; a trained model brings its own")
    return load_source(path)


def model_label(source: ExportSource) -> str:
    if source.info.name == "random":
        return source.checkpoint.stem
    return f"{source.record['arch']}-{source.img_size}-{source.info.name}"


# ---- backends -------------------------------------------------------------------------------


@dataclass
class Runner:
    """One backend, ready: `prepare` a batch once, then each `run` is one finished inference."""

    name: str
    describe: str  # what exactly runs
    prepare: Callable[[np.ndarray], Any]  # a batch in the form `run` takes
    run: Callable[[Any], None]
    outputs: Callable[[np.ndarray], Outputs]  # logits, features, maps of images (agreement)
    gpu: bool = False
    rss_probe: tuple[str, ...] | None = None  # code + args measuring peak RSS in a fresh process
    weights_bytes: int = 0


def fuse_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d before it (torchvision ResNet layout:
    convN/bnN attributes, Conv→BN pairs in Sequentials), in place; as onnxruntime does."""
    for child in module.children():
        fuse_batch_norms(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
    for n in range(1, 4):
        conv, bn = getattr(module, f"conv{n}", None), getattr(module, f"bn{n}", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, f"conv{n}", fuse_conv_bn_eval(conv, bn))
            setattr(module, f"bn{n}", nn.Identity())
    return module


class ReducedPrecisionQSENN(nn.Module):
    """The folded graph with BN fused, backbone in `dtype` and channels-last; the head (pooling,
    c = a·(f − μ)/σ, T·c + b) in fp32, so contributions still sum exactly to the logits."""

    def __init__(self, folded: FoldedQSENN, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.folded = fuse_batch_norms(copy.deepcopy(folded))
        self.folded.backbone.to(dtype=dtype, memory_format=torch.channels_last)
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.folded.normalise(images).to(self.dtype).contiguous(memory_format=torch.channels_last)
        maps = self.folded.backbone(x).float()
        return (*self.folded.head(maps), maps)


def _module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def torch_runner(
    name: str,
    module: nn.Module,
    device: torch.device,
    describe: str,
    chunk: int,
    weights: nn.Module,
    rss_probe: tuple[str, ...] | None = None,
) -> Runner:
    cuda = device.type == "cuda"

    def prepare(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(batch)).to(device)

    def run(images: torch.Tensor) -> None:
        with torch.no_grad():
            module(images)
        if cuda:
            torch.cuda.synchronize(device)

    def forward(batch: np.ndarray) -> Outputs:
        with torch.no_grad():
            # copy(): a CUDA-graph replay overwrites its outputs, and .cpu() of a CPU tensor copies nothing
            return {n: t.detach().float().cpu().numpy().copy() for n, t in zip(OUTPUT_NAMES, module(prepare(batch)))}

    # Chunks of one timed batch size (padded): a compiled module sees no new shape.
    return Runner(
        name,
        describe,
        prepare,
        run,
        lambda images: run_in_batches(forward, images, chunk, pad=True),
        gpu=cuda,
        rss_probe=rss_probe,
        weights_bytes=_module_bytes(weights),
    )


def runtime_runner(name: str, model, describe: str, chunk: int, rss_probe: tuple[str, ...] | None) -> Runner:
    """An exported artifact through qsenn_runtime: predict_tensor, with its identity check and
    explanations, is what a deployment calls."""

    def forward(batch: np.ndarray) -> Outputs:
        return dict(zip(OUTPUT_NAMES, model.backend.run(batch, OUTPUT_NAMES)))

    return Runner(
        name,
        describe,
        lambda batch: np.ascontiguousarray(batch, dtype=np.float32),
        lambda images: model.predict_tensor(images),
        lambda images: run_in_batches(forward, images, chunk, pad=True),
        gpu="CPUExecutionProvider" not in model.backend.name,
        rss_probe=rss_probe,
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise QsennError(f"--device {device}: no NVIDIA GPU is visible to CUDA (check nvidia-smi)")
    return resolved


def unavailable(backend: BenchBackend, device: torch.device, config: BenchConfig) -> str | None:
    """Why `backend` cannot run here, or None."""
    if backend.devices == ("GPU",) and device.type != "cuda":
        if backend.format is None and config.gpu_backends_on_cpu:
            return None
        why = "CUDA is not available" if not torch.cuda.is_available() else f"the torch device is {device}"
        return f"needs an NVIDIA GPU ({why})"
    if backend.format == "trt":
        from .trt_build import require_tensorrt

        try:
            require_tensorrt()
        except QsennError as exc:
            return str(exc).removeprefix("cannot build a TensorRT engine: ")
    return None


@dataclass
class Artifacts:
    """The exported models the backends run, written into one folder."""

    folder: Path
    source: ExportSource
    metadata: ModelMetadata
    calibration: Callable[[], tuple[np.ndarray, str]]
    echo: Callable[[str], None]
    fp32: onnx.ModelProto | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    def fp32_model(self) -> onnx.ModelProto:
        if self.fp32 is None:
            self.fp32 = to_onnx(fold_source(self.source), self.metadata, batch=None)
        return self.fp32

    def onnx(self, precision: str) -> Path:
        if precision not in self.paths:
            path = self.folder / ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")
            model = self.fp32_model()
            if precision == "int8":
                images, description = self.calibration()
                self.echo(f"quantising the backbone to INT8, calibrating on {description}")
                model = quantize_backbone(model, images, self.metadata, description)
            onnx.save(model, str(path))
            self.paths[precision] = path
        return self.paths[precision]

    def checkpoint(self) -> Path:
        """The source as a checkpoint file (a fresh process loads it to measure memory); a random
        model's is written into the folder."""
        if self.source.info.name != "random":
            return self.source.checkpoint
        if "checkpoint" not in self.paths:
            self.paths["checkpoint"] = self.folder / "source.pt"
            torch.save(self.source.record, self.paths["checkpoint"])
        return self.paths["checkpoint"]


def build_runner(
    backend: BenchBackend, artifacts: Artifacts, device: torch.device, config: BenchConfig, chunk: int
) -> Runner:
    source, threads = artifacts.source, config.cpu_threads
    if backend.name == BASELINE_BACKEND:
        module = SourceForward(copy.deepcopy(source.model), source.head.magnitude, source.info).to(device).eval()
        probe = None if device.type == "cuda" else (RSS_PROBE_TORCH, str(artifacts.checkpoint()), str(threads))
        return torch_runner(
            backend.name,
            module,
            device,
            f"torch {torch.__version__} fp32 eager on {device}",
            chunk,
            source.model,
            probe,
        )
    if backend.format is None:
        module = ReducedPrecisionQSENN(fold_source(source), torch.float16).to(device).eval()
        weights = module
        if backend.name == "torch-compile":
            module = torch.compile(module, dynamic=False)
        elif backend.name == "torch-cudagraphs":
            module = torch.compile(module, mode="reduce-overhead", dynamic=False)
        return torch_runner(
            backend.name, module, device, f"torch {torch.__version__} {backend.title} on {device}", chunk, weights
        )
    import qsenn_runtime

    if backend.format == "onnx":
        path = artifacts.onnx(backend.precision)
        provider = config.provider if "GPU" in backend.devices else "cpu"
        model = qsenn_runtime.load(path, provider, threads=threads, batch_size=chunk)
        return runtime_runner(
            backend.name,
            model,
            f"qsenn_runtime on {model.backend.name}, {backend.precision}",
            chunk,
            (RSS_PROBE_RUNTIME, str(path), str(threads), provider or ""),
        )
    if backend.format == "trt":
        return runtime_runner(
            backend.name,
            _trt_model(artifacts, backend, chunk),
            f"qsenn_runtime on TensorRT, {backend.precision}",
            chunk,
            None,
        )
    raise QsennError(f"internal error: no runner for backend {backend.name}")


def _trt_model(artifacts: Artifacts, backend: BenchBackend, max_batch: int):
    """A TensorRT engine built in memory from the fp32 export, served by qsenn_runtime."""
    from qsenn_runtime.backends import TensorRTBackend
    from qsenn_runtime.model import Model

    from .trt_build import build_engine, engine_info, profile_shapes, require_tensorrt

    trt = require_tensorrt()
    shapes = profile_shapes(max_batch, artifacts.source.img_size)
    options = make_options("trt", half=backend.precision == "fp16", batch=max_batch)
    plan = build_engine(trt, artifacts.fp32_model(), shapes, options, None, artifacts.echo)
    gpu = torch.cuda.current_device()
    info = engine_info(
        trt.__version__,
        torch.cuda.get_device_name(gpu),
        torch.cuda.get_device_capability(gpu),
        backend.precision,
        shapes,
    )
    return Model(
        artifacts.metadata.with_engine(info),
        TensorRTBackend(plan, info, "bench engine"),
        source="bench engine",
        batch_size=max_batch,
    )


# ---- measuring ------------------------------------------------------------------------------


def first_call(runner: Runner, batch: np.ndarray) -> tuple[Any, float]:
    """(the prepared batch, seconds of the first call): compilation, CUDA-graph capture and
    allocations happen here, outside the timed calls."""
    prepared = runner.prepare(batch)
    start = time.perf_counter()
    runner.run(prepared)
    return prepared, time.perf_counter() - start


def time_interleaved(
    runners: list[Runner], prepared: dict[str, Any], warmup: int, iters: int
) -> dict[str, list[float]]:
    """Seconds per timed call of each runner, after `warmup` untimed calls each; see the module
    docstring for the interleaving."""
    for runner in runners:
        for _ in range(warmup):
            runner.run(prepared[runner.name])
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    gc.collect()
    gc.disable()
    try:
        previous_on_cpu = False
        for i in range(iters):
            shift = i % len(runners)
            for runner in runners[shift:] + runners[:shift]:
                if previous_on_cpu:
                    time.sleep(CPU_PAUSE_S)
                start = time.perf_counter()
                runner.run(prepared[runner.name])
                times[runner.name].append(time.perf_counter() - start)
                previous_on_cpu = not runner.gpu
    finally:
        gc.enable()
    return times


def peak_rss_mib(probe: tuple[str, ...], batch: int) -> float:
    """Peak RSS of a fresh process running `probe` (code, path, threads, …) on one batch."""
    code, path, *rest = probe
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))}
    result = subprocess.run(
        [sys.executable, "-c", code, path, str(batch), *rest], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise QsennError(f"the memory probe of {Path(path).name} failed: {last_line}")
    return float(result.stdout.split()[-1]) / 1024


def peak_gpu_mib(runner: Runner, batch: np.ndarray, device: torch.device) -> float:
    """CUDA allocator peak during two calls, over what was allocated before, plus the weights."""
    images = runner.prepare(batch)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        runner.run(images)
    return (torch.cuda.max_memory_allocated(device) - before + runner.weights_bytes) / 2**20


def onnx_op_profile(path: Path, batch: np.ndarray, threads: int, runs: int = PROFILE_RUNS) -> dict:
    """onnxruntime's own profile of `runs` calls: per operator type of the optimised graph the
    number of nodes, milliseconds per call and share of the node time — which kernels run
    (QLinearConv, ConvInteger, or DequantizeLinear feeding a float Conv)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="qsenn-profile-") as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first call (allocations) is dropped below
            session.run(None, {INPUT_NAME: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_call = len(nodes) // (runs + 1)
    ops: dict[str, dict] = {}
    for event in nodes[per_call:]:
        op = ops.setdefault(event["args"]["op_name"], {"nodes": set(), "ms": 0.0})
        op["nodes"].add(event["name"])
        op["ms"] += event["dur"] / 1e3 / runs
    total = sum(op["ms"] for op in ops.values()) or 1.0
    return {
        name: {"nodes": len(op["nodes"]), "ms": round(op["ms"], 3), "share": round(op["ms"] / total, 4)}
        for name, op in sorted(ops.items(), key=lambda item: -item[1]["ms"])
    }


def profile_line(name: str, profile: dict) -> str:
    top = ", ".join(f"{op} {100 * p['share']:.0f}%" for op, p in list(profile.items())[:5])
    float_convs = profile.get("Conv", {}).get("nodes", 0) + profile.get("FusedConv", {}).get("nodes", 0)
    integer = profile.get("QLinearConv", {}).get("nodes", 0) + profile.get("ConvInteger", {}).get("nodes", 0)
    note = f"; {integer} integer and {float_convs} float conv nodes" if integer else ""
    return f"{name} kernels at batch {PROFILE_BATCH}: {top}{note}"


def agreement(
    reference: Outputs, candidate: Outputs, metadata: ModelMetadata, tolerance: Tolerance | None, images: str
) -> dict:
    """top-1 (exact argmax equality), top-5 features, relative errors and, where the table has a
    tolerance for the backend, the verdict of verify.compare against it."""
    report = compare(reference, candidate, metadata, tolerance or FORMATS["onnx"].tolerances["fp32"], images)
    result = {
        "images": len(reference["logits"]),
        "top1": float(np.mean(reference["logits"].argmax(1) == candidate["logits"].argmax(1))),
        TOP: top_feature_agreement(reference, candidate, metadata.ternary),
        "logit_rel_err": report.logit_rel,
        "feature_rel_err": report.feature_rel,
        "feature_map_rel_err": report.feature_map_rel,
        "identity_rel_err": report.identity_rel,
    }
    if tolerance is not None:
        result["verdict"] = "OK" if report.ok else "; ".join(report.failures)
    return result


def tolerance_of(backend: BenchBackend) -> Tolerance | None:
    if backend.name == BASELINE_BACKEND:
        return None
    if backend.format is None:
        return FP16_TOLERANCE
    return FORMATS[backend.format].tolerances[backend.precision]


# ---- the benchmark --------------------------------------------------------------------------


def run_bench(source: ExportSource, config: BenchConfig, echo: Callable[[str], None] = print) -> dict:
    """Build the runners, measure agreement, memory and interleaved latencies; the result dict
    is what --json writes (see write_csv for its rows)."""
    config.validate()
    device = resolve_device(config.device)
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
            runner = attempt(
                name, lambda: build_runner(BENCH_BACKENDS[name], artifacts, device, config, chunk), skipped, echo
            )
            if runner is not None:
                runners[name] = runner
                echo(f"{name}: {runner.describe}")

        reference = runners[BASELINE_BACKEND].outputs(images)
        agreements = {}
        for name, runner in list(runners.items())[1:]:
            outputs = attempt(name, lambda: runner.outputs(images), skipped, echo)
            if outputs is None:
                del runners[name]
            else:
                agreements[name] = agreement(
                    reference, outputs, metadata, tolerance_of(BENCH_BACKENDS[name]), images_description
                )
        profiles = {
            name: onnx_op_profile(artifacts.onnx(BENCH_BACKENDS[name].precision), images[:PROFILE_BATCH], threads)
            for name in runners
            if BENCH_BACKENDS[name].format == "onnx" and name not in config.check_only
        }
        for name, profile in profiles.items():
            echo(profile_line(name, profile))

        timed = [runners[n] for n in runners if n == BASELINE_BACKEND or n not in config.check_only]
        rows = []
        for batch_size in config.batches:
            batch = images[np.arange(batch_size) % len(images)]
            started = {r.name: attempt(r.name, lambda: first_call(r, batch), skipped, echo) for r in timed}
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
            "features": int(source.head.ternary.shape[1]),
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


def attempt(name: str, call: Callable[[], Any], skipped: dict[str, str], echo: Callable[[str], None]) -> Any:
    """call(), or None with the failure recorded as the backend's skip reason: a backend that
    breaks (a compiler, driver or provider error) must not cost the other backends' figures,
    least of all on a rented GPU. The baseline's failures propagate: without it nothing compares."""
    if name == BASELINE_BACKEND:
        return call()
    try:
        return call()
    except Exception as exc:  # any library's error: report it and go on without this backend
        reason = f"failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
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
    if source.info.name == "random":
        generator = torch.Generator().manual_seed(1)
        images = torch.rand(config.images, 3, source.img_size, source.img_size, generator=generator)
        return images.numpy(), f"{config.images} random images"
    images, description = verification_images(source.info, source.img_size, config.images, None, echo)
    return images.numpy(), description


def calibration_images(source: ExportSource, config: BenchConfig, echo) -> tuple[np.ndarray, str]:
    if config.calib is not None:
        images = folder_images(config.calib, source.info, source.img_size, config.calib_count, spread=True)
        return images.numpy(), f"{len(images)} images of {config.calib}"
    if source.info.name != "random":
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


# ---- reporting ------------------------------------------------------------------------------

CSV_FIELDS = (
    "backend",
    "batch",
    "min_ms",
    "mean_ms",
    "median_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "images_per_s",
    "speedup",
    "paired_speedup",
    "first_call_ms",
    "peak_memory_mib",
    "memory_kind",
    "top1",
    TOP,
    "logit_rel_err",
    "model",
    "device",
    "cpu",
    "gpu",
    "threads",
    "python",
    "torch",
    "onnxruntime",
    "onnx",
    "load_average",
)


def csv_rows(result: dict) -> list[dict]:
    env = result["environment"]
    rows = []
    for row in result["results"]:
        agreed = result["agreement"].get(row["backend"], {"top1": 1.0, TOP: 1.0, "logit_rel_err": 0.0})
        merged = {
            **row,
            **agreed,
            "model": result["model"]["label"],
            **{k: env.get(k) for k in ("device", "cpu", "gpu", "threads", "python", "torch", "onnxruntime", "onnx")},
            "load_average": " ".join(map(str, env["load_average"])),
        }
        rows.append({k: merged.get(k) for k in CSV_FIELDS})
    return rows


def output_path(path: Path, result: dict, suffix: str) -> Path:
    """`path` itself, or for an existing folder a file in it named by model, device and versions."""
    path = Path(path)
    if path.is_dir():
        return path / (result_name("bench", result["model"]["label"], result["environment"]) + suffix)
    return path


def write_json(result: dict, path: Path) -> Path:
    path = output_path(path, result, ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def write_csv(result: dict, path: Path) -> Path:
    path = output_path(path, result, ".csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(result))
    return path


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def table(result: dict) -> str:
    """The printed summary: one row per backend and batch size."""
    env = result["environment"]
    head = (
        f"{'backend':<17}{'batch':>6}{'min ms':>10}{'median':>10}{'p90':>10}{'p99':>10}{'img/s':>9}"
        f"{'×torch':>8}{'paired':>8}{'peak MiB':>10}{'top-1':>9}{f'top-{TOP_FEATURES} feat':>12}"
    )
    load = " ".join(map(str, env["load_average"]))
    lines = [
        f"{result['model']['label']} on {env['device']} ({env['threads']} threads; torch {env.get('torch')}, "
        f"onnxruntime {env.get('onnxruntime')}; load average {load})",
        head,
        "-" * len(head),
    ]
    for row in result["results"]:
        agreed = result["agreement"].get(row["backend"], {})
        memory = row.get("peak_memory_mib")
        memory = "—" if memory is None else f"{memory:.0f}"
        top1 = _percent(agreed.get("top1")) if agreed else "baseline"
        lines.append(
            f"{row['backend']:<17}{row['batch']:>6}{row['min_ms']:>10.2f}{row['median_ms']:>10.2f}"
            f"{row['p90_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['images_per_s']:>9.1f}{row['speedup']:>8.2f}"
            f"{row['paired_speedup']:>8.2f}{memory:>10}{top1:>9}{_percent(agreed.get(TOP)) if agreed else '':>12}"
        )
    timed = {row["backend"] for row in result["results"]}
    for name, agreed in result["agreement"].items():
        if name not in timed or agreed.get("verdict", "OK") != "OK":
            lines.append(
                f"{name}: top-1 {_percent(agreed['top1'])}, top-{TOP_FEATURES} features "
                f"{_percent(agreed[TOP])}, rel Δlogit {agreed['logit_rel_err']:.1e} on {agreed['images']} "
                f"images — {agreed.get('verdict', 'OK')}"
            )
    for name, reason in result["skipped"].items():
        lines.append(f"{name}: skipped, {reason}")
    return "\n".join(lines)
