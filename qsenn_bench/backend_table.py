"""The table of `qsenn bench` backends. Torch-free, so that `qsenn bench --help` lists them at
once; the runners that run them live in backends.py."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import BenchError


@dataclass(frozen=True)
class BenchBackend:
    """One way `qsenn bench` runs a model: the PyTorch source (format None) or an artifact."""

    name: str  # value of `qsenn bench --backends`
    title: str
    devices: tuple[str, ...]  # where the benchmark runs it
    format: str | None = None  # export format of the artifact it times (a key of formats.FORMATS)
    precision: str | None = None  # of that artifact (a key of the format's tolerances)
    cuda_graph: bool = False  # replayed as a CUDA graph captured once per batch shape (CUDA only)

    @property
    def artifact_precision(self) -> str:
        """The precision of the artifact this backend times (torch backends time none)."""
        if self.precision is None:
            raise BenchError(f"internal error: backend {self.name} runs no exported artifact")
        return self.precision


# The baseline first: every ratio is against it.
BENCH_BACKENDS: dict[str, BenchBackend] = {
    b.name: b
    for b in (
        BenchBackend("torch", "PyTorch fp32 eager: the trained model as the original code runs it", ("CPU", "GPU")),
        BenchBackend("torch-fp16", "PyTorch fp16 channels-last: the folded graph, BN fused", ("GPU",)),
        BenchBackend("torch-compile", "torch.compile (inductor) of torch-fp16", ("GPU",)),
        BenchBackend("torch-cudagraphs", "torch.compile mode=reduce-overhead (CUDA graphs) of torch-fp16", ("GPU",)),
        BenchBackend("torch-fp16-graph", "CUDA-graph replay of torch-fp16", ("GPU",), cuda_graph=True),
        BenchBackend("torch-compile-graph", "CUDA-graph replay of torch-compile", ("GPU",), cuda_graph=True),
        BenchBackend("onnx", "onnxruntime fp32 (qsenn_runtime)", ("CPU", "GPU"), "onnx", "fp32"),
        BenchBackend("onnx-int8", "onnxruntime INT8 backbone, exact head (qsenn_runtime)", ("CPU",), "onnx", "int8"),
        BenchBackend("trt", "TensorRT fp16 engine (qsenn_runtime)", ("GPU",), "trt", "fp16"),
    )
}
BASELINE_BACKEND = next(iter(BENCH_BACKENDS))
