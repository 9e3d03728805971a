"""The backends `qsenn bench` runs: the trained PyTorch model in fp32 eager mode (the baseline of
every ratio), the optimised PyTorch paths on a GPU, and the exported artifacts through
qsenn_runtime. Each is a Runner: prepare a batch once, then every run is one finished inference."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import qsenn_runtime
from qsenn_export._common import fold_source, to_onnx
from qsenn_export.errors import ExportError
from qsenn_export.fold import FoldedQSENN
from qsenn_export.formats import FORMATS, make_options
from qsenn_export.int8 import quantize_backbone
from qsenn_export.source import ExportSource
from qsenn_export.verify import Outputs, SourceForward, run_in_batches
from qsenn_runtime.metadata import OUTPUT_NAMES, ModelMetadata

from .backend_table import BASELINE_BACKEND, BenchBackend
from .errors import BenchError
from .measurement import PEAK_RSS_KIB
from .sources import RANDOM_DATASET

if TYPE_CHECKING:
    from .bench import BenchConfig


FP16_TOLERANCE = FORMATS["trt"].tolerances["fp16"]  # the optimised torch paths run fp16 like an fp16 engine

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


def unavailable(backend: BenchBackend, device: torch.device, config: BenchConfig) -> str | None:
    """Why `backend` cannot run here, or None."""
    if backend.devices == ("GPU",) and device.type != "cuda":
        if backend.format is None and config.gpu_backends_on_cpu:
            return None
        why = "CUDA is not available" if not torch.cuda.is_available() else f"the torch device is {device}"
        return f"needs an NVIDIA GPU ({why})"
    if backend.format == "trt":
        from qsenn_export.trt_build import require_tensorrt

        try:
            require_tensorrt()
        except ExportError as exc:
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
        if self.source.info.name != RANDOM_DATASET:
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
        module = SourceForward(copy.deepcopy(source.model), source.head.scale, source.info).to(device).eval()
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
    raise BenchError(f"internal error: no runner for backend {backend.name}")


def _trt_model(artifacts: Artifacts, backend: BenchBackend, max_batch: int):
    """A TensorRT engine built in memory from the fp32 export, served by qsenn_runtime."""
    from qsenn_export.trt_build import build_engine, engine_info, profile_shapes, require_tensorrt
    from qsenn_runtime.backends import TensorRTBackend
    from qsenn_runtime.model import Model

    trt = require_tensorrt()
    shapes = profile_shapes(max_batch, artifacts.source.img_size)
    options = make_options("trt", half=backend.precision == "fp16", batch=max_batch, evidence_count=0)
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
