"""The runtime's TensorRT backend against the strict TensorRT/cuda-python stand-ins
(qsenn_bench.testing.fake_tensorrt): buffers, shapes, batching by the optimisation profile, the
version/major/GPU refusal, and the identity tolerance that follows the head's precision.

The fake engine's plan holds a toy ONNX graph that onnxruntime runs when the execution context is
enqueued, reading and writing the stand-in's device memory. Real engines are exercised by the
export tests marked trt on a GPU machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qsenn_runtime
from qsenn_bench.testing import fake_tensorrt
from qsenn_bench.testing.fake_tensorrt import fake_modules, installed
from qsenn_bench.testing.toy_onnx import toy_metadata, toy_model
from qsenn_export.trt_build import build_engine, profile_shapes, require_tensorrt
from qsenn_runtime import BackendError, IdentityCheckError
from qsenn_runtime.engine_file import pack_engine
from qsenn_runtime.model import FP32_RTOL, REDUCED_PRECISION_RTOL

PROFILE_MAX_BATCH = 3


def install(monkeypatch, tmp_path, major: int = 10, **kwargs):
    modules = fake_modules(major, **kwargs)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return installed(modules)


def engine_file(
    tmp_path: Path, graph: onnx.ModelProto | None = None, name: str = "toy.engine", **engine
) -> tuple[Path, bytes]:
    """A qsenn engine file of the toy model, its plan built by the installed stand-in; `engine`
    overrides entries of the metadata's engine section."""
    metadata = toy_metadata()
    graph = graph or toy_model(metadata)
    target = require_tensorrt()
    plan = build_engine(target, graph, profile_shapes(PROFILE_MAX_BATCH, 32), 0.25, lambda line: None)
    info = {
        "tensorrt": target.version,
        "tensorrt_major": int(target.version.split(".")[0]),
        "gpu": target.gpu,
        "precision": "fp16",
        "head_precision": "fp32",
        **engine,
    }
    path = tmp_path / name
    path.write_bytes(pack_engine(metadata.with_engine({k: v for k, v in info.items() if v is not None}), plan))
    return path, graph.SerializeToString()


def photos(n: int) -> list[np.ndarray]:
    return [np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8) for seed in range(n)]


@pytest.mark.parametrize("major", [10, 11])
def test_engine_predictions_match_onnxruntime(monkeypatch, tmp_path, major):
    _, cudart = install(monkeypatch, tmp_path, major)
    path, onnx_bytes = engine_file(tmp_path)
    model = qsenn_runtime.load(path)
    assert model.backend_name == f"tensorrt {fake_tensorrt.DEFAULT_VERSIONS[major]}"
    assert model.backend.batch_range == (1, PROFILE_MAX_BATCH)
    onnx_path = tmp_path / "toy.onnx"
    onnx_path.write_bytes(onnx_bytes)
    reference = qsenn_runtime.load(onnx_path)
    images = photos(7)
    for ours, theirs in zip(model.predict(images, batch_size=16), reference.predict(images)):
        assert ours.to_dict() == theirs.to_dict()
    explained = model.explain(images[0])
    assert explained.feature_maps.shape == (6, 16, 16)
    buffers = len(cudart.memory)
    model.predict(images[:1])  # smaller batch: the buffers are reused
    assert len(cudart.memory) == buffers == 4
    del model
    assert not cudart.streams


def test_engine_for_another_tensorrt_release_major_or_gpu_is_refused(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, 10)
    release, _ = engine_file(tmp_path, name="release.engine", tensorrt="10.12.0.36", tensorrt_major=10)
    gpu, _ = engine_file(tmp_path, name="gpu.engine", gpu="Tesla T4")
    major_10, _ = engine_file(tmp_path, name="major.engine")
    with pytest.raises(BackendError, match="built with TensorRT 10.12.0.36 but TensorRT 10.13.3.9 is installed"):
        qsenn_runtime.load(release)
    with pytest.raises(BackendError, match="built on a Tesla T4 but this GPU is a NVIDIA Fake H200"):
        qsenn_runtime.load(gpu)
    install(monkeypatch, tmp_path, 11)
    with pytest.raises(BackendError) as refused:
        qsenn_runtime.load(major_10)
    message = str(refused.value)
    assert "built with TensorRT 10 (10.13.3.9) but TensorRT 11.4.0.106 is installed" in message
    assert "never loads in another TensorRT major" in message and "\n" not in message


def test_unsupported_tensorrt_is_one_line(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, 10)
    path, _ = engine_file(tmp_path)
    install(monkeypatch, tmp_path, 10, version="12.0.1")
    with pytest.raises(BackendError, match=r"TensorRT 12.0.1 is installed but qsenn supports TensorRT 10 and 11"):
        qsenn_runtime.load(path)


def head_off_by(metadata, graph_images: np.ndarray, relative: float) -> onnx.ModelProto:
    """The toy graph with every logit moved by `relative` of its identity scale Σ|W·c| + |b| on
    `graph_images`: what a head computed in reduced precision gets wrong."""
    exact = toy_model(metadata)
    session = ort.InferenceSession(exact.SerializeToString(), providers=["CPUExecutionProvider"])
    (features,) = session.run(["features"], {"images": graph_images})
    scale = np.abs(features.astype(np.float64)) @ np.abs(metadata.weights.T.astype(np.float64)) + np.abs(metadata.bias)
    return toy_model(metadata, graph_bias=(metadata.bias + relative * scale.max(axis=0)).astype(np.float32))


@pytest.mark.parametrize(
    "backbone, head, tolerance",
    [("fp16", "fp32", FP32_RTOL), ("int8", "fp32", FP32_RTOL), ("fp32", "fp16", REDUCED_PRECISION_RTOL)],
)
def test_identity_tolerance_follows_the_heads_precision_not_the_backbones(
    monkeypatch, tmp_path, backbone, head, tolerance
):
    """A head that errs by 1e-3 of the identity's scale (an fp16 head's rounding) passes when the engine
    records a reduced-precision head and is refused when it records a float32 one, whatever the backbone."""
    install(monkeypatch, tmp_path)
    image = np.random.default_rng(5).random((1, 3, 32, 32), dtype=np.float32)
    path, _ = engine_file(tmp_path, head_off_by(toy_metadata(), image, 1e-3), precision=backbone, head_precision=head)
    model = qsenn_runtime.load(path)
    assert model._rtol == tolerance
    if head == "fp32":
        with pytest.raises(IdentityCheckError, match="contributions plus bias sum to"):
            model.predict_tensor(image)
    else:
        assert model.predict_tensor(image)[0].ok


def test_engines_without_a_recorded_head_precision_keep_the_engine_precision(monkeypatch, tmp_path):
    """Engines built before the head was kept in float32 ran it in the engine's precision."""
    install(monkeypatch, tmp_path)
    old_fp16, _ = engine_file(tmp_path, name="old16.engine", precision="fp16", head_precision=None)
    old_fp32, _ = engine_file(tmp_path, name="old32.engine", precision="fp32", head_precision=None)
    assert qsenn_runtime.load(old_fp16)._rtol == REDUCED_PRECISION_RTOL
    assert qsenn_runtime.load(old_fp32)._rtol == FP32_RTOL
