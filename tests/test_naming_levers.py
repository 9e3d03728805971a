"""benchmarks/naming_levers.py: the recipe changes it trains with (the training itself is the
demo pipeline, tested elsewhere)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from qsenn_train.errors import QsennError
from qsenn_train.recipes import DEMO

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def levers(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # it imports atlas_naming beside it
    spec = importlib.util.spec_from_file_location("naming_levers", REPO / "benchmarks" / "naming_levers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "naming_levers", module)
    spec.loader.exec_module(module)
    return module


def test_fields_and_schedule_fields_are_replaced(levers):
    recipe = levers.recipe_with(
        DEMO, ["dense_dropout=0.0", "dense.epochs=32", "dense.step_size=12", "augment='flip-gray'"]
    )
    assert recipe.dense_dropout == 0.0 and recipe.augment == "flip-gray"
    assert (recipe.dense.epochs, recipe.dense.step_size, recipe.dense.lr) == (32, 12, DEMO.dense.lr)
    assert recipe.finetune == DEMO.finetune and levers.recipe_with(DEMO, []) == DEMO
    tuned = levers.recipe_with(DEMO, ["finetune.dropout=0.0", "finetune.schedule.epochs=16"])
    assert tuned.finetune.dropout == 0.0 and tuned.finetune.schedule.epochs == 16
    assert tuned.finetune.schedule.lr == DEMO.finetune.schedule.lr and tuned.dense == DEMO.dense


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("dense_dropout", "write FIELD=VALUE"),
        ("augment=flip", "is not a Python literal"),
        ("dropout_rate=0.1", "no field 'dropout_rate'"),
        ("dense.momentum_x=0.5", "no field 'momentum_x'"),
        ("n_features.x=1", "no field 'x'"),
    ],
)
def test_a_bad_assignment_is_one_line(levers, assignment, message):
    with pytest.raises(SystemExit, match=message):
        levers.recipe_with(DEMO, [assignment])


def test_a_change_the_method_does_not_define_is_refused(levers):
    with pytest.raises(QsennError, match="unknown augmentation"):
        levers.recipe_with(DEMO, ["augment='strong'"])
