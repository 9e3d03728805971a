"""qsenn_runtime.load / read_metadata: format detection, metadata checks against the graph,
execution-provider choice, and the TensorRT compatibility rule (no TensorRT needed)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import qsenn_runtime
from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata, toy_model
from qsenn_runtime import BackendError, MetadataError
from qsenn_runtime.backends import engine_mismatch
from qsenn_runtime.engine_file import pack_engine
from qsenn_runtime.loader import check_io_shapes
from qsenn_runtime.onnx_proto import summarise

ENGINE = {"tensorrt": "10.3.0.26", "gpu": "NVIDIA H100 80GB HBM3", "precision": "fp16"}


def _refused(path, match: str, **kwargs) -> str:
    with pytest.raises(MetadataError, match=match) as info:
        qsenn_runtime.load(path, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_loads_a_toy_model_with_its_metadata(tmp_path):
    metadata = save_toy_model(tmp_path / "m.onnx")
    model = qsenn_runtime.load(tmp_path / "m.onnx")
    assert model.class_names == metadata.class_names
    np.testing.assert_array_equal(model.metadata.weights, metadata.weights)
    assert "CPUExecutionProvider" in model.backend_name
    assert qsenn_runtime.read_metadata(tmp_path / "m.onnx").to_json() == metadata.to_json()


def test_files_that_are_not_models(tmp_path):
    _refused(tmp_path / "missing.onnx", "model file not found")
    (tmp_path / "empty.onnx").write_bytes(b"")
    _refused(tmp_path / "empty.onnx", "neither an ONNX model nor a qsenn engine .the file is empty")
    (tmp_path / "notes.onnx").write_text("just some text, no protobuf\n" * 20)
    _refused(tmp_path / "notes.onnx", "neither an ONNX model nor a qsenn engine")
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(tmp_path / "noise.onnx", "neither an ONNX model nor a qsenn engine")
    whole = tmp_path / "whole.onnx"
    save_toy_model(whole)
    (tmp_path / "cut.onnx").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _refused(tmp_path / "cut.onnx", "neither an ONNX model .*truncated file")


def test_onnx_without_or_with_bad_metadata(tmp_path):
    metadata = toy_metadata()
    onnx.save(toy_model(metadata, with_metadata=False), tmp_path / "plain.onnx")
    _refused(tmp_path / "plain.onnx", "is an ONNX model without qsenn metadata")
    onnx.save(toy_model(metadata, metadata_json="{not json"), tmp_path / "garbled.onnx")
    _refused(tmp_path / "garbled.onnx", "garbled.onnx: qsenn metadata is not valid JSON")
    onnx.save(toy_model(metadata, metadata_json='{"format": "qsenn", "format_version": 99}'), tmp_path / "future.onnx")
    _refused(tmp_path / "future.onnx", "format version 99 is not supported")


def test_metadata_t_must_match_the_graph(tmp_path):
    metadata = toy_metadata(num_classes=4, num_features=6)
    flipped = metadata.weights.copy()
    k, j = np.argwhere(flipped != 0)[0]
    flipped[k, j] *= -1
    save_toy_model(tmp_path / "values.onnx", metadata, graph_weights=flipped)
    _refused(tmp_path / "values.onnx", r"the graph's int8 head initializer 'T' differs from the metadata's T")
    other = toy_metadata(num_classes=5, num_features=6)  # K differs from the graph's
    onnx.save(toy_model(metadata, metadata_json=other.to_json()), tmp_path / "classes.onnx")
    _refused(
        tmp_path / "classes.onnx", r"ternary head \(5 classes × 6 features\) but the graph holds no int8 initializer"
    )


def test_graph_head_values_outside_ternary_are_refused(tmp_path):
    metadata = toy_metadata(num_classes=4, num_features=6)
    broken = metadata.weights.copy()
    broken[0, np.flatnonzero(broken[0] == 1)[0]] = 2
    save_toy_model(tmp_path / "two.onnx", metadata, graph_weights=broken)
    _refused(tmp_path / "two.onnx", r"initializer 'T' holds 2, outside \{-1, 0, \+1\}")
    with pytest.raises(MetadataError, match="holds 2"):
        qsenn_runtime.read_metadata(tmp_path / "two.onnx")  # `qsenn inspect` reads only this


def test_sparse_head_is_read_with_its_real_weights_and_checked_against_the_graph(tmp_path):
    metadata = toy_metadata(num_classes=4, num_features=6, head_kind="sparse")
    save_toy_model(tmp_path / "sparse.onnx", metadata)
    model = qsenn_runtime.load(tmp_path / "sparse.onnx")
    assert model.metadata.head_kind == "sparse" and model.metadata.weights.dtype == np.float32
    np.testing.assert_array_equal(model.metadata.weights, metadata.weights)
    explanation = model.predict(np.zeros((32, 32, 3), np.uint8)).explanation
    assert {abs(c.weight) for c in explanation.contributions} - {1.0}  # real weights, not ±1
    nudged = metadata.weights.copy()
    k, j = np.argwhere(nudged != 0)[0]
    nudged[k, j] *= 1.001
    save_toy_model(tmp_path / "nudged.onnx", metadata, graph_weights=nudged)
    _refused(tmp_path / "nudged.onnx", r"sparse head weights \(4 classes × 6 features\) are not in the graph")


def test_output_shapes_must_match_the_metadata(tmp_path):
    metadata = toy_metadata(num_classes=4, num_features=6, size=32)
    good = {"images": (None, 3, 32, 32)}
    outputs = {"logits": (None, 4), "features": (None, 6), "feature_maps": (None, 6, 16, 16)}
    check_io_shapes(metadata, good, outputs, "m")
    with pytest.raises(
        MetadataError, match=re.escape("logits has shape ?×7 in the graph but the metadata implies ?×4")
    ):
        check_io_shapes(metadata, good, {**outputs, "logits": (None, 7)}, "m")
    with pytest.raises(MetadataError, match="features has shape"):
        check_io_shapes(metadata, good, {**outputs, "features": (None, 5)}, "m")
    with pytest.raises(MetadataError, match=re.escape("images has shape ?×3×64×64")):
        check_io_shapes(metadata, {"images": (None, 3, 64, 64)}, outputs, "m")
    with pytest.raises(MetadataError, match="lacks feature_maps"):
        check_io_shapes(metadata, good, {"logits": (None, 4), "features": (None, 6)}, "m")
    # and on a file: metadata of another input size on a graph with the right head
    onnx.save(
        toy_model(metadata, metadata_json=toy_metadata(num_classes=4, num_features=6, size=64).to_json()),
        tmp_path / "size.onnx",
    )
    _refused(
        tmp_path / "size.onnx", re.escape("images has shape ?×3×32×32 in the graph but the metadata implies ?×3×64×64")
    )


def test_a_ternary_graph_must_hold_T_as_an_int8_initializer(tmp_path):
    """T as a Constant node instead of an initializer: the contract says int8 initializer."""
    model = toy_model(toy_metadata())
    graph = model.graph
    ternary = next(t for t in graph.initializer if t.name == "T")
    graph.initializer.remove(ternary)
    graph.node.insert(0, helper.make_node("Constant", [], ["T"], value=ternary))
    onnx.save(model, tmp_path / "constant.onnx")
    _refused(tmp_path / "constant.onnx", "holds no int8 initializer of that shape")


def test_int8_initializers_stored_as_int32_data():
    values = [[-1, 0, 1], [1, -1, 0]]
    tensor = helper.make_tensor("T", TensorProto.INT8, (2, 3), np.array(values).ravel().tolist(), raw=False)
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("T", TensorProto.INT8, (2, 3))], [tensor])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"qsenn": "{}", "other": "x"})
    summary = summarise(model.SerializeToString())
    np.testing.assert_array_equal(summary.matrices["T"].values, values)
    assert summary.metadata_props == {"qsenn": "{}", "other": "x"}


def test_unavailable_provider_names_the_available_ones(tmp_path):
    import onnxruntime

    save_toy_model(tmp_path / "m.onnx")
    with pytest.raises(BackendError) as info:
        qsenn_runtime.load(tmp_path / "m.onnx", provider="nosuch")
    for available in onnxruntime.get_available_providers():
        assert available in str(info.value)


def test_engine_compatibility_rule():
    assert engine_mismatch(ENGINE, "10.3.0", "NVIDIA H100 80GB HBM3") is None
    assert engine_mismatch(ENGINE, "10.3.0.26", "nvidia  h100 80gb hbm3") is None
    other_trt = engine_mismatch(ENGINE, "10.4.0", "NVIDIA H100 80GB HBM3")
    assert "built with TensorRT 10.3.0.26 but TensorRT 10.4.0 is installed" in other_trt
    assert "rebuild it here" in other_trt and "GPU is" not in other_trt
    other_gpu = engine_mismatch(ENGINE, "10.3.0", "NVIDIA A100-SXM4-40GB")
    assert "built on a NVIDIA H100 80GB HBM3 but this GPU is a NVIDIA A100-SXM4-40GB" in other_gpu
    both = engine_mismatch(ENGINE, "8.6.1", "Tesla T4")
    assert "TensorRT 8.6.1" in both and "Tesla T4" in both
    other_major = engine_mismatch({**ENGINE, "tensorrt_major": 10}, "11.4.0.106", "NVIDIA H100 80GB HBM3")
    assert "built with TensorRT 10 (10.3.0.26) but TensorRT 11.4.0.106 is installed" in other_major
    assert "never loads in another TensorRT major" in other_major and "\n" not in other_major
    # The recorded major decides, not a version string that says otherwise.
    assert "another TensorRT major" in engine_mismatch(
        {**ENGINE, "tensorrt_major": 11}, "10.3.0.26", "NVIDIA H100 80GB HBM3"
    )
    assert "does not record" in engine_mismatch({"precision": "fp16"}, "10.3.0", "x")


def test_engines_without_tensorrt_are_refused_clearly(tmp_path):
    metadata = toy_metadata().with_engine(ENGINE)
    (tmp_path / "m.engine").write_bytes(pack_engine(metadata, b"not really a plan"))
    read = qsenn_runtime.read_metadata(tmp_path / "m.engine").engine
    assert read == {**ENGINE, "plan_bytes": 17, "plan_sha256": hashlib.sha256(b"not really a plan").hexdigest()}
    with pytest.raises(
        BackendError, match="TensorRT engine; it runs on TensorRT, not on the execution provider 'cuda'"
    ):
        qsenn_runtime.load(tmp_path / "m.engine", provider="cuda")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(
            BackendError,
            match=r"cannot run a TensorRT engine here: TensorRT is not installed \(pip install 'qsenn\[trt\]'",
        ):
            qsenn_runtime.load(tmp_path / "m.engine")
