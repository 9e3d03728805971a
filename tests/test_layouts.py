"""Dataset loaders on tiny fake trees in each exact layout of spec §11."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qsenn_bench.testing.fake_datasets import (
    CARS_CLASSES,
    CUB_ATTRIBUTES,
    CUB_CLASSES,
    make_class_folders,
    make_cub,
    make_cub_crop,
    make_cub_folder,
    make_fashion_mnist,
    make_imagenet,
    make_stanford_cars,
    make_traveling_birds,
    solid_image,
    write_idx,
    write_lines,
)
from qsenn_train.data import layouts
from qsenn_train.data.base import RESIZE_IMAGENET, RESIZE_SHORTER, RESIZE_SQUARE, ArrayImageDataset
from qsenn_train.data.idx import read_idx, read_idx_header
from qsenn_train.data.layouts import DATASET_NAMES, load_splits, load_synth_splits
from qsenn_train.data.transforms import build_transform
from qsenn_train.errors import QsennError

IMG = 16


def error_of(call, *args, **kwargs) -> str:
    """The QsennError message of call(...), checked to be one line."""
    with pytest.raises(QsennError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def first_item_tensor(dataset, info):
    image, label = dataset.with_transform(build_transform(info, IMG, train=False))[0]
    assert image.shape == (3, IMG, IMG) and image.dtype == torch.float32
    return label


def test_dataset_names():
    assert set(DATASET_NAMES) == {
        "CUB2011",
        "TravelingBirds",
        "StanfordCars",
        "ImageNet",
        "folder",
        "fashion-mnist",
        "synth",
    }


# ---------------------------------------------------------------- CUB-200-2011


def test_cub_splits_in_image_id_order(tmp_path):
    cub = make_cub(tmp_path)
    train, test, info = load_splits("CUB2011", tmp_path)
    for dataset, split in ((train, cub.split(True)), (test, cub.split(False))):
        assert dataset.image_ids == [r.image_id for r in split]
        assert dataset.targets == [r.label for r in split]
        assert [p for p, _ in dataset.samples] == [str(cub.cub_dir / "images" / r.rel_path) for r in split]
        assert dataset.transform is None
    assert (len(train), len(test)) == (8, 4)
    assert info.name == "CUB2011" and info.root == str(cub.cub_dir)
    assert info.class_names == CUB_CLASSES  # folder names kept, `001.` prefix included
    assert info.mean == layouts.CUB_MEAN and info.std == layouts.CUB_STD
    assert info.resize_mode == RESIZE_SHORTER and not info.crop_gt
    assert info.attributes_file == str(cub.cub_dir / "attributes" / "image_attribute_labels.txt")
    assert info.attribute_names == CUB_ATTRIBUTES
    assert first_item_tensor(train, info) == cub.split(True)[0].label


def test_cub_data_root_may_be_the_dataset_folder(tmp_path):
    cub = make_cub(tmp_path)
    train, _, info = load_splits("cub2011", cub.cub_dir)  # name matched case-insensitively
    assert info.root == str(cub.cub_dir) and len(train) == 8


def test_cub_without_attributes(tmp_path):
    make_cub(tmp_path, attributes=False)
    _, _, info = load_splits("CUB2011", tmp_path)
    assert info.attributes_file is None and info.attribute_names == ()


def test_cub_gt_crop_reads_metadata_from_cub_and_images_from_ppcub(tmp_path):
    cub = make_cub(tmp_path)
    crop_dir = make_cub_crop(tmp_path, cub)
    train, test, info = load_splits("CUB2011", tmp_path, crop_gt=True)
    assert train.samples[0][0] == str(crop_dir / "train_cropped" / cub.split(True)[0].rel_path)
    assert test.samples[-1][0] == str(crop_dir / "test_cropped" / cub.split(False)[-1].rel_path)
    assert test.image_ids == [r.image_id for r in cub.split(False)]
    assert info.crop_gt and info.resize_mode == RESIZE_SQUARE and info.root == str(cub.cub_dir)
    first_item_tensor(test, info)


def test_cub_gt_crop_without_cropped_images(tmp_path):
    make_cub(tmp_path)
    message = error_of(load_splits, "CUB2011", tmp_path, crop_gt=True)
    assert "train_cropped not found" in message
    assert str(tmp_path / "PPCUB200" / "CUB_200_2011") in message


def test_synth_folder_reads_its_normalisation(tmp_path):
    cub = make_cub_folder(tmp_path / "synth" / "CUB_200_2011")
    (cub.cub_dir / "qsenn_dataset.json").write_text(
        json.dumps({"name": "synth", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.1]})
    )
    train, test, info = load_synth_splits(cub.cub_dir)
    assert (len(train), len(test), info.name) == (8, 4, "synth")
    assert info.mean == (0.5, 0.4, 0.3) and info.std == (0.2, 0.2, 0.1)
    assert info.class_names == CUB_CLASSES and info.attribute_names == CUB_ATTRIBUTES
    assert load_splits("synth", tmp_path / "synth")[2] == info


def test_synth_malformed_description(tmp_path):
    cub = make_cub_folder(tmp_path / "CUB_200_2011")
    (cub.cub_dir / "qsenn_dataset.json").write_text('{"name": "synth", "mean": [0.5]}')
    assert "qsenn_dataset.json is malformed" in error_of(load_synth_splits, cub.cub_dir)


# ---------------------------------------------------------------- TravelingBirds


def test_traveling_birds_takes_ids_and_split_from_cub(tmp_path):
    cub = make_cub(tmp_path)
    tb_dir = make_traveling_birds(tmp_path, cub)
    train, test, info = load_splits("TravelingBirds", tmp_path)
    for dataset, folder, split in ((train, "train", cub.split(True)), (test, "test", cub.split(False))):
        assert dataset.image_ids == [r.image_id for r in split]
        assert dataset.targets == [r.label for r in split]
        assert [p for p, _ in dataset.samples] == [str(tb_dir / folder / r.rel_path) for r in split]
    assert info.class_names == CUB_CLASSES and info.root == str(tb_dir)
    assert info.mean == layouts.TRAVELING_BIRDS_MEAN and info.std == layouts.TRAVELING_BIRDS_STD
    assert info.resize_mode == RESIZE_SHORTER
    assert info.attributes_file == str(cub.cub_dir / "attributes" / "image_attribute_labels.txt")
    first_item_tensor(train, info)


def test_traveling_birds_crop_images_with_uncropped_sample_list(tmp_path):
    cub = make_cub(tmp_path)
    make_traveling_birds(tmp_path, cub, crop=True)
    train, test, info = load_splits("TravelingBirds", tmp_path, crop_gt=True)
    crop_dir = tmp_path / "PPTravelingBirds" / "CUB_fixed"
    assert test.samples[0][0] == str(crop_dir / "test_cropped" / cub.split(False)[0].rel_path)
    assert train.image_ids == [r.image_id for r in cub.split(True)]
    assert info.crop_gt and info.resize_mode == RESIZE_SQUARE


def test_traveling_birds_needs_cub_beside_it(tmp_path):
    cub = make_cub(tmp_path / "elsewhere")
    make_traveling_birds(tmp_path, cub)
    message = error_of(load_splits, "TravelingBirds", tmp_path)
    assert str(tmp_path / "CUB200" / "CUB_200_2011") in message and "images.txt" in message


def test_traveling_birds_image_unknown_to_cub(tmp_path):
    cub = make_cub(tmp_path)
    tb_dir = make_traveling_birds(tmp_path, cub)
    stray = solid_image(tb_dir / "train" / CUB_CLASSES[0] / "stray.jpg")
    assert f"image {stray} is not listed in" in error_of(load_splits, "TravelingBirds", tmp_path)


# ---------------------------------------------------------------- Stanford Cars


def test_stanford_cars_devkit_layout(tmp_path):
    pytest.importorskip("scipy")
    root = make_stanford_cars(tmp_path, train_classes=(3, 1, 2, 1), test_classes=(2, 3))
    train, test, info = load_splits("StanfordCars", tmp_path)
    assert train.targets == [2, 0, 1, 0] and test.targets == [1, 2]
    assert train.samples[0][0] == str(root / "cars_train" / "00001.jpg")
    assert test.samples[1][0] == str(root / "cars_test" / "00002.jpg")
    assert info.class_names == CARS_CLASSES and info.root == str(root)
    assert info.mean == layouts.STANFORD_CARS_MEAN and info.resize_mode == RESIZE_SHORTER
    first_item_tensor(train, info)


def test_stanford_cars_class_out_of_range(tmp_path):
    pytest.importorskip("scipy")
    make_stanford_cars(tmp_path, train_classes=(1, 4))
    message = error_of(load_splits, "StanfordCars", tmp_path)
    assert "annotation 2 of" in message and "class 4 outside 1..3" in message


def test_stanford_cars_unreadable_mat(tmp_path):
    pytest.importorskip("scipy")
    root = make_stanford_cars(tmp_path)
    (root / "devkit" / "cars_meta.mat").write_bytes(b"not a mat file at all" * 10)
    assert f"cannot read {root / 'devkit' / 'cars_meta.mat'}" in error_of(load_splits, "StanfordCars", tmp_path)


def test_stanford_cars_without_scipy(tmp_path, monkeypatch):
    root = tmp_path / "StanfordCars" / "stanford_cars"
    for rel in ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    assert "pip install scipy" in error_of(load_splits, "StanfordCars", tmp_path)


# ---------------------------------------------------------------- class-per-folder layouts


def test_imagenet_sorted_wnids(tmp_path):
    root = make_imagenet(tmp_path)
    train, test, info = load_splits("ImageNet", tmp_path)
    assert info.class_names == ("n01440764", "n01443537")
    assert train.targets == [0, 0, 1, 1, 1] and test.targets == [0, 1]
    assert test.samples[0][0] == str(root / "val" / "n01440764" / "img_0.JPEG")
    assert info.mean == layouts.IMAGENET_MEAN and info.std == layouts.IMAGENET_STD
    assert info.resize_mode == RESIZE_IMAGENET
    first_item_tensor(test, info)


def test_folder_layout(tmp_path):
    make_class_folders(tmp_path / "train", {"dog": 2, "cat": 1}, suffix=".JpG")
    make_class_folders(tmp_path / "test", {"dog": 1})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    train, test, info = load_splits("folder", tmp_path)
    assert info.class_names == ("cat", "dog")
    assert train.targets == [0, 1, 1] and test.targets == [1]
    assert info.mean == layouts.IMAGENET_MEAN and info.resize_mode == RESIZE_SHORTER
    first_item_tensor(train, info)


def test_folder_layout_accepts_val(tmp_path):
    make_class_folders(tmp_path / "train", {"a": 1, "b": 1})
    make_class_folders(tmp_path / "val", {"b": 2})
    _, test, _ = load_splits("folder", tmp_path)
    assert test.targets == [1, 1]


def test_folder_test_class_unknown_to_train(tmp_path):
    make_class_folders(tmp_path / "train", {"a": 1})
    make_class_folders(tmp_path / "test", {"a": 1, "zebra": 1})
    message = error_of(load_splits, "folder", tmp_path)
    assert f"class folder {tmp_path / 'test' / 'zebra'} has no counterpart" in message


def test_folder_without_classes(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    assert f"no class folders in {tmp_path / 'train'}" in error_of(load_splits, "folder", tmp_path)


def test_folder_empty_test_split(tmp_path):
    make_class_folders(tmp_path / "train", {"a": 1})
    (tmp_path / "test" / "a").mkdir(parents=True)
    assert "the test split is empty" in error_of(load_splits, "folder", tmp_path)


def test_folder_without_test_or_val(tmp_path):
    make_class_folders(tmp_path / "train", {"a": 1})
    assert "neither" in error_of(load_splits, "folder", tmp_path)


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_files(tmp_path, gz):
    make_fashion_mnist(tmp_path / "fashion-mnist", n_train=6, n_test=4, gz=gz)
    train, test, info = load_splits("fashion-mnist", tmp_path)
    assert isinstance(train, ArrayImageDataset)
    assert (len(train), len(test)) == (6, 4) and train.targets == [0, 1, 2, 3, 4, 5]
    image, label = train[2]
    assert image.mode == "RGB" and image.size == (28, 28) and image.getpixel((0, 0)) == (20,) * 3
    assert len(info.class_names) == 10 and info.class_names[9] == "Ankle boot"
    assert info.mean == layouts.FASHION_MNIST_MEAN and info.resize_mode == RESIZE_SQUARE
    first_item_tensor(test, info)


def test_fashion_mnist_falls_back_to_system_copy(tmp_path, monkeypatch):
    system_copy = make_fashion_mnist(tmp_path / "system")
    monkeypatch.setattr(layouts, "SYSTEM_FASHION_MNIST", system_copy)
    _, _, info = load_splits("fashion-mnist", tmp_path / "no-such-root")
    assert info.root == str(system_copy)


def test_fashion_mnist_count_mismatch(tmp_path):
    folder = make_fashion_mnist(tmp_path)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    assert "holds 4 images but" in error_of(load_splits, "fashion-mnist", tmp_path)


def test_idx_bad_magic(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.zeros(5, np.uint8))
    message = error_of(read_idx, path, 3)  # a label file read as images
    assert f"IDX file {path} is malformed" in message and "magic 00000801" in message


def test_idx_truncated_data(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((3, 4, 4), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    message = error_of(read_idx, path, 3)
    assert "header declares shape (3, 4, 4) = 48 bytes, file holds 43" in message


def test_idx_truncated_gzip(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(b"\0" * 100)[:20])
    assert f"IDX file {path} is malformed" in error_of(read_idx, path, 3)


REAL_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not REAL_FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)"
)
def test_real_fashion_mnist_files():
    assert read_idx_header(REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz", 3) == (60000, 28, 28)
    assert read_idx_header(REAL_FASHION_MNIST / "t10k-images-idx3-ubyte.gz", 3) == (10000, 28, 28)
    for prefix, per_class in (("train", 6000), ("t10k", 1000)):
        labels = read_idx(REAL_FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz", 1)
        assert np.bincount(labels).tolist() == [per_class] * 10


@pytest.mark.skipif(
    not REAL_FASHION_MNIST.is_dir(), reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)"
)
def test_real_fashion_mnist_normalisation_constants():
    images = read_idx(REAL_FASHION_MNIST / "train-images-idx3-ubyte.gz", 3)
    # A histogram gives exact moments without a float copy of 47 M pixels.
    counts = np.bincount(images.ravel(), minlength=256)
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    assert (round(mean, 4),) * 3 == layouts.FASHION_MNIST_MEAN
    assert (round(std, 4),) * 3 == layouts.FASHION_MNIST_STD


# ---------------------------------------------------------------- errors


def test_missing_root_names_both_places(tmp_path):
    missing = tmp_path / "x"
    message = error_of(load_splits, "CUB2011", missing)
    assert message == (
        f"CUB2011: images.txt not found in {missing / 'CUB200' / 'CUB_200_2011'} "
        f"or {missing} ({missing} does not exist); pass --data-root pointing at the "
        f"folder that holds CUB200/CUB_200_2011 (or at CUB_200_2011 itself)"
    )


@pytest.mark.parametrize(
    "name, marker", [("StanfordCars", "cars_meta.mat"), ("ImageNet", "train"), ("synth", "qsenn_dataset.json")]
)
def test_empty_root(tmp_path, name, marker):
    message = error_of(load_splits, name, tmp_path)
    assert message.startswith(f"{name}: ") and marker in message and "--data-root" in message


def test_missing_metadata_file(tmp_path):
    cub = make_cub(tmp_path)
    (cub.cub_dir / "image_class_labels.txt").unlink()
    message = error_of(load_splits, "CUB2011", tmp_path)
    assert message.startswith(f"CUB2011: image_class_labels.txt not found in {cub.cub_dir};")


@pytest.mark.parametrize(
    "line, problem",
    [
        ("5", "line 3 is malformed"),  # field missing
        ("5 1 7", "line 3 is malformed"),  # field too many
        ("five 1", "line 3 is malformed"),  # id not an integer
        ("5 0", "line 3: class id 0 outside 1..3"),
        ("5 4", "line 3: class id 4 outside 1..3"),
        ("2 1", "line 3: id 2 appears twice"),  # line 1 holds id 2
    ],
)
def test_malformed_label_line(tmp_path, line, problem):
    cub = make_cub(tmp_path)
    labels = cub.cub_dir / "image_class_labels.txt"
    lines = labels.read_text().splitlines()
    write_lines(labels, lines[:2] + [line] + lines[3:])
    message = error_of(load_splits, "CUB2011", tmp_path)
    assert message.startswith(f"CUB2011: {labels} {problem}")


def test_image_without_label(tmp_path):
    cub = make_cub(tmp_path)
    labels = cub.cub_dir / "image_class_labels.txt"
    write_lines(labels, [ln for ln in labels.read_text().splitlines() if not ln.startswith("7 ")])
    assert "image id 7 of" in error_of(load_splits, "CUB2011", tmp_path)


def test_listed_image_missing(tmp_path):
    cub = make_cub(tmp_path)
    first, last = cub.split(True)[0], cub.split(True)[-1]
    (cub.cub_dir / "images" / first.rel_path).unlink()
    message = error_of(load_splits, "CUB2011", tmp_path)
    assert f"image file {cub.cub_dir / 'images' / first.rel_path} not found" in message
    # Images past the first few fail when loaded, naming the file.
    solid_image(cub.cub_dir / "images" / first.rel_path)
    (cub.cub_dir / "images" / last.rel_path).unlink()
    train, _, _ = load_splits("CUB2011", tmp_path)
    assert last.rel_path in error_of(train.__getitem__, len(train) - 1)


def test_empty_split(tmp_path):
    cub = make_cub(tmp_path)
    write_lines(cub.cub_dir / "train_test_split.txt", (f"{r.image_id} 1" for r in cub.records))
    assert "the test split is empty" in error_of(load_splits, "CUB2011", tmp_path)


def test_unknown_dataset_and_misplaced_crop(tmp_path):
    assert "choose one of CUB2011" in error_of(load_splits, "MNIST", tmp_path)
    assert "--crop-gt applies only to" in error_of(load_splits, "ImageNet", tmp_path, crop_gt=True)
