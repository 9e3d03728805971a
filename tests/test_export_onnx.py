"""ONNX export: exact fold, int8 T in the file, metadata, batch modes, verification catches errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import qsenn_runtime
from qsenn_bench.testing.toy_models import ABSENT_DATASET, fake_run, save_checkpoint, sldd_model, ternary_model
from qsenn_export import onnx_export
from qsenn_export._common import OPSET, fold_source, to_onnx
from qsenn_export.errors import ExportError
from qsenn_export.fold import read_head
from qsenn_export.formats import FORMATS, make_options
from qsenn_export.graph import TERNARY_INITIALIZER
from qsenn_export.metadata import build_metadata
from qsenn_export.onnx_export import export_onnx
from qsenn_export.source import load_source
from qsenn_export.verify import compare, torch_outputs, verify_onnx
from qsenn_runtime.metadata import METADATA_KEY, ModelMetadata

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
    assert np.array_equal(values, _metadata(model).weights)
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
    head = read_head(model, "ckpt")
    graph_input = onnx.load(str(exported[0])).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        images = torch.rand(batch, 3, 32, 32)
        expected = torch_outputs(model, head.scale, ABSENT_DATASET, images)
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
    reference = torch_outputs(source.model, source.head.scale, source.info, images)
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
    wrong = ModelMetadata(**{**metadata.__dict__, "weights": metadata.weights[::-1].copy()})
    onnx.helper.set_model_props(model, {METADATA_KEY: wrong.to_json()})
    with pytest.raises(ExportError, match="does not load in qsenn_runtime: .*differs from the metadata's T"):
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
    metadata_t = ModelMetadata(**{**metadata.__dict__, "weights": metadata.weights.T.copy()})
    onnx.helper.set_model_props(graph, {METADATA_KEY: metadata_t.to_json()})
    images = torch.rand(6, 3, 32, 32)
    reference = torch_outputs(source.model, source.head.scale, source.info, images)
    onnx.save(graph, str(tmp_path / "t.onnx"))
    report = verify_onnx(tmp_path / "t.onnx", reference, images, "6 random images", TOLERANCE)
    assert not report.ok and any("Δlogit" in f for f in report.failures)


@pytest.mark.parametrize(
    "props, message",
    [
        ({}, "without qsenn metadata"),
        ({METADATA_KEY: "{not json"}, "not valid JSON"),
        ({METADATA_KEY: json.dumps({"format": "qsenn", "format_version": 1})}, "malformed"),
    ],
)
def test_missing_or_malformed_metadata_is_detected(parts, graph, tmp_path, props, message):
    model = copy.deepcopy(graph)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    with pytest.raises(ExportError, match=message):
        _verify(model, parts, tmp_path / "m.onnx")


def test_failed_verification_leaves_no_good_looking_file(checkpoint, tmp_path, monkeypatch):
    def wrong_fold(source):
        folded = fold_source(source)
        folded.feature_scale *= 1.01
        return folded

    monkeypatch.setattr(onnx_export, "fold_source", wrong_fold)
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="verification failed.*kept as .*model.failed.onnx") as exc:
        export_onnx(checkpoint, make_options("onnx", out=out, verify_count=4), echo=lambda line: None)
    assert "\n" not in str(exc.value)
    assert not out.exists() and (tmp_path / "model.failed.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.failed.onnx"]  # no temporary left


# ---- SLDD: a sparse head of real weights -----------------------------------------------------------


@pytest.fixture(scope="module")
def sldd_checkpoint(tmp_path_factory):
    return save_checkpoint(sldd_model(), tmp_path_factory.mktemp("sldd") / "sldd.pt", model_type="sldd")


def test_sldd_model_exports_its_real_weights_and_verifies(sldd_checkpoint):
    lines = []
    path = export_onnx(sldd_checkpoint, make_options("onnx", verify_count=6), echo=lines.append)
    assert any(line.startswith("verified on 6 ") and line.endswith("— OK") for line in lines)
    model = onnx.load(str(path))
    meta = _metadata(model)
    source = sldd_model()
    assert meta.head_kind == "sparse" and meta.model_type == "sldd" and meta.scale == 1.0
    np.testing.assert_array_equal(meta.weights, source.head_weight.detach().numpy())
    assert not any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    floats = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert any(np.array_equal(f, meta.weights) or np.array_equal(f, meta.weights.T) for f in floats)
    # The runtime explains with the real weights: contributions W[k, j]·c_j that sum to the logit.
    prediction = qsenn_runtime.load(path).predict(np.random.default_rng(0).random((32, 32, 3)).astype(np.float32))
    explanation = prediction.explanation
    weights = {c.weight for c in explanation.contributions}
    assert weights and not weights <= {1.0, -1.0}
    assert sum(c.value for c in explanation.contributions) + explanation.bias == pytest.approx(
        explanation.logit, abs=1e-5
    )


@pytest.fixture(scope="module")
def sldd_parts(sldd_checkpoint):
    source = load_source(sldd_checkpoint)
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    reference = torch_outputs(source.model, source.head.scale, source.info, images)
    metadata = build_metadata(source, OPSET)
    return source, metadata, images, reference


def test_sldd_weight_perturbed_in_the_graph_fails_verification(sldd_parts, tmp_path):
    source, metadata, *_ = sldd_parts
    folded = fold_source(source)
    k, j = np.argwhere(metadata.weights != 0)[0]
    with torch.no_grad():
        folded.classifier.weight[k, j] *= 1.01
    with pytest.raises(ExportError, match="sparse head weights .* are not in the graph"):
        _verify(to_onnx(folded, metadata, None), sldd_parts, tmp_path / "m.onnx")


def test_sldd_weight_perturbed_in_the_metadata_fails_verification(sldd_parts, tmp_path):
    source, metadata, images, reference = sldd_parts
    graph = to_onnx(fold_source(source), metadata, None)
    weights = metadata.weights.copy()
    k, j = np.argwhere(weights != 0)[0]
    weights[k, j] *= 1.01
    onnx.helper.set_model_props(
        graph, {METADATA_KEY: ModelMetadata(**{**metadata.__dict__, "weights": weights}).to_json()}
    )
    with pytest.raises(ExportError, match="sparse head weights .* are not in the graph"):
        _verify(graph, sldd_parts, tmp_path / "m.onnx")
    # Where the graph is not compared (a stored copy elsewhere), the identity check catches it.
    wrong = ModelMetadata(**{**metadata.__dict__, "weights": weights})
    report = compare(reference, reference, wrong, TOLERANCE, "same outputs")
    assert any("identity" in f for f in report.failures)


def test_real_valued_head_of_a_qsenn_checkpoint_is_refused(tmp_path):
    checkpoint = save_checkpoint(sldd_model(), tmp_path / "q.pt", model_type="qsenn")
    with pytest.raises(ExportError, match="Q-SENN head must be ternary"):
        export_onnx(checkpoint, make_options("onnx"), echo=lambda line: None)
    assert not (tmp_path / "q.onnx").exists()


# ---- run directories ------------------------------------------------------------------------------


def test_runs_folder_exports_the_newest_run_to_run_type_onnx_with_its_metrics(tmp_path):
    run = fake_run(tmp_path / "resnet10" / "synth" / "7", {"qsenn": ternary_model()})
    path = export_onnx(tmp_path, make_options("onnx", verify=False), echo=lambda line: None)  # a runs folder
    assert path == run / "qsenn.onnx"
    meta = _metadata(onnx.load(str(path)))
    assert meta.provenance["metrics"]["Accuracy"] == 0.5
    assert meta.model_type == "qsenn" and meta.head_kind == "ternary"


def test_run_with_both_types_needs_model_type_and_exports_each(tmp_path):
    run = fake_run(tmp_path / "run", {"qsenn": ternary_model(), "sldd": sldd_model()})
    with pytest.raises(
        ExportError, match=r"holds a finished qsenn and a sldd model; pick one with --model-type qsenn\|sldd"
    ):
        export_onnx(run, make_options("onnx", verify=False), echo=lambda line: None)
    kinds = {}
    for model_type in ("sldd", "qsenn"):
        path = export_onnx(run, make_options("onnx", verify=False, model_type=model_type), echo=lambda line: None)
        assert path == run / f"{model_type}.onnx"
        kinds[model_type] = _metadata(onnx.load(str(path))).head_kind
    assert kinds == {"qsenn": "ternary", "sldd": "sparse"}


def test_registered_checkpoint_path_keeps_its_model_type(tmp_path):
    run = fake_run(tmp_path / "run", {"qsenn": ternary_model(), "sldd": sldd_model()})
    path = export_onnx(run / "final_sldd.pt", make_options("onnx", verify=False), echo=lambda line: None)
    meta = _metadata(onnx.load(str(path)))
    assert meta.model_type == "sldd" and meta.provenance["metrics"]["model"].startswith("sldd_")


def test_damaged_run_checkpoint_is_refused(tmp_path):
    run = fake_run(tmp_path / "run", {"sldd": sldd_model()})
    checkpoint = next(run.glob("sldd_*/model.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:-10])
    with pytest.raises(ExportError, match="missing or damaged .*sha256"):
        export_onnx(run, make_options("onnx"), echo=lambda line: None)
    assert not (run / "sldd.onnx").exists()


def test_unfinished_run_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"seed": 1, "dataset": {}}))
    with pytest.raises(ExportError, match="has no finished model"):
        export_onnx(tmp_path, make_options("onnx"), echo=lambda line: None)
