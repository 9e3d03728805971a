"""Datasets: the embedded synthetic one, the real layouts of spec §11, and their transforms."""
from __future__ import annotations

from pathlib import Path
from typing import Callable


def open_dataset(recipe, data_root: Path, echo: Callable[[str], None] = print):
    """(train set, test set, DatasetInfo), without transforms.

    The embedded synthetic dataset is generated under data_root on first use.
    """
    from .layouts import load_splits, load_synth_splits
    from .synth import ensure_synth

    if recipe.dataset == "synth":
        return load_synth_splits(ensure_synth(Path(data_root), recipe.synth, echo=echo))
    return load_splits(recipe.dataset, Path(data_root), crop_gt=recipe.crop_gt)
