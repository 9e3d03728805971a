"""TensorRT export: what runs without TensorRT (errors, profile, engine metadata, the parser's
float-T graph), and a real build that runs only with TensorRT and an NVIDIA GPU."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from unittest.mock import MagicMock

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from qsenn_bench.testing.toy_models import save_checkpoint, ternary_model
from qsenn_export import trt_build
from qsenn_export._common import OPSET, fold_source, to_onnx
from qsenn_export.errors import ExportError
from qsenn_export.formats import make_options
from qsenn_export.graph import TERNARY_INITIALIZER, ternary_as_float
from qsenn_export.metadata import build_metadata
from qsenn_export.source import load_source
from qsenn_export.trt_build import engine_info, export_trt, profile_shapes, require_tensorrt
from qsenn_runtime.engine_file import pack_engine, unpack_engine
from qsenn_runtime.metadata import OUTPUT_NAMES, MetadataError

HAVE_TRT_GPU = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return load_source(save_checkpoint(ternary_model(), tmp_path_factory.mktemp("trt") / "model.pt"))


@pytest.fixture(scope="module")
def graph(source):
    return to_onnx(fold_source(source), build_metadata(source, OPSET), None)


def test_missing_tensorrt_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(ExportError) as exc:
        require_tensorrt()
    message = str(exc.value)
    assert "TensorRT is not installed (pip install 'qsenn[trt]')" in message and "\n" not in message


def test_missing_gpu_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ExportError, match="no NVIDIA GPU is visible") as exc:
        require_tensorrt()
    assert "TensorRT is not installed" not in str(exc.value)


def test_export_without_tensorrt_writes_nothing(source, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "model.engine"
    with pytest.raises(ExportError, match="cannot build a TensorRT engine"):
        export_trt(source.checkpoint, make_options("trt", out=out, half=True), echo=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_options_are_checked_before_tensorrt(source, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match="--int8 needs --calib"):
        export_trt(source.checkpoint, make_options("trt", int8=True), echo=lambda line: None)


@pytest.mark.parametrize("batch, opt", [(1, 1), (2, 1), (16, 8), (9, 4)])
def test_profile_shapes(batch, opt):
    shapes = profile_shapes(batch, 448)
    assert shapes.min == (1, 3, 448, 448) and shapes.opt == (opt, 3, 448, 448)
    assert shapes.max == (batch, 3, 448, 448)
    assert shapes.to_json()["max"] == [batch, 3, 448, 448]


def test_engine_metadata_round_trips_through_the_container(source):
    metadata = build_metadata(source, OPSET)
    info = engine_info("10.9.0", "NVIDIA H100", (9, 0), "fp16", profile_shapes(16, 32))
    packed = pack_engine(metadata.with_engine(info), b"plan-bytes")
    read, plan = unpack_engine(packed)
    assert plan == b"plan-bytes"
    assert read.engine == {
        "tensorrt": "10.9.0",
        "gpu": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp16",
        "profile": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [16, 3, 32, 32]},
        "plan_bytes": 10,
        "plan_sha256": hashlib.sha256(b"plan-bytes").hexdigest(),
    }
    np.testing.assert_array_equal(read.weights, metadata.weights)
    with pytest.raises(MetadataError, match="truncated"):
        unpack_engine(packed[:40])
    with pytest.raises(MetadataError, match="plan has 9 bytes but 10 were packed"):
        unpack_engine(packed[:-1])
    with pytest.raises(MetadataError, match="plan is not the one packed"):
        unpack_engine(packed[:-10] + b"garbage!!!")


def test_parser_graph_has_float_T_and_the_same_outputs(graph):
    model = graph
    float_model = ternary_as_float(model)
    assert not any(n.op_type == "Cast" for n in float_model.graph.node)
    assert all(i.data_type != onnx.TensorProto.INT8 for i in float_model.graph.initializer)
    onnx.checker.check_model(float_model, full_check=True)
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    a, b = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            list(OUTPUT_NAMES), {"images": images}
        )
        for m in (model, float_model)
    )
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # The int8 original is untouched.
    assert any(i.name == TERNARY_INITIALIZER and i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)


def test_timing_cache_lives_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert trt_build.timing_cache_path() == tmp_path / "qsenn" / "trt-timing.cache"


def fake_tensorrt() -> MagicMock:
    """Records the builder calls; its calibrator base is a real class so that it can be subclassed."""
    trt = MagicMock()
    trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})
    trt.OnnxParser.return_value.parse.return_value = True
    builder = trt.Builder.return_value
    builder.build_serialized_network.return_value = b"plan"
    builder.create_builder_config.return_value.create_timing_cache.return_value.serialize.return_value = b"timings"
    return trt


def test_builder_configuration_and_timing_cache_reuse(graph, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = graph
    shapes = profile_shapes(16, 32)
    options = make_options("trt", half=True, int8=True, calib=tmp_path, workspace=2.0)
    trt = fake_tensorrt()
    for _ in range(2):
        plan = trt_build.build_engine(trt, model, shapes, options, torch.rand(20, 3, 32, 32), lambda line: None)
    assert plan == b"plan"
    config = trt.Builder.return_value.create_builder_config.return_value
    # The first build starts an empty cache, the second reads what the first wrote.
    assert [c.args for c in config.create_timing_cache.call_args_list] == [(b"",), (b"timings",)]
    config.set_memory_pool_limit.assert_called_with(trt.MemoryPoolType.WORKSPACE, 2 << 30)
    config.set_flag.assert_any_call(trt.BuilderFlag.FP16)
    config.set_flag.assert_any_call(trt.BuilderFlag.INT8)
    profile = trt.Builder.return_value.create_optimization_profile.return_value
    profile.set_shape.assert_any_call("images", shapes.min, shapes.opt, shapes.max)
    profile.set_shape.assert_any_call("images", (8, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))
    calibrator = config.int8_calibrator
    assert calibrator.get_batch_size() == 8 and len(calibrator.batches) == 2  # 20 images: 2 full batches
    # The parser gets T as float (see ternary_as_float).
    parsed = onnx.load_from_string(trt.OnnxParser.return_value.parse.call_args.args[0])
    assert all(i.data_type != onnx.TensorProto.INT8 for i in parsed.graph.initializer)


def test_parser_errors_are_one_line(graph):
    trt = fake_tensorrt()
    trt.OnnxParser.return_value.parse.return_value = False
    trt.OnnxParser.return_value.num_errors = 1
    trt.OnnxParser.return_value.get_error.return_value = "Unsupported operator Foo"
    with pytest.raises(ExportError, match="TensorRT cannot parse the exported ONNX model: Unsupported operator Foo"):
        trt_build.build_engine(trt, graph, profile_shapes(4, 32), make_options("trt"), None, lambda line: None)


@pytest.mark.trt
@pytest.mark.skipif(not HAVE_TRT_GPU, reason="needs TensorRT and an NVIDIA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_and_verification(source, tmp_path, precision):
    out = tmp_path / f"{precision}.engine"
    lines = []
    export_trt(
        source.checkpoint,
        make_options("trt", out=out, batch=4, half=precision == "fp16", verify_count=8),
        echo=lines.append,
    )
    metadata, plan = unpack_engine(out.read_bytes())
    assert metadata.engine["precision"] == precision and plan
    assert metadata.engine["profile"]["max"] == [4, 3, 32, 32]
    assert any(line.startswith("verified on 8 ") and line.endswith("— OK") for line in lines)
