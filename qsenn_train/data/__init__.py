"""Datasets: the embedded synthetic one, the real layouts of spec §11, and their transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def open_dataset(recipe, data_root: Path, echo: Callable[[str], None] = print):
    """(train set, test set, DatasetInfo), without transforms, limited to the recipe's
    `limit_train` / `limit_test` images.

    The embedded synthetic dataset is generated under data_root on first use.
    """
    from .layouts import load_splits, load_synth_splits
    from .synth import ensure_synth

    if recipe.dataset == "synth":
        train, test, info = load_synth_splits(ensure_synth(Path(data_root), recipe.synth, echo=echo))
    else:
        train, test, info = load_splits(recipe.dataset, Path(data_root), crop_gt=recipe.crop_gt)
    return spread_subset(train, recipe.limit_train), spread_subset(test, recipe.limit_test), info


def spread_subset(dataset, limit: int | None):
    """`limit` images evenly spaced over the dataset (every class of a class-ordered layout
    keeps its share), in dataset order; the whole dataset when limit is None or not smaller."""
    n = len(dataset)
    if limit is None or limit >= n:
        return dataset
    return dataset.subset([i * n // limit for i in range(limit)])


def example_images(recipe, data_root: Path, count: int, echo: Callable[[str], None] = print) -> list[str]:
    """Files of `count` test images of the recipe's dataset, from `count` different classes (the
    first test image of each class, in class order): images to try `qsenn predict` on."""
    from ..errors import QsennError
    from .base import ImageListDataset

    _, test, _ = open_dataset(recipe, data_root, echo=echo)
    if not isinstance(test, ImageListDataset):
        raise QsennError(f"{recipe.dataset} stores its images as arrays, not files; there are no files to list")
    first_of_class: dict[int, str] = {}
    for path, label in test.samples:
        first_of_class.setdefault(label, path)
    return [first_of_class[label] for label in sorted(first_of_class)][:count]
