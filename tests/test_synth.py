"""The embedded synthetic dataset: determinism, CUB file formats, labels, atomicity."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qsenn_train.data import synth
from qsenn_train.data.synth import (
    ATTRIBUTE_NAMES,
    CLASS_GROUPS,
    MAX_CLASSES,
    SynthSpec,
    class_table,
    ensure_synth,
    generate,
)
from qsenn_train.errors import QsennError

TINY = SynthSpec(n_classes=4, train_per_class=3, test_per_class=2, image_size=32, seed=0)


def _rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_cub(tmp_path_factory) -> Path:
    return generate(TINY, tmp_path_factory.mktemp("synth"))


def test_same_seed_gives_byte_identical_files(tiny_cub, tmp_path):
    again = _files(generate(TINY, tmp_path))
    assert again == _files(tiny_cub)


def test_other_seed_gives_other_images(tiny_cub, tmp_path):
    other = generate(SynthSpec(**{**asdict(TINY), "seed": 1}), tmp_path)
    first_image = _rows(tiny_cub / "images.txt")[0][1]
    other_image = _rows(other / "images.txt")[0][1]
    assert (
        np.asarray(Image.open(tiny_cub / "images" / first_image))
        != np.asarray(Image.open(other / "images" / other_image))
    ).any()


def test_index_files_are_consistent_cub_layout(tiny_cub):
    n_images = TINY.n_classes * (TINY.train_per_class + TINY.test_per_class)
    classes = {int(i): name for i, name in _rows(tiny_cub / "classes.txt")}
    assert sorted(classes) == list(range(1, TINY.n_classes + 1))
    assert all(re.fullmatch(rf"{i:03d}\.[a-z]+_[a-z]+_[a-z]+_x[123](_outlined)?", name) for i, name in classes.items())

    images = _rows(tiny_cub / "images.txt")
    labels = _rows(tiny_cub / "image_class_labels.txt")
    splits = _rows(tiny_cub / "train_test_split.txt")
    boxes = _rows(tiny_cub / "bounding_boxes.txt")
    for table in (images, labels, splits, boxes):
        assert [int(row[0]) for row in table] == list(range(1, n_images + 1))

    class_of = [int(label) for _, label in labels]
    assert class_of == sorted(class_of), "image ids must be grouped by class, like CUB"
    split_counts = Counter((c, int(flag)) for c, (_, flag) in zip(class_of, splits))
    for class_id in classes:
        assert split_counts[class_id, 1] == TINY.train_per_class
        assert split_counts[class_id, 0] == TINY.test_per_class

    for (_, relative), class_id, (_, *box) in zip(images, class_of, boxes):
        assert relative.split("/")[0] == classes[class_id]
        with Image.open(tiny_cub / "images" / relative) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (32, 32))
        x, y, w, h = map(float, box)
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= TINY.image_size + 1e-6 and y + h <= TINY.image_size + 1e-6


def test_attributes_file_lists_cub_style_names(tiny_cub):
    rows = _rows(tiny_cub / "attributes.txt")
    assert [int(i) for i, _ in rows] == list(range(1, len(ATTRIBUTE_NAMES) + 1))
    assert tuple(name for _, name in rows) == ATTRIBUTE_NAMES
    assert all(re.fullmatch(r"has_[a-z_]+::[a-z]+", name) for name in ATTRIBUTE_NAMES)


def test_annotations_record_what_was_drawn(tiny_cub):
    class_of = {int(i): int(c) for i, c in _rows(tiny_cub / "image_class_labels.txt")}
    classes = {c.class_id: c for c in class_table(TINY)}
    rows = _rows(tiny_cub / "attributes" / "image_attribute_labels.txt")
    assert len(rows) == len(class_of) * len(ATTRIBUTE_NAMES)
    assert all(len(row) == 5 for row in rows)

    present: dict[int, set[str]] = {i: set() for i in class_of}
    for image_id, attribute_id, is_present, certainty, time in (map(int, r) for r in rows):
        assert is_present in (0, 1) and 1 <= certainty <= 4 and time > 0
        if is_present:
            present[image_id].add(ATTRIBUTE_NAMES[attribute_id - 1])
    for image_id, names in present.items():
        expected = {f"{g}::{v}" for g, v in classes[class_of[image_id]].attribute_values().items()}
        backgrounds = {n for n in names if n.startswith(f"{synth.BACKGROUND_GROUP}::")}
        assert names - backgrounds == expected
        assert len(backgrounds) == 1


def test_certainties_are_mostly_definite_and_not_visible_is_never_present(tiny_cub):
    rows = [list(map(int, r)) for r in _rows(tiny_cub / "attributes" / "image_attribute_labels.txt")]
    certainty = Counter(r[3] for r in rows)
    assert certainty[4] > 0.8 * len(rows)
    assert certainty[1] > 0 and certainty[2] + certainty[3] > 0
    assert not any(r[2] == 1 and r[3] == 1 for r in rows)


def test_info_file_holds_train_pixel_statistics(tiny_cub):
    info = json.loads((tiny_cub / "qsenn_dataset.json").read_text())
    assert info["name"] == "synth" and info["spec"] == asdict(TINY)
    images = dict(_rows(tiny_cub / "images.txt"))
    train = [images[i] for i, flag in _rows(tiny_cub / "train_test_split.txt") if flag == "1"]
    pixels = np.stack([np.asarray(Image.open(tiny_cub / "images" / p)) for p in train]) / 255
    np.testing.assert_allclose(info["mean"], pixels.mean((0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(info["std"], pixels.std((0, 1, 2)), atol=1e-5)


def test_default_classes_are_distinct_and_share_every_value():
    classes = class_table(SynthSpec())
    combos = [tuple(c.attribute_values().values()) for c in classes]
    assert len(combos) == 16 and len(set(combos)) == 16
    for group, values in CLASS_GROUPS:
        usage = Counter(c.attribute_values()[group] for c in classes)
        assert set(usage) == set(values), f"{group} leaves values unused"
        assert min(usage.values()) >= 2, f"a {group} value alone names a class: {usage}"


@pytest.mark.parametrize("n_classes", [4, 7, 12, 30, 100])
@pytest.mark.parametrize("seed", [0, 3])
def test_every_used_value_is_shared_by_two_classes(n_classes, seed):
    classes = class_table(SynthSpec(n_classes=n_classes, seed=seed))
    assert len({tuple(c.attribute_values().values()) for c in classes}) == n_classes
    for group, _ in CLASS_GROUPS:
        assert min(Counter(c.attribute_values()[group] for c in classes).values()) >= 2


def test_all_combinations_can_be_classes():
    classes = class_table(SynthSpec(n_classes=MAX_CLASSES))
    assert len({tuple(c.attribute_values().values()) for c in classes}) == MAX_CLASSES


def test_tag_names_the_spec():
    assert SynthSpec().tag() == "c16-tr100-te50-s64-seed0"


@pytest.mark.parametrize(
    "bad",
    [
        {"n_classes": 0},
        {"n_classes": MAX_CLASSES + 1},
        {"train_per_class": 0},
        {"test_per_class": -1},
        {"image_size": 31},
        {"seed": -1},
        {"n_classes": 2.5},
    ],
)
def test_invalid_spec_is_a_one_line_error(bad):
    with pytest.raises(QsennError) as info:
        SynthSpec(**bad)
    assert "\n" not in str(info.value)


def test_failure_midway_leaves_no_dataset_folder(tmp_path, monkeypatch):
    real_save = synth._save_png
    saved = []

    def save_then_fail(pixels, path):
        if len(saved) == 3:
            raise RuntimeError("disk went away")
        saved.append(path)
        real_save(pixels, path)

    monkeypatch.setattr(synth, "_save_png", save_then_fail)
    with pytest.raises(RuntimeError):
        generate(TINY, tmp_path)
    assert len(saved) == 3
    assert list(tmp_path.iterdir()) == []


def test_generate_refuses_to_overwrite(tiny_cub):
    with pytest.raises(QsennError, match="already exists"):
        generate(TINY, tiny_cub.parent)


def test_ensure_synth_generates_once_and_repairs_incomplete(tmp_path, monkeypatch):
    cub = ensure_synth(tmp_path, TINY)
    assert cub == tmp_path / "synth" / TINY.tag() / "CUB_200_2011"
    assert (cub / "qsenn_dataset.json").is_file()

    def no_generation(*_):
        raise AssertionError("a complete dataset must be reused")

    with monkeypatch.context() as patch:
        patch.setattr(synth, "generate", no_generation)
        assert ensure_synth(tmp_path, TINY) == cub

    (cub / "qsenn_dataset.json").unlink()
    assert ensure_synth(tmp_path, TINY) == cub
    assert (cub / "qsenn_dataset.json").is_file()
