"""ONNX export: exact fold, int8 T in the file, metadata, batch modes, verification catches errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_models import ABSENT_DATASET, fake_run, save_checkpoint, ternary_model
from onnx import numpy_helper

from qsenn_export import onnx_export
from qsenn_export.fold import TERNARY_INITIALIZER, ternary_head
from qsenn_export.formats import FORMATS, make_options
from qsenn_export.metadata import build_metadata, load_source
from qsenn_export.onnx_export import OPSET, export_onnx, fold_source, to_onnx
from qsenn_export.verify import compare, torch_outputs, verify_onnx
from qsenn_runtime.metadata import METADATA_KEY, ModelMetadata
from qsenn_train.errors import QsennError

TOLERANCE = FORMATS["onnx"].tolerances["fp32"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(ternary_model(), tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def exported(checkpoint):
    lines = []
    path = export_onnx(checkpoint, make_options("onnx", verify_count=8), echo=lines.append)
    return path, lines


def _metadata(model: onnx.ModelProto) -> ModelMetadata:
    return ModelMetadata.from_json({p.key: p.value for p in model.metadata_props}[METADATA_KEY])


def _session_outputs(path, images: np.ndarray) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(["logits", "features", "feature_maps"], session.run(None, {"images": images})))


def test_export_writes_next_to_the_checkpoint_and_reports_verification(exported, checkpoint):
    path, lines = exported
    assert path == checkpoint.with_suffix(".onnx") and path.is_file()
    verified = next(line for line in lines if line.startswith("verified on 8 "))
    assert verified.endswith("— OK") and "argmax agreement 100.00%" in verified
    assert any("GMACs per image" in line for line in lines)


def test_T_is_an_int8_initializer_in_the_file(exported):
    model = onnx.load(str(exported[0]))
    init = next(i for i in model.graph.initializer if i.name == TERNARY_INITIALIZER)
    assert init.data_type == onnx.TensorProto.INT8
    values = numpy_helper.to_array(init)
    assert set(np.unique(values)) <= {-1, 0, 1}
    assert np.array_equal(values, _metadata(model).ternary)
    # No float copy of T is left beside it.
    floats = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert not any(f.shape == values.shape and np.array_equal(f, values) for f in floats)


def test_metadata_is_complete_and_parseable(exported, checkpoint):
    model = onnx.load(str(exported[0]))
    meta = _metadata(model)
    source = ternary_model()
    assert meta.class_names == ABSENT_DATASET.class_names
    assert [f.channel for f in meta.features] == source.linear.selection.tolist()
    assert meta.features[2].name == "feature 2"
    assert meta.scale == pytest.approx(0.37)
    np.testing.assert_array_equal(meta.bias, source.head_bias.detach().numpy())
    assert (meta.input.size, meta.input.resize_mode, meta.input.mean) == (32, "shorter", ABSENT_DATASET.mean)
    assert meta.provenance["arch"] == "resnet10" and meta.provenance["seed"] == 7
    assert meta.provenance["dataset"] == "CUB2011" and meta.provenance["recipe"] == "tiny"
    assert meta.exporter["opset"] == OPSET >= 17 and "onnxruntime" in meta.exporter
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == OPSET
    onnx.checker.check_model(model, full_check=True)


def test_dynamic_batch_matches_torch(exported):
    model = ternary_model()
    head = ternary_head(model, "ckpt")
    graph_input = onnx.load(str(exported[0])).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        images = torch.rand(batch, 3, 32, 32)
        expected = torch_outputs(model, head.magnitude, ABSENT_DATASET, images)
        got = _session_outputs(exported[0], images.numpy())
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)


def test_static_batch(checkpoint, tmp_path):
    out = tmp_path / "static.onnx"
    lines = []
    # 3 images through a batch-2 graph: the last batch is padded.
    export_onnx(checkpoint, make_options("onnx", out=out, batch=2, verify_count=3), echo=lines.append)
    assert "verified on 3 " in "\n".join(lines)
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):
        session.run(None, {"images": np.zeros((3, 3, 32, 32), np.float32)})


# ---- verification catches a wrong fold, graph or metadata --------------------------------------


@pytest.fixture(scope="module")
def parts(checkpoint):
    source = load_source(checkpoint)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    reference = torch_outputs(source.model, source.head.magnitude, source.info, images)
    return source, build_metadata(source, OPSET), images, reference


@pytest.fixture(scope="module")
def graph(parts):
    source, metadata, *_ = parts
    return to_onnx(fold_source(source), metadata, None)


def _verify(model: onnx.ModelProto, parts, path):
    _, _, images, reference = parts
    onnx.save(model, str(path))
    return verify_onnx(path, reference, images, "6 random images", TOLERANCE)


def test_correct_fold_passes(parts, graph, tmp_path):
    report = _verify(graph, parts, tmp_path / "m.onnx")
    assert report.ok and report.logit_rel < 1e-6 and report.identity_rel < 1e-6


def test_perturbed_mu_in_the_graph_fails(parts, tmp_path):
    source, metadata, *_ = parts
    folded = fold_source(source)
    folded.feature_mean += 0.05
    report = _verify(to_onnx(folded, metadata, None), parts, tmp_path / "m.onnx")
    assert not report.ok
    assert any("Δlogit" in f for f in report.failures) and any("Δfeature" in f for f in report.failures)
    assert "FAILED" in report.line()


def test_permuted_T_in_the_metadata_fails(parts, graph, tmp_path):
    metadata = parts[1]
    model = copy.deepcopy(graph)
    wrong = ModelMetadata(**{**metadata.__dict__, "ternary": metadata.ternary[::-1].copy()})
    onnx.helper.set_model_props(model, {METADATA_KEY: wrong.to_json()})
    with pytest.raises(QsennError, match="differs from the metadata"):
        _verify(model, parts, tmp_path / "m.onnx")
    # The identity check alone catches it as well.
    report = compare(parts[3], parts[3], wrong, TOLERANCE, "same outputs")
    assert any("identity" in f for f in report.failures)


def test_transposed_T_in_the_graph_fails(tmp_path):
    model = ternary_model(num_classes=5, n_features=5, per_class=2, seed=3)  # square T
    checkpoint = save_checkpoint(model, tmp_path / "square.pt")
    source = load_source(checkpoint)
    metadata = build_metadata(source, OPSET)
    graph = to_onnx(fold_source(source), metadata, None)
    init = next(i for i in graph.graph.initializer if i.name == TERNARY_INITIALIZER)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).T.copy(), TERNARY_INITIALIZER))
    # Keep metadata and graph consistent with each other so that only the numbers can tell.
    metadata_t = ModelMetadata(**{**metadata.__dict__, "ternary": metadata.ternary.T.copy()})
    onnx.helper.set_model_props(graph, {METADATA_KEY: metadata_t.to_json()})
    images = torch.rand(6, 3, 32, 32)
    reference = torch_outputs(source.model, source.head.magnitude, source.info, images)
    onnx.save(graph, str(tmp_path / "t.onnx"))
    report = verify_onnx(tmp_path / "t.onnx", reference, images, "6 random images", TOLERANCE)
    assert not report.ok and any("Δlogit" in f for f in report.failures)


@pytest.mark.parametrize(
    "props, message",
    [
        ({}, "carries no 'qsenn' metadata"),
        ({METADATA_KEY: "{not json"}, "not valid JSON"),
        ({METADATA_KEY: json.dumps({"format": "qsenn", "format_version": 1})}, "malformed"),
    ],
)
def test_missing_or_malformed_metadata_is_detected(parts, graph, tmp_path, props, message):
    model = copy.deepcopy(graph)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    with pytest.raises(QsennError, match=message):
        _verify(model, parts, tmp_path / "m.onnx")


def test_failed_verification_leaves_no_good_looking_file(checkpoint, tmp_path, monkeypatch):
    def wrong_fold(source):
        folded = fold_source(source)
        folded.feature_scale *= 1.01
        return folded

    monkeypatch.setattr(onnx_export, "fold_source", wrong_fold)
    out = tmp_path / "model.onnx"
    with pytest.raises(QsennError, match="verification failed.*kept as .*model.failed.onnx") as exc:
        export_onnx(checkpoint, make_options("onnx", out=out, verify_count=4), echo=lambda line: None)
    assert "\n" not in str(exc.value)
    assert not out.exists() and (tmp_path / "model.failed.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.failed.onnx"]  # no temporary left


def test_sldd_checkpoint_is_refused(tmp_path):
    model = ternary_model()
    with torch.no_grad():
        model.linear.layer.weight[0, :] *= torch.linspace(0.5, 2.0, model.linear.layer.weight.shape[1])
    checkpoint = save_checkpoint(model, tmp_path / "sldd.pt")
    with pytest.raises(QsennError, match="SLDD"):
        export_onnx(checkpoint, make_options("onnx"), echo=lambda line: None)
    assert not (tmp_path / "sldd.onnx").exists()


# ---- run directories ------------------------------------------------------------------------------


def test_run_directory_exports_to_run_model_onnx_with_its_metrics(tmp_path):
    run = fake_run(tmp_path / "resnet10" / "synth" / "7", ternary_model())
    path = export_onnx(tmp_path, make_options("onnx", verify=False), echo=lambda line: None)  # a runs folder
    assert path == run / "model.onnx"
    meta = _metadata(onnx.load(str(path)))
    assert meta.provenance["metrics"] == {"Accuracy": 0.5, "NFfeatures": 6}
    assert meta.model_type == "qsenn"


def test_sldd_run_is_refused(tmp_path):
    run = fake_run(tmp_path / "run", ternary_model(), model_type="sldd")
    with pytest.raises(QsennError, match="sldd model.*Q-SENN models only"):
        export_onnx(run, make_options("onnx"), echo=lambda line: None)


def test_unfinished_run_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(QsennError, match="has no final.pt"):
        export_onnx(tmp_path, make_options("onnx"), echo=lambda line: None)
