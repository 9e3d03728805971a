"""End-to-end `qsenn train` on the tiny recipe: artefacts, the ternary head, resume after a crash."""

import json
import os

import numpy as np
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
    assert config["recipes"]["qsenn"]["name"] == "tiny" and config["seed"] == 3
    for label in ("dense", "qsenn"):
        assert set(METRIC_KEYS) <= set(result[label])
    timings = json.load(open(os.path.join(run, "timings.json")))
    steps = {(t["round"], t["step"]) for t in timings if t["scope"].startswith("qsenn_6_2-")}
    assert {("iter0", "feature selection"), ("iter3", "fine-tuning")} <= steps
    assert any(t["scope"].startswith("dense-") and t["step"] == "dense training" for t in timings)


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


def test_evaluate_reads_config_json_and_never_writes_it(qsenn_run, tmp_path):
    result, _ = qsenn_run
    config = os.path.join(result["run_dir"], "config.json")
    before = open(config, "rb").read()
    # Another data root (the embedded dataset is generated there) and the recorded one.
    elsewhere = evaluate_run(result["run_dir"], tmp_path / "elsewhere", device="cpu", model_type="qsenn", echo=print)
    assert elsewhere["qsenn"]["Accuracy"] == pytest.approx(result["qsenn"]["Accuracy"])
    assert open(config, "rb").read() == before


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


def _exported_head(run_dir, model_type):
    from qsenn_export import export
    from qsenn_export.formats import make_options
    from qsenn_runtime import read_metadata

    path = export(run_dir, make_options("onnx", verify=False, model_type=model_type), echo=lambda line: None)
    metadata = read_metadata(path)
    return path, metadata.head_kind, metadata.weights, metadata.bias


def test_both_model_types_in_either_order_register_and_export_the_same_models(qsenn_run, data_root, tmp_path):
    """Q-SENN then SLDD, or SLDD then Q-SENN, in one run directory: each type keeps its own final
    model and record, and both export the same models whatever the order."""
    from qsenn_export.errors import ExportError
    from qsenn_train.run import Run

    result, out = qsenn_run
    run_tiny(data_root, out, model_type="sldd", resume=True)  # order A: Q-SENN first (the fixture)
    run_tiny(data_root, tmp_path, model_type="sldd")  # order B: SLDD first, then Q-SENN
    run_tiny(data_root, tmp_path, resume=True)
    runs = {"qsenn first": result["run_dir"], "sldd first": os.path.join(tmp_path, "resnet10", "synth", "3")}
    heads = {}
    for order, run_dir in runs.items():
        run = Run(run_dir)
        assert run.model_types == ("qsenn", "sldd")
        for model_type in run.model_types:
            entry = run.entry(model_type)
            assert entry.recipe["model_type"] == model_type and entry.checkpoint.startswith(f"{model_type}_6_2-")
            assert os.path.realpath(os.path.join(run_dir, f"final_{model_type}.pt")) == os.path.realpath(
                os.path.join(run_dir, entry.checkpoint)
            )
        with pytest.raises(ExportError, match="pick one with --model-type qsenn|sldd"):
            _exported_head(run_dir, None)
        for model_type in ("qsenn", "sldd"):
            path, kind, weights, bias = _exported_head(run_dir, model_type)
            assert path.name == f"{model_type}.onnx" and kind == {"qsenn": "ternary", "sldd": "sparse"}[model_type]
            heads[order, model_type] = (weights, bias)
    for model_type in ("qsenn", "sldd"):
        for a, b in zip(heads["qsenn first", model_type], heads["sldd first", model_type]):
            assert np.array_equal(a, b), model_type


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


def test_a_result_saved_damaged_is_named_and_recomputed_on_resume(qsenn_run, data_root, tmp_path, capsys):
    """An empty dense checkpoint whose manifest entry matches it (written so on a full disk):
    `qsenn train --resume` names the file and what is wrong, recomputes it, and finishes; it never
    answers "interrupted … rerun with --resume" (which rerunning would repeat forever)."""
    import shutil

    from cli_runner import run_cli

    from qsenn_train.rundir import MANIFEST, sha256_file

    result, out = qsenn_run
    copy = tmp_path / "runs"
    shutil.copytree(out, copy, symlinks=True)
    run_dir = copy / os.path.relpath(result["run_dir"], out)
    dense = next(run_dir.glob("dense-*.pt"))
    dense.write_bytes(b"")
    manifest = json.loads((run_dir / MANIFEST).read_text())
    manifest[dense.name] = {"sha256": sha256_file(dense), "bytes": 0}
    (run_dir / MANIFEST).write_text(json.dumps(manifest))
    args = ["train", "--recipe", "tiny", "--seed", "3", "--data-root", data_root, "--out", copy, "--device", "cpu"]

    code, stdout, stderr = run_cli(capsys, *args, "--resume")
    assert code == 0 and "rerun with --resume" not in stdout + stderr, stderr
    warning = f"warning: {dense} is empty (0 bytes: an interrupted download or copy, or a full disk)"
    assert [line for line in stdout.splitlines() if "warning" in line] == [
        f"{warning} although its manifest entry matches (saved damaged); recomputing it"
    ]
    assert dense.stat().st_size > 0
    code, stdout, _ = run_cli(capsys, *args, "--resume")  # recomputed for good: reused now, silently
    assert code == 0 and "warning" not in stdout and f"dense model: reusing {dense}" in stdout


def test_an_end_of_file_deep_in_a_command_is_not_called_an_interruption(monkeypatch, capsys, tmp_path):
    """click turns any EOFError into Abort; the CLI must not answer "interrupted … --resume"."""
    from cli_runner import run_cli

    import qsenn_train.pipeline as pipeline

    def read_empty_file(*args, **kwargs):
        raise EOFError

    monkeypatch.setattr(pipeline, "train", read_empty_file)
    code, _, stderr = run_cli(capsys, "train", "--recipe", "tiny", "--seed", "0", "--out", tmp_path)
    assert code == 2
    assert stderr.strip() == (
        "error: a file ended unexpectedly (EOFError): one this command read is empty or truncated"
    )


def test_fdl_beta_reaches_the_recipe_and_keys_the_dense_model(capsys, tmp_path):
    from cli_runner import run_cli

    from qsenn_train.pipeline import dense_key

    off = resolve_recipe("tiny", fdl_beta=0.0)
    assert off.fdl_beta == 0.0 and resolve_recipe("tiny").fdl_beta == 0.196
    assert dense_key(off, 0) != dense_key(resolve_recipe("tiny"), 0)  # a new weight never reuses a dense model
    for bad in ("-0.5", "nan"):
        code, _, err = run_cli(capsys, "train", "--recipe", "tiny", "--fdl-beta", bad, "--out", tmp_path / "runs")
        assert code != 0 and "--fdl-beta must be ≥ 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
