"""The two ways to run an exported model: onnxruntime (an ONNX file) and TensorRT (an engine).

Both offer the same small surface: `run(batch, output_names) -> list of float32 arrays`, the
static shapes of the input and outputs (None for a dynamic dimension), the batch sizes they
accept, a `name` for reports, the `precision` of the backbone and the `head_precision` that sets
the identity-check tolerance. onnxruntime and tensorrt are imported only when a backend is built.

onnxruntime's execution providers: CUDA, then the CPU, by default. The TensorRT execution
provider only on request (`provider="tensorrt"`): it builds an engine when the session starts,
with profile shapes taken from the model's input size and the batch size it is loaded for, and
keeps it in an engine cache directory, so that a one-shot `qsenn predict` does not rebuild an
engine per input shape. INT8 QOperator graphs run on the CPU provider only.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend_api import Shape
from .errors import BackendError, first_line
from .metadata import (
    ENGINE_GPU_KEY,
    ENGINE_HEAD_PRECISION_KEY,
    ENGINE_PRECISION_KEY,
    ENGINE_TENSORRT_KEY,
    ENGINE_TENSORRT_MAJOR_KEY,
    INPUT_NAME,
)
from .native_output import stdout_to_stderr

TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
# The automatic choice, best first. TensorRT is never chosen by itself: its first session builds an
# engine (minutes for a large model) and it may run float32 layers in TF32.
PROVIDER_PREFERENCE = (CUDA_PROVIDER, CPU_PROVIDER)
FALLBACK_ORDER = (TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER)  # below a chosen provider
PROVIDER_ALIASES = {
    "tensorrt": TENSORRT_PROVIDER,
    "trt": TENSORRT_PROVIDER,
    "cuda": CUDA_PROVIDER,
    "cpu": CPU_PROVIDER,
}
QOPERATOR_CPU_ONLY = "it is an INT8 QOperator model (QLinearConv), which onnxruntime runs on the CPU provider only"
SESSION_LOG_ERRORS_ONLY = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
SUPPORTED_TENSORRT_MAJORS = (10, 11)
TRT_INSTALL_HINT = "pip install 'qsenn[trt]'"


def cache_dir() -> Path:
    """The user's qsenn cache ($XDG_CACHE_HOME/qsenn or ~/.cache/qsenn): timing and engine caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qsenn"


@dataclass(frozen=True)
class InputProfile:
    """The input shapes a session is built for: `size` from the model's metadata, batches 1 to
    `max_batch` (the batch size it is loaded with), or the graph's static batch."""

    size: int
    max_batch: int
    static_batch: int | None = None

    def shapes(self) -> tuple[str, str, str]:
        """min, opt and max in the TensorRT provider's "name:NxCxHxW" notation."""
        low, opt, high = (self.static_batch,) * 3 if self.static_batch else profile_batches(self.max_batch)

        def text(batch: int) -> str:
            return f"{INPUT_NAME}:{batch}x3x{self.size}x{self.size}"

        return text(low), text(opt), text(high)


def profile_batches(max_batch: int) -> tuple[int, int, int]:
    """The batch sizes of a TensorRT optimisation profile (min, opt, max): kernels are tuned for opt."""
    return 1, max(1, max_batch // 2), max_batch


def choose_providers(requested: str | None, available: Sequence[str], cpu_only: str | None = None) -> list[str]:
    """The provider list for an onnxruntime session: the requested (or best available) provider
    first, then the ones below it in FALLBACK_ORDER as fallbacks for nodes it cannot run.
    `cpu_only` says why the model runs on the CPU provider alone (a GPU provider is refused)."""
    chosen = None if requested is None else PROVIDER_ALIASES.get(requested.lower(), requested)
    if cpu_only is not None:
        if chosen not in (None, CPU_PROVIDER):
            raise BackendError(
                f"execution provider {requested!r} cannot run this model: {cpu_only}; drop --provider "
                f"(or export it without --int8 to run it on a GPU)"
            )
        return [CPU_PROVIDER]
    if chosen is None:
        chosen = next((p for p in PROVIDER_PREFERENCE if p in available), None)
        if chosen is None:
            raise BackendError(
                f"onnxruntime offers none of {', '.join(PROVIDER_PREFERENCE)} "
                f"(available: {', '.join(available) or 'none'}); pass --provider"
            )
    elif chosen not in available:
        hint = (
            "; for CUDA/TensorRT install onnxruntime-gpu instead of onnxruntime (qsenn[gpu])"
            if chosen in FALLBACK_ORDER
            else ""
        )
        raise BackendError(
            f"execution provider {requested!r} is not available; available: "
            f"{', '.join(available)} (or the aliases "
            f"{', '.join(sorted(PROVIDER_ALIASES))}){hint}"
        )
    below = FALLBACK_ORDER[FALLBACK_ORDER.index(chosen) + 1 :] if chosen in FALLBACK_ORDER else (CPU_PROVIDER,)
    return [chosen] + [p for p in below if p in available]


def provider_options(providers: Sequence[str], profile: InputProfile, cache: Path) -> list[dict[str, str]]:
    """Options per provider: the TensorRT provider gets its profile shapes and its engine and timing
    caches under `cache`; CUDA keeps float32 in float32 (no TF32, so the head stays exact)."""
    options: list[dict[str, str]] = []
    for provider in providers:
        if provider == TENSORRT_PROVIDER:
            low, opt, high = profile.shapes()
            options.append(
                {
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": "True",
                    "trt_timing_cache_path": str(cache),
                    "trt_profile_min_shapes": low,
                    "trt_profile_opt_shapes": opt,
                    "trt_profile_max_shapes": high,
                }
            )
        elif provider == CUDA_PROVIDER:
            options.append({"use_tf32": "0"})
        else:
            options.append({})
    return options


class OnnxBackend:
    """onnxruntime session; `InferenceSession.run` is thread-safe, so threads share it."""

    def __init__(
        self,
        path: str | Path,
        provider: str | None = None,
        threads: int | None = None,
        *,
        profile: InputProfile,
        cpu_only: str | None = None,
        spin: bool = True,
        arena: bool = True,
    ):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                "running an ONNX model needs onnxruntime: pip install 'qsenn[cpu]' "
                "(or 'qsenn[gpu]' for onnxruntime-gpu)"
            ) from None

        available = ort.get_available_providers()
        providers = choose_providers(provider, available, cpu_only)
        if cpu_only and provider is None and any(p in available for p in (TENSORRT_PROVIDER, CUDA_PROVIDER)):
            warnings.warn(f"{path} runs on the CPU although a GPU provider is available: {cpu_only}", stacklevel=2)
        options = ort.SessionOptions()
        options.log_severity_level = SESSION_LOG_ERRORS_ONLY  # provider fallbacks are no user's concern
        if threads is not None:
            options.intra_op_num_threads = threads
        if not spin:  # idle workers sleep instead of spinning: a server sharing its cores wants that
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = arena
        try:
            with stdout_to_stderr():
                self.session = ort.InferenceSession(
                    str(path),
                    options,
                    providers=providers,
                    provider_options=provider_options(providers, profile, cache_dir() / "onnxruntime-tensorrt"),
                )
        except Exception as exc:  # onnxruntime's own exception types live in a private module
            raise BackendError(f"onnxruntime cannot load {path}: {first_line(exc)}") from None
        active = self.session.get_providers()[0]
        self.name = f"onnxruntime {ort.__version__} ({active})"
        inputs = {node.name: node for node in self.session.get_inputs()}
        outputs = {node.name: node for node in self.session.get_outputs()}
        self.input_shapes = {name: _static(node.shape) for name, node in inputs.items()}
        self.output_shapes = {name: _static(node.shape) for name, node in outputs.items()}
        batch = self.input_shapes.get(INPUT_NAME, (None,))[0]
        if batch is not None:
            self.batch_range: tuple[int, int | None] = (batch, batch)
        else:  # the TensorRT provider's engine takes the batches of its profile
            self.batch_range = (1, profile.max_batch if active == TENSORRT_PROVIDER else None)
        self.precision = "fp16" if outputs.get("logits") and "float16" in outputs["logits"].type else "fp32"
        # The TensorRT provider may run float32 layers (the head's Gemm among them) in TF32.
        self.head_precision = "tf32" if active == TENSORRT_PROVIDER and self.precision == "fp32" else self.precision
        self._first_run = threading.Lock()  # held until the first run is done
        self._warm = False

    def run(self, batch: np.ndarray, output_names: Sequence[str]) -> list[np.ndarray]:
        if not self._warm:  # providers may finish setting up (and talk) on the first run
            with self._first_run, stdout_to_stderr():
                results = self.session.run(list(output_names), {INPUT_NAME: batch})
                self._warm = True
        else:
            results = self.session.run(list(output_names), {INPUT_NAME: batch})
        return [np.asarray(r, dtype=np.float32) for r in results]


def _static(shape) -> Shape:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


# ---- TensorRT ---------------------------------------------------------------------------


def tensorrt_major(version: str) -> int:
    """10 of "10.13.3.9"; 0 where the text holds no version."""
    digits = re.match(r"\d+", version.strip())
    return int(digits.group()) if digits else 0


def engine_mismatch(engine: Mapping, tensorrt_version: str, gpu_name: str) -> str | None:
    """Why a plan built as `engine` records cannot run with this TensorRT and GPU, or None.

    TensorRT plans are tied to the TensorRT release (major.minor.patch) and the GPU model; an
    engine of one major never loads in another (TensorRT 11 also dropped weakly typed networks)."""
    built_with, built_on = engine.get(ENGINE_TENSORRT_KEY), engine.get(ENGINE_GPU_KEY)
    if not built_with or not built_on:
        return (
            f"the engine metadata does not record the TensorRT version and GPU it was built "
            f"with ('{ENGINE_TENSORRT_KEY}', '{ENGINE_GPU_KEY}'); rebuild it with "
            f"`qsenn export --format trt`"
        )
    problems = []
    built_major = int(engine.get(ENGINE_TENSORRT_MAJOR_KEY) or tensorrt_major(str(built_with)))
    if built_major != tensorrt_major(tensorrt_version):
        problems.append(
            f"it was built with TensorRT {built_major} ({built_with}) but TensorRT {tensorrt_version} is "
            f"installed, and an engine never loads in another TensorRT major"
        )
    elif _release(str(built_with)) != _release(tensorrt_version):
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
        try:
            trt, cudart = import_tensorrt(), import_cudart()
            gpu, _ = cuda_device(cudart)
        except BackendError as exc:
            raise BackendError(f"{source}: cannot run a TensorRT engine here: {exc}; or run the ONNX model") from None
        problem = engine_mismatch(engine_info, trt.__version__, gpu)
        if problem:
            raise BackendError(f"{source}: {problem}")
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)  # TensorRT's logger writes to stderr
        with stdout_to_stderr():
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendError(
                f"{source}: TensorRT could not deserialize the plan (its log above says why); rebuild the engine"
            )
        self._context = self._engine.create_execution_context()
        self._stream = check_cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
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
        # An engine built before the head was kept in float32 ran it in the engine's precision.
        self.head_precision = str(engine_info.get(ENGINE_HEAD_PRECISION_KEY, self.precision))
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
            check_cuda(
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
                check_cuda(
                    cudart,
                    cudart.cudaMemcpyAsync(
                        hosts[name], self._device[name][0], hosts[name].nbytes, to_host, self._stream
                    ),
                    "cudaMemcpyAsync",
                )
            check_cuda(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return [hosts[name].astype(np.float32, copy=False) for name in output_names]

    def _bind(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._device.get(name, (0, 0))
        if capacity < nbytes:
            if pointer:
                check_cuda(self._cudart, self._cudart.cudaFree(pointer), "cudaFree")
            pointer = check_cuda(self._cudart, self._cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._device[name] = (pointer, nbytes)
        if not self._context.set_tensor_address(name, int(pointer)):
            raise BackendError(f"TensorRT refused the device buffer of {name!r}")
        return pointer

    def __del__(self):
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for pointer, _ in getattr(self, "_device", {}).values():
            cudart.cudaFree(pointer)
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)


def import_tensorrt():
    """The tensorrt module of a supported major, or one BackendError line saying what to install."""
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the package is there but its libraries are not
        raise BackendError(f"TensorRT is not installed ({TRT_INSTALL_HINT} on a machine with an NVIDIA GPU)") from None
    version = str(getattr(tensorrt, "__version__", "?"))
    if tensorrt_major(version) not in SUPPORTED_TENSORRT_MAJORS:
        raise BackendError(
            f"TensorRT {version} is installed but qsenn supports TensorRT "
            f"{' and '.join(map(str, SUPPORTED_TENSORRT_MAJORS))} ({TRT_INSTALL_HINT})"
        )
    return tensorrt


def import_cudart():
    """cuda-python's CUDA runtime bindings (device buffers and streams for TensorRT)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise BackendError(f"cuda-python is not installed ({TRT_INSTALL_HINT})") from None
    return cudart


def check_cuda(cudart, result, call: str):
    """cuda-python returns (error, *values): raise on an error, else the value(s)."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call {call} failed: {_error_name(error)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _error_name(error) -> str:
    """cudaErrorNoDevice rather than 100 (cuda-python's errors are IntEnums)."""
    return str(getattr(error, "name", error))


def cuda_device(cudart) -> tuple[str, tuple[int, int]]:
    """The current GPU's name and compute capability; a BackendError line when CUDA sees none."""
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count < 1:
        why = "no device" if error == cudart.cudaError_t.cudaSuccess else _error_name(error)
        raise BackendError(f"no NVIDIA GPU is visible to CUDA ({why}; check the driver with nvidia-smi)")
    device = check_cuda(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    properties = check_cuda(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = properties.name
    text = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")
    return text, (int(properties.major), int(properties.minor))
