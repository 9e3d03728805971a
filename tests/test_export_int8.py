"""ONNX INT8 export: quantised backbone, exact float head, int8 T, metadata, verification."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import qsenn_runtime
from qsenn_bench.testing.toy_models import save_checkpoint, sldd_model, ternary_model
from qsenn_export._common import OPSET, fold_source, to_onnx
from qsenn_export.errors import ExportError
from qsenn_export.formats import FORMATS, make_options
from qsenn_export.graph import TERNARY_INITIALIZER
from qsenn_export.int8 import Int8Settings, head_nodes, quantised_head_nodes, quantize_static_model
from qsenn_export.metadata import build_metadata
from qsenn_export.onnx_export import export_onnx
from qsenn_export.source import load_source
from qsenn_export.verify import compare, torch_outputs, verify_onnx
from qsenn_runtime.metadata import METADATA_KEY, OUTPUT_NAMES, ModelMetadata
from qsenn_train.data.layouts import load_synth_splits
from qsenn_train.data.synth import SynthSpec, generate

INT8 = FORMATS["onnx"].tolerances["int8"]
SYNTH = SynthSpec(n_classes=4, train_per_class=6, test_per_class=8, image_size=32, seed=0)
HEAD_OPS = {"ReduceMean", "Sub", "Mul", "Gemm", "MatMul", "Add", "Cast"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny synthetic dataset: the checkpoint verifies on its test images, and its image folder
    serves as the calibration folder."""
    return generate(SYNTH, tmp_path_factory.mktemp("int8") / "data")


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    info = load_synth_splits(dataset)[2]
    return save_checkpoint(ternary_model(num_classes=4), tmp_path_factory.mktemp("ckpt") / "model.pt", info=info)


@pytest.fixture(scope="module")
def exported(checkpoint, dataset):
    lines = []
    path = export_onnx(
        checkpoint, make_options("onnx", int8=True, calib=dataset / "images", verify_count=32), echo=lines.append
    )
    return path, lines


def _metadata(model: onnx.ModelProto) -> ModelMetadata:
    return ModelMetadata.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])


def test_int8_export_sits_beside_the_fp32_model_and_verifies_with_the_int8_tolerance(exported, checkpoint):
    path, lines = exported
    assert path == checkpoint.with_suffix(".int8.onnx") and path.is_file()
    assert any(line.startswith("quantising the backbone to INT8 (QOperator, QUInt8") for line in lines)
    verified = next(line for line in lines if line.startswith("verified on 32 test images of synth"))
    assert verified.endswith("— OK") and "top-5 features" in verified


def test_backbone_is_integer_and_head_is_float(exported):
    model = onnx.load(str(exported[0]))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QLinearConv") >= 10 and "Conv" not in ops
    nodes = {node.name: node for node in model.graph.node}
    head = [nodes[name].op_type for name in head_nodes(model.graph)]
    assert set(head) <= HEAD_OPS and "Gemm" in head and "Cast" in head
    assert quantised_head_nodes(model) == []


def test_T_stays_the_int8_initializer_read_through_a_cast(exported):
    model = onnx.load(str(exported[0]))
    init = next(i for i in model.graph.initializer if i.name == TERNARY_INITIALIZER)
    assert init.data_type == onnx.TensorProto.INT8
    assert np.array_equal(numpy_helper.to_array(init), _metadata(model).weights)
    cast = next(n for n in model.graph.node if list(n.input) == [TERNARY_INITIALIZER])
    assert cast.op_type == "Cast"


def test_metadata_says_int8_and_how(exported):
    quantization = _metadata(onnx.load(str(exported[0]))).quantization
    assert quantization["precision"] == "int8" and quantization["format"] == Int8Settings().format
    assert quantization["activations"] == "QUInt8" and "per-channel" in quantization["weights"]
    assert quantization["calibration_images"] == 4 * (6 + 8) and "head" in quantization["float_nodes"]


def test_runtime_predicts_with_the_exact_identity(exported):
    """The head is float, so the runtime keeps its fp32 identity bound on the INT8 model."""
    model = qsenn_runtime.load(exported[0], "cpu")
    batch = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    predictions = model.predict_tensor(batch)
    for p in predictions:
        explanation = p.explanation
        assert explanation.logit == pytest.approx(
            sum(c.value for c in explanation.contributions) + explanation.bias, abs=1e-4
        )


@pytest.fixture(scope="module")
def fp32_graph(checkpoint):
    source = load_source(checkpoint)
    metadata = build_metadata(source, OPSET)
    images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reference = torch_outputs(source.model, source.head.scale, source.info, images)
    return to_onnx(fold_source(source), metadata, None), metadata, images, reference


def test_quantising_the_head_fails_verification(fp32_graph, tmp_path):
    graph, metadata, images, reference = fp32_graph
    broken = quantize_static_model(graph, images.numpy(), Int8Settings(), nodes_to_exclude=[])
    onnx.helper.set_model_props(broken, {METADATA_KEY: metadata.to_json()})
    assert quantised_head_nodes(broken)
    path = tmp_path / "broken.onnx"
    onnx.save(broken, str(path))
    with pytest.raises(ExportError, match="quantises its head"):
        verify_onnx(path, reference, images, "32 random images", INT8)
    # The runtime refuses it (its int8 head initializer is no T), and the numbers give it away too:
    # c is rounded on its way into T·c + b.
    with pytest.raises(qsenn_runtime.MetadataError, match="outside"):
        qsenn_runtime.load(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"images": images.numpy()})))
    report = compare(reference, outputs, metadata, INT8, "32 random")
    assert not report.ok and any("identity" in failure for failure in report.failures)


def test_a_wrong_T_fails_verification(exported, checkpoint, tmp_path):
    model = onnx.load(str(exported[0]))
    init = next(i for i in model.graph.initializer if i.name == TERNARY_INITIALIZER)
    values = numpy_helper.to_array(init).copy()
    values[0, np.flatnonzero(values[0])[0]] *= -1
    init.CopyFrom(numpy_helper.from_array(values, TERNARY_INITIALIZER))
    path = tmp_path / "wrong-T.onnx"
    onnx.save(model, str(path))
    source = load_source(checkpoint)
    images = torch.rand(8, 3, 32, 32)
    reference = torch_outputs(source.model, source.head.scale, source.info, images)
    with pytest.raises(ExportError, match="differs from the metadata's T"):
        verify_onnx(path, reference, images, "8 random images", INT8)


def test_calibration_folder_must_hold_images(checkpoint, tmp_path):
    with pytest.raises(ExportError, match="no image files"):
        export_onnx(
            checkpoint, make_options("onnx", int8=True, calib=tmp_path, out=tmp_path / "m.onnx"), echo=lambda line: None
        )
    assert not (tmp_path / "m.onnx").exists()


def test_sldd_int8_export_keeps_the_real_weights_float_and_exact(dataset, tmp_path):
    info = load_synth_splits(dataset)[2]
    checkpoint = save_checkpoint(sldd_model(num_classes=4), tmp_path / "sldd.pt", info=info, model_type="sldd")
    lines = []
    path = export_onnx(
        checkpoint, make_options("onnx", int8=True, calib=dataset / "images", verify_count=16), echo=lines.append
    )
    assert any(line.startswith("verified on 16 test images") and line.endswith("— OK") for line in lines)
    model = onnx.load(str(path))
    meta = _metadata(model)
    assert meta.head_kind == "sparse" and meta.quantization["precision"] == "int8"
    assert quantised_head_nodes(model) == [] and "QLinearConv" in {n.op_type for n in model.graph.node}
    # The runtime keeps the fp32 identity bound: the head is float, only the backbone is INT8.
    runtime = qsenn_runtime.load(path, "cpu")
    for prediction in runtime.predict_tensor(np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)):
        explanation = prediction.explanation
        assert explanation.logit == pytest.approx(
            sum(c.value for c in explanation.contributions) + explanation.bias, abs=1e-4
        )
