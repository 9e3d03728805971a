"""The glm-saga path (spec §6): fast feeding and the matrix-form solver against the package."""

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from glm_saga import elasticnet

from qsenn_train.context import RunOptions
from qsenn_train.errors import QsennError
from qsenn_train.features import FeatureSet, FeatureStats
from qsenn_train.glm_path import ShuffledBatches, dataloader_batches, fit_path
from qsenn_train.pipeline import dense_key, train
from qsenn_train.quantize import quantize
from qsenn_train.recipes import PAPER, Recipe, resolve_recipe
from qsenn_train.saga_path import elastic_net_prox
from qsenn_train.sparsify import saga_table_device, sparse_folder

# The paper's path settings on a problem small enough for a test (each solve well under a second).
SMALL_PATH = dataclasses.replace(PAPER.glm_path, n_lambdas=8, max_epochs=40, batch_size=32)


def feature_set(n_train=150, n_val=20, n_test=30, dim=6, n_classes=4, seed=0) -> FeatureSet:
    """Raw (unstandardised) features drawn from a softmax model, split like §4."""
    generator = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    x = torch.randn(n, dim, generator=generator) * 3 + 1
    true_weight = torch.randn(n_classes, dim, generator=generator)
    drawn = torch.multinomial(F.softmax((x - 1) / 3 @ true_weight.T, dim=1), 1, generator=generator)
    rows, labels = x.numpy(), drawn.flatten().numpy()
    train = rows[: n_train + n_val]
    stats = FeatureStats(
        torch.from_numpy(train.mean(0)), torch.from_numpy(train.std(0)), 1.0, n_train + n_val, n_classes
    )
    return FeatureSet(
        train=rows[:n_train],
        train_labels=labels[:n_train],
        val=rows[n_train : n_train + n_val],
        val_labels=labels[n_train : n_train + n_val],
        test=rows[n_train + n_val :],
        test_labels=labels[n_train + n_val :],
        stats=stats,
    )


def test_shuffled_batches_draw_what_the_dataloader_draws():
    x, y = torch.randn(70, 3), torch.arange(70)
    fast, loader = ShuffledBatches(x, y, 16), dataloader_batches(x, y, 16)
    assert len(fast) == len(loader) == 5
    torch.manual_seed(3)
    ours = [[t.clone() for t in batch] for _ in range(3) for batch in fast]
    after_ours = torch.rand(4)
    torch.manual_seed(3)
    theirs = [batch for _ in range(3) for batch in loader]
    after_theirs = torch.rand(4)
    assert len(ours) == len(theirs) == 15
    for a, b in zip(ours, theirs):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(ours[0][2], ours[5][2])  # every pass reshuffles
    assert torch.equal(after_ours, after_theirs)  # and leaves the global RNG where the loader does


def test_fast_fed_path_is_bit_identical_to_the_dataloader_path():
    features = feature_set()
    paths = []
    for batches in (ShuffledBatches, dataloader_batches):
        torch.manual_seed(11)
        paths.append(
            fit_path(features, [0, 2, 3, 5], SMALL_PATH, n_classes=4, device=torch.device("cpu"), batches=batches)
        )
    fast, reference = paths
    assert len(fast) == len(reference) == SMALL_PATH.n_lambdas + 1
    for a, b in zip(fast, reference):
        assert torch.equal(a["weight"], b["weight"]) and torch.equal(a["bias"], b["bias"])
        assert a["lam"] == b["lam"] and a["metrics"] == b["metrics"]
    # The path is not trivial: it goes from all-zero weights to a dense solution.
    assert fast[0]["weight"].count_nonzero() < fast[-1]["weight"].count_nonzero() == fast[-1]["weight"].numel()
    assert np.isfinite(fast[-1]["loss"])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def paths_of(features, solvers, settings=SMALL_PATH, **options):
    paths = []
    for solver in solvers:
        torch.manual_seed(5)
        paths.append(
            fit_path(features, None, settings, n_classes=4, device=torch.device("cpu"), solver=solver, **options)
        )
    return paths


def test_matrix_solver_reproduces_the_glm_saga_path():
    settings = dataclasses.replace(SMALL_PATH, n_lambdas=10, max_epochs=100)
    reference, matrix = paths_of(feature_set(n_train=300), ("glm-saga", "matrix"), settings)
    assert len(matrix) == len(reference) == 11
    assert [e["lam"] for e in matrix] == [e["lam"] for e in reference]  # the same float32 grid
    assert [e["epochs"] for e in matrix] == [e["epochs"] for e in reference]
    assert all(1 < e["epochs"] < settings.max_epochs for e in reference)  # the stall rule ended every fit
    for a, b in zip(matrix[1:], reference[1:]):  # entry 0 may be all zero
        assert relative_error(a["weight"], b["weight"]) < 1e-4
        assert relative_error(a["bias"], b["bias"]) < 1e-4
        assert abs(a["metrics"]["loss_test"] - b["metrics"]["loss_test"]) < 1e-4
    assert not torch.equal(matrix[-1]["weight"], reference[-1]["weight"])  # a solver of its own
    # The quantised head (§7): the same ternary pattern, magnitude and biases up to rounding.
    ours, theirs = (quantize(p[-2]["weight"], p[-2]["bias"], 2) for p in (matrix, reference))
    assert torch.equal(ours.ternary, theirs.ternary) and ours.ternary.count_nonzero() == 8
    assert ours.magnitude == pytest.approx(theirs.magnitude, rel=1e-4)
    assert torch.allclose(ours.bias, theirs.bias, rtol=1e-4, atol=0)


def test_a_half_width_table_changes_the_path_only_by_its_rounding():
    # bfloat16 keeps 8 bits of every residual: the running averages follow what the table
    # stores, so the rounding does not pile up (without that, 1-5 % here).
    full, half = (paths_of(feature_set(), ["matrix"], table_dtype=d)[0] for d in ("float32", "bfloat16"))
    assert not torch.equal(full[-1]["weight"], half[-1]["weight"])
    assert max(relative_error(h["weight"], f["weight"]) for h, f in zip(half[1:], full[1:])) < 1e-3


def test_glm_saga_refuses_a_table_dtype_it_does_not_have():
    with pytest.raises(QsennError, match="--path-solver matrix"):
        fit_path(feature_set(), None, SMALL_PATH, n_classes=4, device=torch.device("cpu"), table_dtype="bfloat16")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"path_solver": "adam"}, "unknown path solver 'adam'; choose one of glm-saga, matrix"),
        ({"saga_table_dtype": "int8", "path_solver": "matrix"}, "unknown SAGA table dtype 'int8'"),
        ({"saga_table_dtype": "float16"}, "add --path-solver matrix"),
    ],
)
def test_recipe_refuses_bad_solver_settings(overrides, message):
    with pytest.raises(QsennError, match=re.escape(message)):
        resolve_recipe("tiny", **overrides)


@pytest.mark.parametrize(
    "device, message",
    [("gpu0", "--saga-table-device 'gpu0' is not a device; use auto, cpu, cuda or cuda:N"), ("cuda", "no NVIDIA GPU")],
)
def test_a_table_device_that_is_not_there_is_one_line(device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(QsennError, match=re.escape(message)):
        saga_table_device(resolve_recipe("tiny", saga_table_device=device))
    assert saga_table_device(resolve_recipe("tiny", saga_table_device="cpu")) == torch.device("cpu")
    assert saga_table_device(resolve_recipe("tiny")) is None


def test_solver_settings_name_the_stage_only_when_changed():
    assert resolve_recipe("tiny").solver_variant() == {}
    recipe = resolve_recipe("tiny", path_solver="matrix", saga_table_dtype="bfloat16", saga_table_device="cpu")
    assert recipe.solver_variant() == {"path_solver": "matrix", "saga_table_dtype": "bfloat16"}
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_the_matrix_solvers_prox_is_glm_sagas_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    lams = torch.logspace(0, -3, 50)  # float32, as glm-saga's grid
    lr = torch.logspace(-1, -1, 1)[0]
    for lam in lams:
        weight = torch.randn(30, 12, generator=generator) * lam * 2
        ours = elastic_net_prox(lam, lr, 0.99)(weight)
        theirs = elasticnet.soft_threshold_with_shrinkage(weight, lr * lam * 0.99, lr * lam * 0.01)
        assert torch.equal(ours, theirs)
        assert 0 < ours.count_nonzero() < ours.numel()  # the threshold bites


@pytest.mark.slow
def test_a_tiny_sldd_run_with_the_matrix_solver_records_it(tmp_path):
    recipe = resolve_recipe("tiny", model_type="sldd", path_solver="matrix", saga_table_dtype="bfloat16")
    opts = RunOptions(seed=3, data_root=tmp_path / "data", out=tmp_path / "runs", device="cpu")
    result = train(recipe, opts, echo=lambda line: None)
    run = Path(result["run_dir"])
    config = json.loads((run / "config.json").read_text())
    assert config["recipes"]["sldd"]["path_solver"] == "matrix"
    assert config["recipes"]["sldd"]["saga_table_dtype"] == "bfloat16"
    # The matrix solver logs its epochs per λ; glm-saga's lines have no such field.
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    path_lines = [e["line"] for e in events if e.get("event") == "glm_saga"]
    assert len([line for line in path_lines if ", epochs " in line]) == recipe.glm_path.n_lambdas + 1
    # Its results live apart from a default run's: the stage key names the solver.
    dense = dense_key(recipe, 3)
    ours, default = (
        sparse_folder(SimpleNamespace(recipe=r), dense)
        for r in (recipe, recipe.replace(path_solver="glm-saga", saga_table_dtype="float32"))
    )
    assert (run / ours).is_dir() and ours != default
