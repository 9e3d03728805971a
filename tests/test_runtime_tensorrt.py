"""The TensorRT backend's call sequence, against stand-ins for `tensorrt` and cuda-python.

No TensorRT here: the fake engine's "plan" is a toy ONNX model that onnxruntime runs when the
execution context is enqueued, reading and writing a fake device memory. This checks buffer
handling, shapes, batching by the optimisation profile, and the version/GPU refusal; real
engines are exercised by the export → runtime integration tests on a GPU machine.
"""

from __future__ import annotations

import sys
import types
from itertools import count

import numpy as np
import onnxruntime as ort
import pytest

import qsenn_runtime
from qsenn_bench.testing.toy_onnx import toy_metadata, toy_model
from qsenn_runtime import BackendError
from qsenn_runtime.engine_file import pack_engine

GPU = "NVIDIA Fake 80GB"
PROFILE_MAX_BATCH = 3


class FakeCudart(types.ModuleType):
    class cudaError_t:
        cudaSuccess = 0

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = "H2D", "D2H"

    def __init__(self):
        super().__init__("cuda.bindings.runtime")
        self.memory: dict[int, bytearray] = {}
        self._pointers = count(0x1000, 0x1000)

    def cudaMalloc(self, nbytes):
        pointer = next(self._pointers)
        self.memory[pointer] = bytearray(nbytes)
        return 0, pointer

    def cudaFree(self, pointer):
        del self.memory[pointer]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        if kind == "H2D":
            self.memory[dst][:nbytes] = np.ascontiguousarray(src).tobytes()[:nbytes]
        else:
            dst.view(np.uint8).ravel()[:nbytes] = np.frombuffer(self.memory[src], np.uint8, nbytes)
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaGetDevice(self):
        return 0, 0

    def cudaGetDeviceProperties(self, device):
        return 0, types.SimpleNamespace(name=GPU.encode())


class FakeEngine:
    """Static shapes as TensorRT reports them (-1: dynamic); runs the ONNX 'plan' with onnxruntime."""

    def __init__(self, plan: bytes, cudart: FakeCudart):
        self.session = ort.InferenceSession(plan, providers=["CPUExecutionProvider"])
        self.cudart = cudart
        self.names = [n.name for n in self.session.get_inputs()] + [n.name for n in self.session.get_outputs()]
        self.shapes = {
            n.name: tuple(d if isinstance(d, int) else -1 for d in n.shape)
            for n in self.session.get_inputs() + self.session.get_outputs()
        }
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return FakeTensorRT.TensorIOMode.INPUT if name == "images" else FakeTensorRT.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def get_tensor_dtype(self, name):
        return "float32"

    def get_tensor_profile_shape(self, name, profile):
        size = self.shapes["images"][2]
        return [(n, 3, size, size) for n in (1, 2, PROFILE_MAX_BATCH)]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.input_shape = engine, None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name, shape):
        if not 1 <= shape[0] <= PROFILE_MAX_BATCH:
            return False
        self.input_shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n, _, size, _ = self.input_shape
        return {
            "logits": (n, self.engine.shapes["logits"][1]),
            "features": (n, self.engine.shapes["features"][1]),
            "feature_maps": (n, self.engine.shapes["features"][1], size // 2, size // 2),
        }[name]

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def execute_async_v3(self, stream_handle):
        assert isinstance(stream_handle, int) and set(self.addresses) == set(self.engine.names)
        memory = self.engine.cudart.memory
        images = np.frombuffer(memory[self.addresses["images"]], np.float32, int(np.prod(self.input_shape))).reshape(
            self.input_shape
        )
        outputs = self.engine.session.run(None, {"images": images})
        for node, value in zip(self.engine.session.get_outputs(), outputs):
            raw = np.ascontiguousarray(value, np.float32).view(np.uint8).ravel()
            memory[self.addresses[node.name]][: raw.size] = raw.tobytes()
        return True


class FakeTensorRT(types.ModuleType):
    __version__ = "10.3.0.26"

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    def __init__(self, cudart: FakeCudart):
        super().__init__("tensorrt")
        cudart_module = cudart

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, plan):
                return FakeEngine(bytes(plan), cudart_module)

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return np.dtype(dtype).type


@pytest.fixture
def fake_tensorrt(monkeypatch):
    cudart = FakeCudart()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(cudart))
    return cudart


def engine_file(tmp_path, tensorrt="10.3.0.26", gpu=GPU):
    metadata = toy_metadata(engine={"tensorrt": tensorrt, "gpu": gpu, "precision": "fp16"})
    plan = toy_model(metadata).SerializeToString()
    path = tmp_path / "toy.engine"
    path.write_bytes(pack_engine(metadata, plan))
    return path, plan


def test_engine_predictions_match_onnxruntime(fake_tensorrt, tmp_path):
    path, plan = engine_file(tmp_path)
    model = qsenn_runtime.load(path)
    assert model.backend_name == "tensorrt 10.3.0.26" and model.backend.batch_range == (1, PROFILE_MAX_BATCH)
    onnx_path = tmp_path / "toy.onnx"
    onnx_path.write_bytes(plan)
    reference = qsenn_runtime.load(onnx_path)
    images = [np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8) for seed in range(7)]
    for ours, theirs in zip(model.predict(images, batch_size=16), reference.predict(images)):
        assert ours.to_dict() == theirs.to_dict()
    explained = model.explain(images[0])
    assert explained.feature_maps.shape == (6, 16, 16)
    buffers = len(fake_tensorrt.memory)
    model.predict(images[:1])  # smaller batch: the buffers are reused
    assert len(fake_tensorrt.memory) == buffers == 4


@pytest.mark.parametrize(
    "tensorrt, gpu, problem",
    [
        ("10.4.0", GPU, "built with TensorRT 10.4.0 but TensorRT 10.3.0.26 is installed"),
        ("10.3.0", "Tesla T4", f"built on a Tesla T4 but this GPU is a {GPU}"),
    ],
)
def test_engine_for_another_tensorrt_or_gpu_is_refused(fake_tensorrt, tmp_path, tensorrt, gpu, problem):
    path, _ = engine_file(tmp_path, tensorrt, gpu)
    with pytest.raises(BackendError, match=problem):
        qsenn_runtime.load(path)
