"""End-to-end `qsenn train` on the tiny recipe: artefacts, the ternary head, resume after a crash."""

import json
import os

import pytest
import torch

from qsenn_train import training
from qsenn_train.checkpoint import load_checkpoint
from qsenn_train.context import RunOptions
from qsenn_train.errors import QsennError
from qsenn_train.pipeline import METRIC_KEYS, evaluate_run, train
from qsenn_train.recipes import resolve_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def run_tiny(data_root, out, **overrides):
    resume = overrides.pop("resume", False)
    recipe = resolve_recipe("tiny", **overrides)
    opts = RunOptions(seed=3, data_root=data_root, out=out, device="cpu", resume=resume)
    return train(recipe, opts, echo=lambda line: None)


def final_logits(run_dir, images):
    model, _ = load_checkpoint(os.path.join(run_dir, "final.pt"))
    with torch.no_grad():
        return model.eval()(images).logits


@pytest.fixture(scope="module")
def qsenn_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run_tiny(data_root, out), out


def test_qsenn_run_writes_every_artefact(qsenn_run):
    result, _ = qsenn_run
    run = result["run_dir"]
    names = set(os.listdir(run))
    assert {
        "config.json",
        "manifest.json",
        "events.jsonl",
        "metrics_dense.json",
        "metrics_qsenn.json",
        "final.pt",
        "timings.json",
    } <= names
    assert any(n.startswith("dense-") and n.endswith(".pt") for n in names)
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["recipe"]["name"] == "tiny" and config["seed"] == 3
    for label in ("dense", "qsenn"):
        assert set(METRIC_KEYS) <= set(result[label])
    timings = json.load(open(os.path.join(run, "timings.json")))
    assert any("feature selection" in k for k in timings) and any("fine-tuning" in k for k in timings)


def test_final_head_is_ternary_with_r_times_k_weights(qsenn_run):
    result, _ = qsenn_run
    model, record = load_checkpoint(os.path.join(result["run_dir"], "final.pt"))
    recipe = resolve_recipe("tiny")
    assert model.is_sparse and len(model.linear.selection) == recipe.n_features
    weight = model.head_weight
    nonzero = weight[weight != 0].abs()
    assert torch.allclose(nonzero, nonzero[0].expand_as(nonzero))  # one shared magnitude a
    assert len(nonzero) <= recipe.n_per_class * model.num_classes
    assert result["qsenn"]["PerClass"] <= recipe.n_per_class
    assert not weight.requires_grad and model.linear.std.requires_grad


def test_evaluate_recomputes_the_same_metrics(qsenn_run):
    result, _ = qsenn_run
    rows = evaluate_run(result["run_dir"], echo=lambda line: None)
    for label in ("dense", "qsenn"):
        for key in METRIC_KEYS:
            assert rows[label][key] == pytest.approx(result[label][key], rel=1e-5, abs=1e-7), (label, key)


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(QsennError, match="not a run directory"):
        evaluate_run(tmp_path)


def test_existing_run_needs_resume(qsenn_run, data_root):
    _, out = qsenn_run
    with pytest.raises(QsennError, match="--resume"):
        run_tiny(data_root, out)


def test_resume_reuses_every_stage(qsenn_run, data_root):
    result, out = qsenn_run
    events = os.path.join(result["run_dir"], "events.jsonl")
    before = sum(1 for _ in open(events))
    again = run_tiny(data_root, out, resume=True)
    new = [json.loads(l)["event"] for l in list(open(events))[before:]]
    assert "epoch" not in new and "selection" not in new and "stage_time" not in new
    assert again["qsenn"] == result["qsenn"]


class Crash(Exception):
    pass


@pytest.mark.parametrize("where", ["dense epoch", "selection", "glm path", "fine-tune"])
def test_crash_then_resume_equals_uninterrupted_run(qsenn_run, data_root, tmp_path, monkeypatch, where):
    """A run killed inside a stage and resumed gives the same model as the uninterrupted run."""
    result, _ = qsenn_run
    images = torch.rand(4, 3, 32, 32)
    expected = final_logits(result["run_dir"], images)

    import qsenn_train.sparsify as sparsify

    calls = {"n": 0}

    def crash_on(original, at_call):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == at_call:
                raise Crash(where)
            return original(*args, **kwargs)

        return wrapper

    if where == "dense epoch":  # the second dense epoch dies
        monkeypatch.setattr(training, "train_epoch", crash_on(training.train_epoch, 2))
    elif where == "selection":
        monkeypatch.setattr(sparsify, "select_features", crash_on(sparsify.select_features, 1))
    elif where == "glm path":  # the path of the second Q-SENN iteration dies
        monkeypatch.setattr(sparsify, "fit_path", crash_on(sparsify.fit_path, 2))
    else:  # the 2nd epoch of the last fine-tuning dies (calls: 2 dense, 3 short fine-tunings, then 2)
        monkeypatch.setattr(training, "train_epoch", crash_on(training.train_epoch, 7))
    with pytest.raises(Crash):
        run_tiny(data_root, tmp_path)
    monkeypatch.undo()
    resumed = run_tiny(data_root, tmp_path, resume=True)
    assert torch.allclose(final_logits(resumed["run_dir"], images), expected, atol=1e-5)


def test_damaged_stage_result_is_recomputed(qsenn_run, data_root, tmp_path):
    """A truncated result is reported in one line, recomputed (never loaded) and comes out the same."""
    first = run_tiny(data_root, tmp_path)
    images = torch.rand(2, 3, 32, 32)
    expected = final_logits(first["run_dir"], images)
    last = os.path.realpath(os.path.join(first["run_dir"], "final.pt"))  # …/iter3/model.pt
    with open(last, "r+b") as fh:
        fh.truncate(100)
    messages = []
    train(
        resolve_recipe("tiny"),
        RunOptions(seed=3, data_root=data_root, out=tmp_path, device="cpu", resume=True),
        echo=messages.append,
    )
    assert sum("is damaged" in m for m in messages) == 1, messages
    assert any("is damaged" in m and "model.pt" in m for m in messages)
    assert torch.allclose(final_logits(first["run_dir"], images), expected, atol=1e-5)


def test_sldd_run_shares_the_dense_model(qsenn_run, data_root):
    result, out = qsenn_run
    sldd = run_tiny(data_root, out, model_type="sldd", resume=True)
    assert sldd["dense"] == result["dense"]
    model, _ = load_checkpoint(os.path.join(sldd["run_dir"], "final.pt"))
    recipe = resolve_recipe("tiny")
    assert model.is_sparse and (model.head_weight != 0).sum() <= recipe.n_per_class * model.num_classes
    assert "metrics_sldd.json" in os.listdir(sldd["run_dir"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_tiny_run_on_cuda_with_amp_and_channels_last(data_root, tmp_path):
    recipe = resolve_recipe("tiny")
    opts = RunOptions(seed=3, data_root=data_root, out=tmp_path, device="cuda", amp=True, channels_last=True)
    result = train(recipe, opts, echo=lambda line: None)
    model, _ = load_checkpoint(os.path.join(result["run_dir"], "final.pt"))
    weight = model.head_weight
    assert len(weight[weight != 0].abs().unique()) == 1


def test_amp_and_channels_last_are_refused_on_the_cpu(data_root, tmp_path):
    opts = RunOptions(seed=3, data_root=data_root, out=tmp_path, device="cpu", amp=True)
    with pytest.raises(QsennError, match="need --device cuda"):
        train(resolve_recipe("tiny"), opts, echo=lambda line: None)
