"""qsenn_runtime.Model on toy ONNX models: predictions, explanations, the identity check,
batching, bad inputs in a batch, thread safety."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import qsenn_runtime
from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata
from qsenn_runtime import IdentityCheckError, InputError, Prediction, PredictionError
from qsenn_runtime.model import ATOL, FP32_RTOL, Model


def photo(seed: int, width: int = 50, height: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.onnx"
    save_toy_model(path, toy_metadata(num_classes=5, num_features=7))
    return path


@pytest.fixture(scope="module")
def model(toy_path):
    return qsenn_runtime.load(toy_path, "cpu")


def test_prediction_is_an_exact_explained_sum(model):
    prediction = model.predict(photo(0), classes=["class 1", 3])
    metadata = model.metadata
    logits = np.array(prediction.logits)
    assert prediction.class_index == int(np.argmax(logits))
    assert prediction.class_name == metadata.class_names[prediction.class_index]
    assert prediction.probability == pytest.approx(np.exp(logits).max() / np.exp(logits).sum())
    explained = {e.class_index for e in prediction.explanations}
    assert explained == {prediction.class_index, 1, 3}
    assert prediction.explanation.class_index == prediction.class_index
    for explanation in prediction.explanations:
        k = explanation.class_index
        used = np.flatnonzero(metadata.weights[k])
        assert sorted(c.feature for c in explanation.contributions) == used.tolist()
        magnitudes = [abs(c.value) for c in explanation.contributions]
        assert magnitudes == sorted(magnitudes, reverse=True)
        for c in explanation.contributions:
            assert c.weight == metadata.weights[k, c.feature]
            assert c.value == pytest.approx(c.weight * prediction.features[c.feature])
            assert (c.channel, c.name) == (metadata.features[c.feature].channel, metadata.features[c.feature].name)
        total = sum(c.value for c in explanation.contributions) + explanation.bias
        assert total == pytest.approx(explanation.logit, rel=1e-5, abs=1e-6)
        assert explanation.bias == pytest.approx(float(metadata.bias[k]))
    assert prediction.explanation_for("class 1").class_index == 1
    with pytest.raises(KeyError):
        prediction.explanation_for(min(set(range(5)) - explained))


def test_to_dict_is_json(model):
    prediction = model.predict(photo(1))
    data = json.loads(json.dumps(prediction.to_dict(top_k=1)))
    assert data["class_name"] == prediction.class_name
    assert len(data["explanations"][0]["contributions"]) == 1
    assert set(data["explanations"][0]["contributions"][0]) == {
        "feature",
        "channel",
        "name",
        "weight",
        "activation",
        "value",
        "description",
    }
    assert PredictionError("x", "x: broken").to_dict() == {"source": "x", "error": "x: broken"}


def test_unknown_class_is_refused(model):
    with pytest.raises(qsenn_runtime.QsennRuntimeError, match="unknown class 'no such'"):
        model.predict(photo(0), classes=["no such"])
    with pytest.raises(qsenn_runtime.QsennRuntimeError, match="unknown class 9"):
        model.predict(photo(0), classes=[9])


def test_batch_keeps_order_and_reports_bad_inputs(model, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    nan = np.full((8, 8, 3), 0.5)
    nan[0, 0, 0] = np.nan
    inputs = [
        photo(2),
        tmp_path / "missing.png",
        photo(3),
        b"\x89PNG\r\n",
        tmp_path / "notes.txt",
        np.zeros((4, 4), np.int32),
        nan,
        photo(4),
    ]
    results = model.predict(inputs, batch_size=2)
    assert [r.ok for r in results] == [True, False, True, False, False, False, False, True]
    for good, seed in zip([results[0], results[2], results[7]], (2, 3, 4)):
        assert isinstance(good, Prediction)
        assert good.to_dict() == model.predict(photo(seed)).to_dict() | {"source": good.source}
    for bad in results:
        if not bad.ok:
            assert isinstance(bad, PredictionError) and "\n" not in bad.error
            assert bad.error.startswith(bad.source + ": ")
    assert results[1].source.endswith("missing.png") and "no such file" in results[1].error
    assert results[6].source == "<array #6>" and "NaN" in results[6].error
    with pytest.raises(InputError, match="not an image"):
        model.predict(b"\x00" * 16)


def test_batch_size_does_not_change_results(model):
    images = [photo(seed) for seed in range(5)]
    one_by_one = model.predict(images, batch_size=1)
    together = model.predict(images, batch_size=16)
    for a, b in zip(one_by_one, together):
        assert a.class_index == b.class_index
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("static_batch", [1, 3])
def test_static_batch_graphs(tmp_path, static_batch):
    path = tmp_path / "static.onnx"
    save_toy_model(path, batch=static_batch)
    static = qsenn_runtime.load(path)
    assert static.backend.batch_range == (static_batch, static_batch)
    results = static.predict([photo(seed) for seed in range(4)])
    dynamic_path = tmp_path / "dynamic.onnx"
    save_toy_model(dynamic_path)
    expected = qsenn_runtime.load(dynamic_path).predict([photo(seed) for seed in range(4)])
    for a, b in zip(results, expected):
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-6)


def test_predict_tensor_matches_predict_and_flags_nan_rows(model):
    from qsenn_runtime.preprocess import load_rgb, resize_and_crop, to_chw

    batch = np.stack([to_chw(resize_and_crop(load_rgb(photo(s), "x"), model.metadata.input)) for s in range(3)])
    batch[1, 0, 0, 0] = np.nan
    results = model.predict_tensor(batch, sources=["a", "b", "c"])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == "b: tensor row contains NaN or infinity"
    assert results[2].logits == model.predict(photo(2)).logits
    with pytest.raises(InputError, match="expected N×3×32×32"):
        model.predict_tensor(batch[:, :, :16])


def test_explain_returns_maps_and_the_crop(model):
    explained = model.explain(Image.fromarray(photo(5, 64, 48)), class_="class 2")
    assert explained.class_index == 2 and explained.explanation.class_index == 2
    assert explained.image.shape == (32, 32, 3) and explained.image.dtype == np.uint8
    assert explained.feature_maps.shape == (7, 16, 16)
    same = model.predict(Image.fromarray(photo(5, 64, 48)), classes=[2])
    assert explained.prediction.to_dict() == same.to_dict()


def test_a_broken_head_fails_the_identity_check(tmp_path):
    metadata = toy_metadata()
    path = tmp_path / "broken.onnx"
    save_toy_model(path, metadata, graph_bias=metadata.bias + np.float32(0.25))
    broken = qsenn_runtime.load(path)
    with pytest.raises(IdentityCheckError, match=r"broken.onnx is broken: .* logit of class 0"):
        broken.predict(photo(0))
    with pytest.raises(IdentityCheckError):  # a batch raises too: the model, not an input, is bad
        broken.predict([photo(0), photo(1)])


class ScriptedBackend:
    """Returns the given outputs, to test the identity check's tolerance without a graph."""

    name, precision, head_precision, batch_range = "scripted", "fp32", "fp32", (1, None)

    def __init__(self, logits, features):
        self.outputs = {
            "logits": np.atleast_2d(logits).astype(np.float32),
            "features": np.atleast_2d(features).astype(np.float32),
        }

    def run(self, batch, names):
        return [self.outputs[name] for name in names]


def test_identity_tolerance_scales_with_the_terms():
    metadata = toy_metadata(num_classes=2, num_features=3)
    features = np.array([300.0, -200.0, 50.0], dtype=np.float32)
    exact = features.astype(np.float64) @ metadata.weights.T.astype(np.float64) + metadata.bias
    scale = np.abs(features) @ np.abs(metadata.weights.T) + np.abs(metadata.bias)
    tensor = np.zeros((1, 3, 32, 32), np.float32)
    for factor, ok in ((0.5, True), (2.0, False)):
        logits = exact + factor * (FP32_RTOL * scale + ATOL)
        model = Model(metadata, ScriptedBackend(logits, features), source="m", batch_size=4)
        if ok:
            assert model.predict_tensor(tensor)[0].ok
        else:
            with pytest.raises(IdentityCheckError, match="m is broken"):
                model.predict_tensor(tensor)
    nan_logits = exact.copy()
    nan_logits[0] = np.nan
    model = Model(metadata, ScriptedBackend(nan_logits, features), source="m", batch_size=4)
    with pytest.raises(IdentityCheckError, match="NaN or infinite outputs"):
        model.predict_tensor(tensor)


def test_one_model_serves_many_threads(model):
    jobs = [[photo(10 * job + i) for i in range(3)] for job in range(8)]
    sequential = [[r.to_dict() for r in model.predict(images)] for images in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda images: [r.to_dict() for r in model.predict(images)], jobs * 2))
    assert concurrent == sequential * 2


def test_global_explanation(model):
    rules = model.global_explanation()
    assert len(rules) == 5
    for rule in rules:
        row = model.metadata.weights[rule.class_index]
        assert [f.index for f in rule.positive] == np.flatnonzero(row > 0).tolist()
        assert [f.index for f in rule.negative] == np.flatnonzero(row < 0).tolist()
