"""The Fashion-MNIST validation: its recipe, smoke-run subsets, feature names, and (with the
Debian dataset installed) train → export → runtime over the test set end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import qsenn_runtime
from qsenn_bench.testing.fake_datasets import make_fashion_mnist
from qsenn_bench.testing.toy_models import save_checkpoint, ternary_model
from qsenn_bench.validation import feature_names_file, validate_run
from qsenn_export import export
from qsenn_export.formats import make_options
from qsenn_train.atlas.feature_names import FeatureText, class_based_names, read_feature_names
from qsenn_train.context import RunOptions, run_dir_for
from qsenn_train.data import spread_subset
from qsenn_train.data.base import ImageListDataset
from qsenn_train.data.layouts import SYSTEM_FASHION_MNIST, load_splits
from qsenn_train.errors import QsennError
from qsenn_train.pipeline import train
from qsenn_train.recipes import DEMO, FASHION_MNIST, PAPER, TINY, FinetuneSettings, resolve_recipe

needs_fashion_mnist = pytest.mark.skipif(
    not SYSTEM_FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)"
)


# ---- recipe and subsets ------------------------------------------------------------------------


def test_fashion_mnist_is_the_default_recipe_of_its_dataset():
    recipe = resolve_recipe(None, "fashion-mnist")
    assert recipe.name == "fashion-mnist" and recipe.arch == "resnet18s" and recipe.img_size == 28
    assert (recipe.n_features, recipe.n_per_class) == (50, 5)


def test_small_stem_allows_28_px_and_refuses_less_than_16():
    assert resolve_recipe("fashion-mnist", img_size=16).img_size == 16
    with pytest.raises(QsennError, match="too small for resnet18s; use 16"):
        resolve_recipe("fashion-mnist", img_size=15)
    with pytest.raises(QsennError, match="too small for resnet18; use 32"):
        resolve_recipe("fashion-mnist", arch="resnet18")


def test_data_variant_keeps_earlier_runs_keys_and_dirs():
    # Recipes on the paper's data have no variant: their stage keys and directories are unchanged.
    for recipe in (PAPER, TINY):
        assert recipe.data_variant() == {} and recipe.subset_tag == ""
    # The demo's flip is in its stage keys, so runs made with the paper's augmentation are not reused.
    assert DEMO.data_variant() == {"augment": "flip"} and DEMO.subset_tag == ""
    assert run_dir_for(DEMO, 0, Path("runs")) == Path("runs/resnet18/synth/0")
    assert FASHION_MNIST.data_variant() == {"augment": "flip"}
    smoke = FASHION_MNIST.replace(limit_train=300, limit_test=100)
    assert smoke.data_variant() == {"augment": "flip", "limit_train": 300, "limit_test": 100}
    assert run_dir_for(smoke, 0, Path("runs")) == Path("runs/resnet18s/fashion-mnist_train300_test100/0")
    assert run_dir_for(FASHION_MNIST, 0, Path("runs")) == Path("runs/resnet18s/fashion-mnist/0")
    with pytest.raises(QsennError, match="--limit-test 1 is too small"):
        resolve_recipe("fashion-mnist", limit_test=1)


def test_spread_subset_is_evenly_spaced_and_keeps_pixels(tmp_path):
    train, _, _ = load_splits("fashion-mnist", make_fashion_mnist(tmp_path / "fashion-mnist", n_train=10))
    subset = spread_subset(train, 4)
    assert subset.targets == [0, 2, 5, 7]  # positions i·10//4
    assert np.asarray(subset.load_image(1))[0, 0, 0] == 20  # image k is filled with 10·k
    assert spread_subset(train, None) is train and spread_subset(train, 10) is train
    listed = ImageListDataset([(f"{k}.png", k % 3) for k in range(9)], image_ids=list(range(1, 10)))
    assert spread_subset(listed, 3).image_ids == [1, 4, 7]


# ---- feature names ------------------------------------------------------------------------------


def test_feature_names_come_from_the_classes_a_feature_raises_and_lowers():
    ternary = np.array([[1, 0, 0], [1, -1, 0], [-1, 0, 0]])
    assert class_based_names(ternary, ("Trouser", "Dress", "Bag")) == ["+Trouser/+Dress −Bag", "−Dress", "unused"]


def test_read_feature_names_takes_a_list_an_index_map_or_the_atlas_entries(tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["a", "b", "c"]))
    assert [t.name for t in read_feature_names(names, 3)] == ["a", "b", "c"]
    names.write_text(json.dumps({"1": "sleeve"}))
    assert [t.name for t in read_feature_names(names, 3)] == ["feature 0", "sleeve", "feature 2"]
    names.write_text(json.dumps({"2": {"name": "red", "description": "fires on red shapes"}}))
    assert read_feature_names(names, 3)[2] == FeatureText("red", "fires on red shapes")
    for bad, message in (
        (["a"], "lists 1 feature names; the model has 3"),
        ({"7": "x"}, "entry 7"),
        ({"x": "y"}, "keys must be feature indices"),
        ({"0": {"description": "no name"}}, "entry 0"),
        ("a", "must hold a JSON list"),
    ):
        names.write_text(json.dumps(bad))
        with pytest.raises(QsennError, match=message):
            read_feature_names(names, 3)
    names.write_text("{not json")
    with pytest.raises(QsennError, match="cannot read feature names"):
        read_feature_names(names, 3)
    with pytest.raises(QsennError, match="no such file"):
        read_feature_names(tmp_path / "absent.json", 3)


def test_export_puts_the_feature_names_into_the_metadata(tmp_path):
    checkpoint = save_checkpoint(
        ternary_model("resnet18s", num_classes=4, n_features=3), tmp_path / "m.pt", img_size=28
    )
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"2": "+c0 −c3"}))
    path = export(checkpoint, make_options("onnx", feature_names=names, verify_count=2), echo=lambda line: None)
    assert [f.name for f in qsenn_runtime.read_metadata(path).features] == ["feature 0", "feature 1", "+c0 −c3"]


# ---- end to end on the real dataset ----------------------------------------------------------

# One epoch per stage and two Q-SENN rounds on 200 training and 60 test images, 10 features.
SMOKE = FASHION_MNIST.replace(
    limit_train=200,
    limit_test=60,
    n_features=10,
    n_per_class=2,
    dense=dataclasses.replace(FASHION_MNIST.dense, epochs=1),
    finetune=FinetuneSettings(
        schedule=dataclasses.replace(FASHION_MNIST.finetune.schedule, epochs=1), short_epochs=1, iterations=2
    ),
    sldd_finetune=dataclasses.replace(FASHION_MNIST.sldd_finetune, epochs=1),
    selection=TINY.selection,
    glm_path=TINY.glm_path,
)


@pytest.mark.slow
@needs_fashion_mnist
def test_train_export_and_runtime_agree_on_the_test_subset(tmp_path):
    for model_type in ("qsenn", "sldd"):
        train(
            SMOKE.replace(model_type=model_type),
            RunOptions(seed=0, data_root=SYSTEM_FASHION_MNIST, out=tmp_path / "runs", device="cpu", resume=True),
            echo=lambda line: None,
        )
    run = tmp_path / "runs/resnet18s/fashion-mnist_train200_test60/0"
    result = validate_run(run, sheet=tmp_path / "sheet.png", sheet_features=3, top_images=3, echo=lambda line: None)

    for checked in result["exported_vs_pytorch"].values():  # Q-SENN and SLDD
        assert checked["images"] == 60 and checked["argmax_agreement"] == 1.0
        assert checked["max_identity_residual"] < 1e-4 and checked["max_abs_logit_difference"] < 1e-3
    assert set(result["models"]) == {"dense", "qsenn", "sldd"} == {"dense", *result["exported_vs_pytorch"]}
    assert result["heads"]["qsenn"]["plus_minus_a"] and result["heads"]["qsenn"]["nonzeros"] == 2 * 10
    assert not result["heads"]["sldd"]["plus_minus_a"]
    training = result["wall_seconds"]["training"]
    assert training["dense training"]["dense training"] > 0 and training["qsenn"]["fine-tuning"] > 0
    assert training["sldd"]["total"] > 0
    assert (tmp_path / "sheet.png").stat().st_size > 0
    written = list(run.glob("fashion-mnist-validation_resnet18s-28-train200-test60_*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["checks"] == result["checks"]

    for model_type in ("qsenn", "sldd"):
        names = json.loads((run / feature_names_file(model_type)).read_text())
        metadata = qsenn_runtime.read_metadata(run / f"{model_type}.onnx")
        assert [f.name for f in metadata.features] == names == class_based_names(metadata.weights, metadata.class_names)
    used = result["features"]
    assert used and all(f["raises"] or f["lowers"] for f in used) and len(used[0]["top_images"]) == 3
