"""The two ways to run an exported model: onnxruntime (an ONNX file) and TensorRT (an engine).

Both offer the same small surface: `run(batch, output_names) -> list of float32 arrays`, the
static shapes of the input and outputs (None for a dynamic dimension), the batch sizes they
accept, a `name` for reports and the `precision` that sets the identity-check tolerance.
onnxruntime and tensorrt are imported only when a backend is built.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import BackendError, first_line
from .metadata import ENGINE_GPU_KEY, ENGINE_PRECISION_KEY, ENGINE_TENSORRT_KEY, INPUT_NAME

Shape = tuple  # of int, or None for a dynamic dimension

# Automatic choice among onnxruntime's execution providers, best first.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def choose_providers(requested: str | None, available: Sequence[str]) -> list[str]:
    """The provider list for an onnxruntime session: the requested (or best available) provider
    first, then the preferred ones below it as fallbacks for nodes it cannot run."""
    if requested is None:
        chosen = next((p for p in PROVIDER_PREFERENCE if p in available), None)
        if chosen is None:
            raise BackendError(
                f"onnxruntime offers none of {', '.join(PROVIDER_PREFERENCE)} "
                f"(available: {', '.join(available) or 'none'}); pass --provider"
            )
    else:
        chosen = PROVIDER_ALIASES.get(requested.lower(), requested)
        if chosen not in available:
            hint = (
                "; for CUDA/TensorRT install onnxruntime-gpu instead of onnxruntime (qsenn[gpu])"
                if chosen in PROVIDER_PREFERENCE
                else ""
            )
            raise BackendError(
                f"execution provider {requested!r} is not available; available: "
                f"{', '.join(available)} (or the aliases "
                f"{', '.join(sorted(PROVIDER_ALIASES))}){hint}"
            )
    # fallbacks: the preferred providers below the chosen one (just the CPU below any other)
    rank = PROVIDER_PREFERENCE.index(chosen) + 1 if chosen in PROVIDER_PREFERENCE else -1
    return [chosen] + [p for p in PROVIDER_PREFERENCE[rank:] if p in available]


class OnnxBackend:
    """onnxruntime session; `InferenceSession.run` is thread-safe, so threads share it."""

    def __init__(self, path: str | Path, provider: str | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                "running an ONNX model needs onnxruntime: pip install 'qsenn[cpu]' "
                "(or 'qsenn[gpu]' for onnxruntime-gpu)"
            ) from None

        providers = choose_providers(provider, ort.get_available_providers())
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime's own exception types live in a private module
            raise BackendError(f"onnxruntime cannot load {path}: {first_line(exc)}") from None
        self.name = f"onnxruntime {ort.__version__} ({self.session.get_providers()[0]})"
        inputs = {node.name: node for node in self.session.get_inputs()}
        outputs = {node.name: node for node in self.session.get_outputs()}
        self.input_shapes = {name: _static(node.shape) for name, node in inputs.items()}
        self.output_shapes = {name: _static(node.shape) for name, node in outputs.items()}
        batch = self.input_shapes.get(INPUT_NAME, (None,))[0]
        self.batch_range = (1, None) if batch is None else (batch, batch)
        self.precision = "fp16" if outputs.get("logits") and "float16" in outputs["logits"].type else "fp32"

    def run(self, batch: np.ndarray, output_names: Sequence[str]) -> list[np.ndarray]:
        results = self.session.run(list(output_names), {INPUT_NAME: batch})
        return [np.asarray(r, dtype=np.float32) for r in results]


def _static(shape) -> Shape:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


# ---- TensorRT ---------------------------------------------------------------------------


def engine_mismatch(engine: Mapping, tensorrt_version: str, gpu_name: str) -> str | None:
    """Why a plan built as `engine` records cannot run with this TensorRT and GPU, or None.

    TensorRT plans are tied to the TensorRT release (major.minor.patch) and the GPU model."""
    built_with, built_on = engine.get(ENGINE_TENSORRT_KEY), engine.get(ENGINE_GPU_KEY)
    if not built_with or not built_on:
        return (
            f"the engine metadata does not record the TensorRT version and GPU it was built "
            f"with ('{ENGINE_TENSORRT_KEY}', '{ENGINE_GPU_KEY}'); rebuild it with "
            f"`qsenn export --format trt`"
        )
    problems = []
    if _release(str(built_with)) != _release(tensorrt_version):
        problems.append(f"it was built with TensorRT {built_with} but TensorRT {tensorrt_version} is installed")
    if _gpu_model(str(built_on)) != _gpu_model(gpu_name):
        problems.append(f"it was built on a {built_on} but this GPU is a {gpu_name}")
    if not problems:
        return None
    return (
        "; ".join(problems) + "; a TensorRT engine runs only with the TensorRT version and GPU "
        "model that built it: rebuild it here (`qsenn export --format trt`) or use the ONNX model"
    )


def _release(version: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\d+", version)[:3])


def _gpu_model(name: str) -> str:
    return " ".join(name.split()).lower()


class TensorRTBackend:
    """A deserialized plan with one execution context, device buffers grown on demand and a
    CUDA stream (cuda-python). An execution context is not thread-safe: runs take a lock."""

    def __init__(self, plan: bytes, engine_info: Mapping, source: str):
        trt, cudart = _import_tensorrt(), _import_cudart()
        problem = engine_mismatch(engine_info, trt.__version__, _gpu_name(cudart))
        if problem:
            raise BackendError(f"{source}: {problem}")
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendError(
                f"{source}: TensorRT could not deserialize the plan (its log above says why); rebuild the engine"
            )
        self._context = self._engine.create_execution_context()
        self._stream = _cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._device: dict[str, tuple[int, int]] = {}  # tensor name -> (pointer, bytes)
        self._lock = threading.Lock()
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_shapes = {n: _static(engine.get_tensor_shape(n)) for n in names if is_input[n]}
        self.output_shapes = {n: _static(engine.get_tensor_shape(n)) for n in names if not is_input[n]}
        profile = engine.get_tensor_profile_shape(INPUT_NAME, 0) if INPUT_NAME in self.input_shapes else None
        self.batch_range = (int(profile[0][0]), int(profile[2][0])) if profile else (1, None)
        self.precision = str(engine_info.get(ENGINE_PRECISION_KEY, "fp32"))
        self.name = f"tensorrt {trt.__version__}"

    def run(self, batch: np.ndarray, output_names: Sequence[str]) -> list[np.ndarray]:
        trt, cudart, engine, context = self._trt, self._cudart, self._engine, self._context
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        images = np.ascontiguousarray(batch, dtype=trt.nptype(engine.get_tensor_dtype(INPUT_NAME)))
        with self._lock:
            if not context.set_input_shape(INPUT_NAME, images.shape):
                raise BackendError(f"the engine does not accept input shape {images.shape}")
            pointer = self._bind(INPUT_NAME, images.nbytes)
            _cuda(
                cudart,
                cudart.cudaMemcpyAsync(pointer, images, images.nbytes, to_device, self._stream),
                "cudaMemcpyAsync",
            )
            hosts = {}
            for name in self.output_shapes:  # every output needs an address, fetched or not
                hosts[name] = np.empty(
                    tuple(context.get_tensor_shape(name)), dtype=trt.nptype(engine.get_tensor_dtype(name))
                )
                self._bind(name, hosts[name].nbytes)
            if not context.execute_async_v3(stream_handle=int(self._stream)):
                raise BackendError("TensorRT failed to run the engine (its log above says why)")
            for name in output_names:
                _cuda(
                    cudart,
                    cudart.cudaMemcpyAsync(
                        hosts[name], self._device[name][0], hosts[name].nbytes, to_host, self._stream
                    ),
                    "cudaMemcpyAsync",
                )
            _cuda(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return [hosts[name].astype(np.float32, copy=False) for name in output_names]

    def _bind(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._device.get(name, (0, 0))
        if capacity < nbytes:
            if pointer:
                _cuda(self._cudart, self._cudart.cudaFree(pointer), "cudaFree")
            pointer = _cuda(self._cudart, self._cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._device[name] = (pointer, nbytes)
        self._context.set_tensor_address(name, int(pointer))
        return pointer

    def __del__(self):
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for pointer, _ in getattr(self, "_device", {}).values():
            cudart.cudaFree(pointer)
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "running a TensorRT engine needs TensorRT: pip install 'qsenn[trt]' on "
            "a machine with an NVIDIA GPU (or run the ONNX model)"
        ) from None
    return tensorrt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python ≥ 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendError(
                "running a TensorRT engine needs cuda-python for device buffers: pip install 'qsenn[trt]'"
            ) from None
    return cudart


def _cuda(cudart, result, call: str):
    """cuda-python returns (error, *values): raise on an error, else the value(s)."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call {call} failed: {error}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _gpu_name(cudart) -> str:
    device = _cuda(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    properties = _cuda(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = properties.name
    return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")
