"""Strict stand-ins for TensorRT 10.x / 11.x and cuda-python's runtime bindings, for tests on
machines without an NVIDIA GPU.

The API is declared once, here, from the TensorRT Python API reference (10.x and 11.x) and
cuda-python's `cuda.bindings.runtime`: only the names qsenn calls exist, each with the real
parameter names, so a misspelled or removed call fails with AttributeError, a wrong argument with
TypeError, and no attribute the API lacks can be set (every class has __slots__). Both majors
offer the same names here, because qsenn calls nothing that TensorRT 11 removed; REMOVED_IN_11
lists what 11 dropped (weakly typed precision flags, calibrators), and a test keeps those names
out of the source.

Behaviour, as far as qsenn depends on it:
- OnnxParser.parse reads the ONNX bytes; the plan build_serialized_network returns carries the
  parsed graph with the optimisation profile, the builder flags, the TensorRT version and the GPU;
  without a profile for a dynamic input it fails (None), as TensorRT does;
- Runtime.deserialize_cuda_engine returns None for a plan of another TensorRT version or GPU, and
  the engine runs the graph with onnxruntime on the CPU, reading its input from and writing its
  outputs to the fake device memory of the cuda-python stand-in;
- a timing cache remembers the TensorRT version and GPU it was made with: set_timing_cache refuses
  (False) one of another unless ignore_mismatch, and create_timing_cache returns None for bytes
  that are no timing cache (the C++ API's nullptr).
"""

from __future__ import annotations

import enum
import json
import struct
import types
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

DEFAULT_VERSIONS = {10: "10.13.3.9", 11: "11.4.0.106"}
DEFAULT_GPU, DEFAULT_CAPABILITY = "NVIDIA Fake H200", (9, 0)
# Removed in TensorRT 11 (Python API migration guide, 10.x → 11.x): weakly typed precision and
# implicit (calibrated) INT8. qsenn must use none of them.
REMOVED_IN_11 = (
    "BuilderFlag.FP16",
    "BuilderFlag.INT8",
    "BuilderFlag.BF16",
    "BuilderFlag.FP8",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
    "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
    "int8_calibrator",
    "set_calibration_profile",
    "IInt8EntropyCalibrator2",
    "IInt8MinMaxCalibrator",
    "platform_has_fast_fp16",
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
)
_PLAN_MAGIC = b"FAKE-TRT-PLAN\x00"
_LENGTH = struct.Struct("<Q")


def _require(value: Any, kinds: type | tuple[type, ...], what: str) -> None:
    """pybind11's refusal of an argument of the wrong type."""
    if not isinstance(value, kinds):
        raise TypeError(f"{what}: incompatible function arguments ({type(value).__name__} given)")


def _dims(value: Any, what: str) -> tuple[int, ...]:
    _require(value, (tuple, list), what)
    if not all(isinstance(d, (int, np.integer)) for d in value):
        raise TypeError(f"{what}: incompatible function arguments (dims must be integers)")
    return tuple(int(d) for d in value)


# ---- cuda-python (cuda.bindings.runtime) ------------------------------------------------------


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidValue = 1


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStream_t:
    __slots__ = ("_handle",)

    def __init__(self, handle: int):
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


class cudaDeviceProp:
    __slots__ = ("major", "minor", "name")

    def __init__(self, name: bytes, major: int, minor: int):
        self.name, self.major, self.minor = name, major, minor


class FakeCudart(types.ModuleType):
    """cuda.bindings.runtime: every call returns (cudaError_t, *values)."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self, gpu: str = DEFAULT_GPU, capability: tuple[int, int] = DEFAULT_CAPABILITY, devices: int = 1):
        super().__init__("cuda.bindings.runtime")
        self._gpu, self._capability, self._devices = gpu, capability, devices
        self.memory: dict[int, bytearray] = {}  # device allocations by pointer
        self.streams: set[int] = set()
        self._pointers = count(0x7F00_0000_1000, 0x1000)

    @property
    def gpu(self) -> str:
        return self._gpu

    def cudaGetDeviceCount(self):
        return (cudaError_t.cudaSuccess, self._devices) if self._devices else (cudaError_t.cudaErrorNoDevice, 0)

    def cudaGetDevice(self):
        return (cudaError_t.cudaSuccess, 0) if self._devices else (cudaError_t.cudaErrorNoDevice, 0)

    def cudaGetDeviceProperties(self, device):
        _require(device, int, "cudaGetDeviceProperties(device)")
        if not 0 <= device < self._devices:
            return cudaError_t.cudaErrorInvalidValue, None
        name = self._gpu.encode() + b"\x00" * (256 - len(self._gpu))  # char name[256]
        return cudaError_t.cudaSuccess, cudaDeviceProp(name, *self._capability)

    def cudaMalloc(self, size):
        _require(size, (int, np.integer), "cudaMalloc(size)")
        pointer = next(self._pointers)
        self.memory[pointer] = bytearray(int(size))
        return cudaError_t.cudaSuccess, pointer

    def cudaFree(self, devPtr):
        if self.memory.pop(int(devPtr), None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        _require(kind, cudaMemcpyKind, "cudaMemcpyAsync(kind)")
        _require(stream, cudaStream_t, "cudaMemcpyAsync(stream)")
        _require(count, (int, np.integer), "cudaMemcpyAsync(count)")
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.memory[int(dst)][:count] = np.ascontiguousarray(src).view(np.uint8).ravel()[:count].tobytes()
        else:
            dst.view(np.uint8).ravel()[:count] = np.frombuffer(self.memory[int(src)], np.uint8, count)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamCreate(self):
        stream = cudaStream_t(len(self.streams) + 7)
        self.streams.add(int(stream))
        return cudaError_t.cudaSuccess, stream

    def cudaStreamSynchronize(self, stream):
        _require(stream, cudaStream_t, "cudaStreamSynchronize(stream)")
        return (cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream):
        _require(stream, cudaStream_t, "cudaStreamDestroy(stream)")
        self.streams.discard(int(stream))
        return (cudaError_t.cudaSuccess,)


# ---- TensorRT -------------------------------------------------------------------------------


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


_NUMPY_OF = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
    DataType.INT64: np.int64,
}
_DATA_TYPE_OF_ONNX = {
    onnx.TensorProto.FLOAT: DataType.FLOAT,
    onnx.TensorProto.FLOAT16: DataType.HALF,
    onnx.TensorProto.INT8: DataType.INT8,
    onnx.TensorProto.INT32: DataType.INT32,
    onnx.TensorProto.INT64: DataType.INT64,
}


def nptype(trt_type):
    """tensorrt.nptype: the numpy type of a DataType."""
    _require(trt_type, DataType, "nptype(trt_type)")
    if trt_type not in _NUMPY_OF:
        raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype: {trt_type}")
    return _NUMPY_OF[trt_type]


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    TF32 = 6  # on by default: float32 layers may compute their products in TF32


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1  # TensorRT 10: opt-in; 11: always on, the flag kept and ignored


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    __slots__ = ("messages", "min_severity")
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = tuple(_Severity)

    def __init__(self, min_severity: _Severity = _Severity.WARNING):
        self.min_severity = min_severity
        self.messages: list[tuple[_Severity, str]] = []

    def log(self, severity, msg):
        _require(severity, _Severity, "log(severity)")
        if severity <= self.min_severity:
            self.messages.append((severity, str(msg)))


class Logger(ILogger):
    """tensorrt.Logger: writes to stderr (here: keeps the messages for the tests)."""

    __slots__ = ()


class IHostMemory:
    __slots__ = ("_data",)

    def __init__(self, data: bytes):
        self._data = bytes(data)

    def __bytes__(self) -> bytes:  # the real object has the buffer protocol: bytes(plan) works
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


class ITimingCache:
    __slots__ = ("_entries", "_identity")

    def __init__(self, identity: dict, entries: int = 0):
        self._identity, self._entries = identity, entries

    def serialize(self) -> IHostMemory:
        return IHostMemory(json.dumps({"timing_cache": self._identity, "entries": self._entries}).encode())


class IOptimizationProfile:
    __slots__ = ("_shapes",)

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input, min, opt, max):  # the real parameter names
        _require(input, str, "set_shape(input)")
        dims = tuple(_dims(d, "set_shape(min/opt/max)") for d in (min, opt, max))
        if not all(len(d) == len(dims[0]) for d in dims) or any(a > b for a, b in zip(dims[0], dims[2])):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self._shapes[input] = dims


class INetworkDefinition:
    __slots__ = ("_flags", "_graph")

    def __init__(self, flags: int):
        self._flags = flags
        self._graph: onnx.ModelProto | None = None


class ParserError:
    __slots__ = ("_description",)

    def __init__(self, description: str):
        self._description = description

    def desc(self) -> str:
        return self._description

    def __str__(self) -> str:
        return f"In node -1 with name:  and operator:  (parseGraph): INVALID_GRAPH: {self._description}"


class OnnxParser:
    __slots__ = ("_errors", "_network")

    def __init__(self, network, logger):
        _require(network, INetworkDefinition, "OnnxParser(network)")
        _require(logger, ILogger, "OnnxParser(logger)")
        self._network, self._errors = network, []

    def parse(self, model, path=None):
        _require(model, (bytes, bytearray, memoryview), "parse(model)")
        try:
            graph = onnx.load_from_string(bytes(model))
            onnx.checker.check_model(graph)
        except Exception as exc:  # the parser's own messages for a graph it cannot read
            self._errors.append(ParserError(f"cannot read the model ({type(exc).__name__})"))
            return False
        self._network._graph = graph
        return True

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index):
        _require(index, int, "get_error(index)")
        return self._errors[index]


class IBuilderConfig:
    __slots__ = ("_cache", "_flags", "_pools", "_profiles", "_target")

    def __init__(self, target: dict):
        self._target = target
        self._flags = {BuilderFlag.TF32}  # TensorRT's default
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool, pool_size):
        _require(pool, MemoryPoolType, "set_memory_pool_limit(pool)")
        _require(pool_size, int, "set_memory_pool_limit(pool_size)")
        self._pools[pool] = pool_size

    def get_memory_pool_limit(self, pool):
        _require(pool, MemoryPoolType, "get_memory_pool_limit(pool)")
        return self._pools.get(pool, 0)

    def set_flag(self, flag):
        _require(flag, BuilderFlag, "set_flag(flag)")
        self._flags.add(flag)

    def clear_flag(self, flag):
        _require(flag, BuilderFlag, "clear_flag(flag)")
        self._flags.discard(flag)

    def get_flag(self, flag):
        _require(flag, BuilderFlag, "get_flag(flag)")
        return flag in self._flags

    def add_optimization_profile(self, profile):
        _require(profile, IOptimizationProfile, "add_optimization_profile(profile)")
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        _require(
            serialized_timing_cache, (bytes, bytearray, memoryview), "create_timing_cache(serialized_timing_cache)"
        )
        blob = bytes(serialized_timing_cache)
        if not blob:
            return ITimingCache(dict(self._target))
        try:
            read = json.loads(blob)
            return ITimingCache(dict(read["timing_cache"]), int(read["entries"]))
        except (ValueError, KeyError, TypeError):
            return None

    def set_timing_cache(self, cache, ignore_mismatch):
        _require(cache, ITimingCache, "set_timing_cache(cache)")
        _require(ignore_mismatch, bool, "set_timing_cache(ignore_mismatch)")
        if cache._identity != self._target and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self):
        return self._cache


class Builder:
    __slots__ = ("_logger", "_target")

    def __init__(self, logger):
        _require(logger, ILogger, "Builder(logger)")
        self._logger = logger
        self._target = dict(_TARGET)

    def create_network(self, flags=0):
        _require(flags, int, "create_network(flags)")
        return INetworkDefinition(flags)

    def create_builder_config(self):
        return IBuilderConfig(self._target)

    def create_optimization_profile(self):
        return IOptimizationProfile()

    def build_serialized_network(self, network, config):
        _require(network, INetworkDefinition, "build_serialized_network(network)")
        _require(config, IBuilderConfig, "build_serialized_network(config)")
        graph = network._graph
        if graph is None:
            self._logger.log(_Severity.ERROR, "Network must have at least one output")
            return None
        profiles = {name: shapes for p in config._profiles for name, shapes in p._shapes.items()}
        for value in graph.graph.input:
            dynamic = any(not d.HasField("dim_value") for d in value.type.tensor_type.shape.dim)
            if dynamic and value.name not in profiles:
                self._logger.log(_Severity.ERROR, "Network has dynamic or shape inputs, but no optimization profile")
                return None
        if config._cache is not None:
            config._cache._entries += len(graph.graph.node)
        BUILDS.append(Build(network._flags, set(config._flags), dict(config._pools), profiles, graph))
        header = {
            **self._target,
            "profiles": {name: [list(d) for d in shapes] for name, shapes in profiles.items()},
        }
        text = json.dumps(header).encode()
        return IHostMemory(_PLAN_MAGIC + _LENGTH.pack(len(text)) + text + graph.SerializeToString())


@dataclass(frozen=True)
class Build:
    """One build_serialized_network call: the network flags and what the config held."""

    network_flags: int
    flags: set
    pools: dict
    profiles: dict
    graph: onnx.ModelProto

    @property
    def strongly_typed(self) -> bool:
        return bool(self.network_flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED))


def read_plan(plan: bytes) -> tuple[dict, onnx.ModelProto]:
    """(what the fake builder recorded, the ONNX graph it parsed) of a fake plan."""
    if not plan.startswith(_PLAN_MAGIC):
        raise ValueError("not a plan of the fake TensorRT")
    start = len(_PLAN_MAGIC) + _LENGTH.size
    (length,) = _LENGTH.unpack_from(plan, len(_PLAN_MAGIC))
    return json.loads(plan[start : start + length]), onnx.load_from_string(plan[start + length :])


class ICudaEngine:
    __slots__ = ("_cudart", "_header", "_names", "_session", "_static", "_types")

    def __init__(self, header: dict, graph: onnx.ModelProto, cudart: FakeCudart):
        self._header, self._cudart = header, cudart
        self._session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        values = [*graph.graph.input, *graph.graph.output]
        self._names = [v.name for v in values]
        self._types = {v.name: _DATA_TYPE_OF_ONNX[v.type.tensor_type.elem_type] for v in values}
        self._static = {
            v.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
            for v in values
        }

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, index):
        _require(index, int, "get_tensor_name(index)")
        return self._names[index]

    def get_tensor_mode(self, name):
        _require(name, str, "get_tensor_mode(name)")
        if name not in self._types:
            return TensorIOMode.NONE
        inputs = {node.name for node in self._session.get_inputs()}
        return TensorIOMode.INPUT if name in inputs else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        _require(name, str, "get_tensor_shape(name)")
        return self._static[name]

    def get_tensor_dtype(self, name):
        _require(name, str, "get_tensor_dtype(name)")
        return self._types[name]

    def get_tensor_profile_shape(self, name, profile_index):
        _require(name, str, "get_tensor_profile_shape(name)")
        _require(profile_index, int, "get_tensor_profile_shape(profile_index)")
        return [tuple(d) for d in self._header["profiles"][name]]

    def create_execution_context(self):
        return IExecutionContext(self)


class IExecutionContext:
    __slots__ = ("_addresses", "_engine", "_input_shape", "_output_shapes")

    def __init__(self, engine: ICudaEngine):
        self._engine = engine
        self._addresses: dict[str, int] = {}
        self._input_shape: dict[str, tuple[int, ...]] = {}
        self._output_shapes: dict[str, tuple[int, ...]] = {}

    def set_input_shape(self, name, shape):
        _require(name, str, "set_input_shape(name)")
        dims = _dims(shape, "set_input_shape(shape)")
        low, _, high = self._engine._header["profiles"][name]
        if len(dims) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(dims, low, high)):
            return False
        self._input_shape[name] = dims
        zeros = {n: np.zeros(s, nptype(self._engine._types[n])) for n, s in self._input_shape.items()}
        outputs = self._engine._session.get_outputs()
        self._output_shapes = {o.name: v.shape for o, v in zip(outputs, self._engine._session.run(None, zeros))}
        return True

    def get_tensor_shape(self, name):
        _require(name, str, "get_tensor_shape(name)")
        return self._input_shape.get(name) or self._output_shapes.get(name) or self._engine._static[name]

    def set_tensor_address(self, name, memory):
        _require(name, str, "set_tensor_address(name)")
        _require(memory, int, "set_tensor_address(memory)")
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle):
        _require(stream_handle, int, "execute_async_v3(stream_handle)")
        engine, memory = self._engine, self._engine._cudart.memory
        if set(self._addresses) != set(engine._names) or not self._input_shape:
            return False  # TensorRT: every I/O tensor needs an address and every input a shape
        feeds = {}
        for name, shape in self._input_shape.items():
            dtype = np.dtype(nptype(engine._types[name]))
            feeds[name] = np.frombuffer(memory[self._addresses[name]], dtype, int(np.prod(shape))).reshape(shape)
        for node, value in zip(engine._session.get_outputs(), engine._session.run(None, feeds)):
            raw = np.ascontiguousarray(value).view(np.uint8).ravel()
            memory[self._addresses[node.name]][: raw.size] = raw.tobytes()
        return True


class Runtime:
    __slots__ = ("_cudart", "_logger")

    def __init__(self, logger):
        _require(logger, ILogger, "Runtime(logger)")
        self._logger = logger
        self._cudart = _CUDART[0]

    def deserialize_cuda_engine(self, serialized_engine):
        _require(serialized_engine, (bytes, bytearray, memoryview, IHostMemory), "deserialize_cuda_engine")
        try:
            header, graph = read_plan(bytes(serialized_engine))
        except (ValueError, struct.error):
            self._logger.log(_Severity.ERROR, "Serialization assertion failed: magic tag does not match")
            return None
        if {k: header[k] for k in _TARGET} != _TARGET:
            self._logger.log(_Severity.ERROR, "The engine plan file is not compatible with this version of TensorRT")
            return None
        return ICudaEngine(header, graph, self._cudart)


# The one TensorRT/GPU pair the fake modules pretend to be, and what their builders were given
# (for the tests to inspect); set by fake_modules.
_TARGET: dict[str, str] = {}
_CUDART: list[FakeCudart] = []
BUILDS: list[Build] = []


def fake_modules(
    major: int = 10,
    *,
    version: str | None = None,
    gpu: str = DEFAULT_GPU,
    capability: tuple[int, int] = DEFAULT_CAPABILITY,
    devices: int = 1,
) -> dict[str, types.ModuleType]:
    """sys.modules entries for `tensorrt` (of `major`) and cuda-python's `cuda.bindings.runtime`."""
    cudart = FakeCudart(gpu, capability, devices)
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version or DEFAULT_VERSIONS[major]  # type: ignore[attr-defined]
    exported: dict[str, Callable | type] = {
        "Logger": Logger,
        "ILogger": ILogger,
        "Builder": Builder,
        "OnnxParser": OnnxParser,
        "Runtime": Runtime,
        "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
        "BuilderFlag": BuilderFlag,
        "MemoryPoolType": MemoryPoolType,
        "TensorIOMode": TensorIOMode,
        "DataType": DataType,
        "nptype": nptype,
    }
    for name, value in exported.items():
        setattr(trt, name, value)
    _TARGET.clear()
    _TARGET.update({"tensorrt": trt.__version__, "gpu": gpu})
    _CUDART[:] = [cudart]
    BUILDS.clear()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart  # type: ignore[attr-defined]
    return {
        "tensorrt": trt,
        "cuda": types.ModuleType("cuda"),
        "cuda.bindings": bindings,
        "cuda.bindings.runtime": cudart,
    }


def installed(modules: dict[str, types.ModuleType]) -> tuple[types.ModuleType, FakeCudart]:
    """(tensorrt, cudart) of a fake_modules() result."""
    cudart = modules["cuda.bindings.runtime"]
    assert isinstance(cudart, FakeCudart)
    return modules["tensorrt"], cudart
