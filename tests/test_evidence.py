"""The evidence score and the weak-evidence flag: calibration from a model's outputs, the
percentile of a prediction among the calibration images of its class, the metadata section, and
what `predict` (table and JSON) and `explain` show — for ternary and sparse heads alike."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from cli_runner import run_cli
from PIL import Image

import qsenn_runtime
from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata
from qsenn_runtime.evidence import LEVELS, EvidenceCalibration, positive_evidence
from qsenn_runtime.metadata import HEAD_SPARSE, HEAD_TERNARY, MetadataError, ModelMetadata


def test_positive_evidence_sums_only_the_raising_contributions():
    weights = np.array([[1.0, -1.0, 0.0], [0.5, 0.0, 2.0]])
    features = np.array([[2.0, 3.0, 9.0], [-1.0, 5.0, 0.25]])
    # row 0, class 0: +2 (−3 lowers it, feature 2 unused); row 1, class 1: −0.5 (dropped) + 0.5
    np.testing.assert_allclose(positive_evidence(weights, features, np.array([0, 1])), [2.0, 0.5])


def _calibration(scores: np.ndarray) -> EvidenceCalibration:
    """A calibration whose images have exactly these positive evidences (one feature, weight +1)."""
    features = np.stack([scores, np.zeros_like(scores)], axis=1)
    return EvidenceCalibration.fit(np.eye(2), features, features, "test images")


def test_the_percentile_is_the_share_of_calibration_images_below():
    calibration = _calibration(np.linspace(1, 2, 1001))
    weights = np.eye(2)
    middle = calibration.assess(weights, np.array([1.5, 0.0]), 0)
    assert middle.percentile == pytest.approx(50) and not middle.weak and middle.rank == "50th percentile"
    low = calibration.assess(weights, np.array([1.02, 0.0]), 0)
    assert low.percentile == pytest.approx(2) and low.weak and low.text == "weak (2nd percentile)"
    assert calibration.threshold == pytest.approx(1.05)
    assert not calibration.assess(weights, np.array([1.051, 0.0]), 0).weak
    assert calibration.assess(weights, np.array([0.1, 0.0]), 0).percentile == 0
    assert calibration.assess(weights, np.array([3.0, 0.0]), 0).percentile == 100
    # the score is the predicted class's: class 1 reads feature 1 only, which is 0 here
    assert calibration.assess(weights, np.array([1.5, 0.0]), 1).score == 0


def test_about_the_flag_level_of_the_calibration_images_is_flagged():
    scores = np.random.default_rng(0).gamma(2.0, 1.0, 2000)
    calibration = _calibration(scores)
    flagged = [calibration.assess(np.eye(2), np.array([s, 0.0]), 0).weak for s in scores]
    assert np.mean(flagged) == pytest.approx(calibration.weak_below / 100, abs=0.002)


@pytest.mark.parametrize("head_kind", [HEAD_TERNARY, HEAD_SPARSE])
def test_the_calibration_travels_in_the_metadata(head_kind):
    metadata = toy_metadata(head_kind=head_kind)
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (400, metadata.num_features))
    logits = features @ metadata.weights.T.astype(np.float64) + metadata.bias
    calibrated = dataclasses.replace(
        metadata, evidence=EvidenceCalibration.fit(metadata.weights, features, logits, "x")
    )
    back = ModelMetadata.from_json(calibrated.to_json())
    assert back.evidence == calibrated.evidence and len(back.evidence.percentiles) == LEVELS
    expected = positive_evidence(metadata.weights, features, np.argmax(logits, 1))
    assert back.evidence.percentiles[0] == pytest.approx(expected.min())
    assert back.evidence.percentiles[50] == pytest.approx(np.median(expected))
    # absent unless set: older readers see the same JSON as before
    assert (
        "evidence" not in json.loads(metadata.to_json())
        and ModelMetadata.from_json(metadata.to_json()).evidence is None
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"score": "logit"}, "unknown evidence score 'logit'"),
        ({"percentiles": [3, 2, 1]}, "hold 3 values"),
        ({"percentiles": list(range(LEVELS))[::-1]}, "finite and non-decreasing"),
        ({"percentiles": [float("nan")] * LEVELS}, "finite and non-decreasing"),
        ({"weak_below_percentile": 140}, "not in 0..100"),
        ({"images": "many"}, "malformed"),
    ],
)
def test_a_malformed_evidence_section_is_one_metadata_error(change, message):
    metadata = toy_metadata()
    evidence = EvidenceCalibration(tuple(float(v) for v in range(LEVELS)), 10, "x")
    d = json.loads(dataclasses.replace(metadata, evidence=evidence).to_json())
    d["evidence"].update(change)
    with pytest.raises(MetadataError, match=message) as info:
        ModelMetadata.from_json(json.dumps(d))
    assert "\n" not in str(info.value)


def calibrated_toy_model(tmp_path, head_kind: str):
    """A toy ONNX model whose evidence is calibrated on its own predictions of 200 noise images."""
    plain = tmp_path / "plain.onnx"
    metadata = save_toy_model(plain, toy_metadata(head_kind=head_kind))
    model = qsenn_runtime.load(plain)
    rng = np.random.default_rng(2)
    results = model.predict_tensor(rng.random((200, 3, 32, 32), dtype=np.float32))
    features = np.array([r.features for r in results])
    logits = np.array([r.logits for r in results])
    calibration = EvidenceCalibration.fit(metadata.weights, features, logits, "200 noise images")
    path = tmp_path / f"{head_kind}.onnx"
    save_toy_model(path, dataclasses.replace(metadata, evidence=calibration))
    return path, calibration


@pytest.mark.parametrize("head_kind", [HEAD_TERNARY, HEAD_SPARSE])
def test_every_prediction_carries_its_evidence(tmp_path, head_kind):
    path, calibration = calibrated_toy_model(tmp_path, head_kind)
    model = qsenn_runtime.load(path)
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    prediction = model.predict(image)
    expected = positive_evidence(model.metadata.weights, np.array([prediction.features]), [prediction.class_index])
    assert prediction.evidence.score == pytest.approx(expected[0])
    assert prediction.evidence == calibration.assess(
        model.metadata.weights, np.array(prediction.features), prediction.class_index
    )
    assert prediction.to_dict()["evidence"]["percentile"] == prediction.evidence.percentile
    assert model.explain(image).prediction.evidence == prediction.evidence
    # a model exported without calibration reports none
    assert qsenn_runtime.load(tmp_path / "plain.onnx").predict(image).evidence is None


def test_predict_shows_the_evidence_and_explains_a_weak_flag(tmp_path, capsys):
    path, _ = calibrated_toy_model(tmp_path, HEAD_TERNARY)
    black = tmp_path / "black.png"  # no texture at all: the toy's features barely fire
    Image.new("RGB", (32, 32)).save(black)
    code, out, _ = run_cli(capsys, "predict", path, black)
    assert code == 0 and out.splitlines()[0].split()[:4] == ["image", "class", "probability", "evidence"]
    prediction = qsenn_runtime.load(path).predict(str(black))
    assert prediction.evidence.text in out
    assert ("weak evidence: the predicted class's positive evidence" in out) == prediction.evidence.weak
    code, out, _ = run_cli(capsys, "predict", path, black, "--json")
    assert json.loads(out)[0]["evidence"] == prediction.evidence.to_dict()
    code, out, _ = run_cli(capsys, "predict", tmp_path / "plain.onnx", black)
    assert "evidence" not in out.splitlines()[0]


def test_explain_draws_the_evidence_note(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import qsenn_runtime.explain_plot as plot

    path, _ = calibrated_toy_model(tmp_path, HEAD_SPARSE)
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    drawn = []
    original = plot.Figure.supxlabel

    def record(self, text, **kwargs):
        drawn.append((text, kwargs.get("color")))
        return original(self, text, **kwargs)

    monkeypatch.setattr(plot.Figure, "supxlabel", record)
    code, _, err = run_cli(capsys, "explain", path, image, "--out", tmp_path / "x.png")
    assert code == 0 and (tmp_path / "x.png").stat().st_size > 0, err
    evidence = qsenn_runtime.load(path).explain(str(image)).prediction.evidence
    ((text, colour),) = drawn
    assert evidence.rank in " ".join(text.split()) and f"{evidence.score:.3f}" in text
    assert text.startswith("WEAK EVIDENCE") == evidence.weak
    assert colour == (plot.NEGATIVE if evidence.weak else plot.BIAS)
