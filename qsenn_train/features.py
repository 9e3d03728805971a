"""Feature extraction for the GLM steps (spec §4), written to disk as memory-mapped arrays.

Training images go through the test transform in eval mode; the pooled features (the
model's own selection once a sparse head is installed) stream into preallocated `.npy`
files, so memory stays flat however large the dataset is (ImageNet: 1.28 M × 2048).
Statistics are accumulated in float64 on the way: μ, σ (divisor N) and the "group"
maximal regularisation G on raw features (odd-F).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from .data.base import ImageListDataset
from .device import Device
from .distributed import World
from .errors import QsennError
from .model import QResNet
from .progress import progress
from .rundir import RunDir, temporary_name
from .sharding import shard_positions, shuffled_order
from .training import make_loader

# σ clamp of the standardisation both GLM steps use, x̂ = (f − μ)/max(σ, 1e-5) (spec §4 step 7;
# odd-V: the model head clamps at 1e-6, model.STD_CLAMP).
GLM_STD_CLAMP = 1e-5
CHUNK_BYTES = 16 * 2**20  # copied at a time when writing the split files (bounds the gather's copy)


@dataclass
class FeatureStats:
    """Train-set statistics over all N training images (before the validation split)."""

    mean: torch.Tensor  # μ (C)
    std: torch.Tensor  # σ, population std (C), not clamped here
    max_reg_group: float  # G of §4 step 4 (raw features)
    n_total: int  # N
    n_classes: int

    def to_record(self) -> dict:
        return {
            "mean": self.mean,
            "std": self.std,
            "max_reg_group": self.max_reg_group,
            "n_total": self.n_total,
            "n_classes": self.n_classes,
        }

    @classmethod
    def from_record(cls, r: dict) -> FeatureStats:
        return cls(r["mean"], r["std"], float(r["max_reg_group"]), int(r["n_total"]), int(r["n_classes"]))


class StatsAccumulator:
    """Streaming Σf, Σf², and per-class Σf in float64."""

    def __init__(self, dim: int, n_classes: int):
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.squares = torch.zeros(dim, dtype=torch.float64)
        self.per_class = torch.zeros(n_classes, dim, dtype=torch.float64)
        self.counts = torch.zeros(n_classes, dtype=torch.float64)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        f = features.double()
        self.total += f.sum(0)
        self.squares += (f * f).sum(0)
        self.per_class.index_add_(0, labels, f)
        self.counts += torch.bincount(labels, minlength=len(self.counts)).double()

    def finish(self) -> FeatureStats:
        n = self.counts.sum()
        mean = self.total / n
        var = (self.squares / n - mean * mean).clamp(min=0)
        # Σ_i f_ij (e_{y_i} − ȳ) = per-class sums − ȳ·Σ_i f_ij   (D×K)
        class_freq = self.counts / n
        inner = self.per_class.T - self.total[:, None] * class_freq[None, :]
        g = (inner.norm(dim=1).max() / n).item()
        return FeatureStats(mean.float(), var.sqrt().float(), g, int(n), len(self.counts))


def _new_array(run: RunDir, name: str, rows: int, cols: int, dtype) -> tuple[np.memmap, Path]:
    """A preallocated .npy under a temporary name (renamed into place once complete)."""
    final = run.file(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final, "partial")
    shape = (rows, cols) if cols else (rows,)
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape), tmp


def _commit(run: RunDir, name: str, array: np.memmap, tmp: Path) -> None:
    array.flush()
    run.save_with(name, lambda dst: tmp.replace(dst))


def stored_order(n: int, shuffle_seed: int | None) -> list[int]:
    """Which image each stored row holds: dataset order, or the seeded shuffled order."""
    if shuffle_seed is None:
        return list(range(n))
    return shuffled_order(n, torch.Generator().manual_seed(shuffle_seed))


@torch.no_grad()
def extract_split(
    model: QResNet,
    dataset: ImageListDataset,
    run: RunDir,
    prefix: str,
    *,
    batch_size: int,
    workers: int,
    device: Device,
    shuffle_seed: int | None,
    n_classes: int,
    desc: str,
    world: World | None = None,
) -> StatsAccumulator | None:
    """Pooled features and labels of one split into `<prefix>features.npy` / `<prefix>labels.npy`.

    With shuffle_seed the images are stored in a seeded random order, as the reference's
    shuffled training loader visits them. Under torch.distributed rank r extracts rows r, r+W,
    r+2W, … in batches of `batch_size`, and rank 0 writes every rank's rows in place: the arrays
    and statistics are those of one process, byte for byte. Returns the statistics on rank 0.
    """
    world = world or World()
    model.eval()
    dim = len(model.sparse_head.selection) if model.is_sparse else model.feature_dim
    n = len(dataset)
    if n == 0:
        raise QsennError(f"cannot extract features: the {desc} set is empty")
    order = stored_order(n, shuffle_seed)
    mine = [order[p] for p in shard_positions(n, world.rank, world.size)]
    loader = make_loader(Subset(dataset, mine), batch_size, shuffle=False, workers=workers)
    steps = math.ceil(len(shard_positions(n, 0, world.size)) / batch_size)  # rank 0 has the most rows
    arrays = None
    if world.is_main:
        arrays = (
            _new_array(run, f"{prefix}features.npy", n, dim, np.float32),
            _new_array(run, f"{prefix}labels.npy", n, 0, np.int64),
        )
    stats = StatsAccumulator(dim, n_classes)
    batches = iter(loader)
    for step in progress(range(steps), desc=f"features ({desc})"):
        batch = next(batches, None)
        if batch is None:  # a rank with fewer rows sends an empty share
            pooled = torch.zeros(0, dim, device=device.torch_device)
            y = torch.zeros(0, dtype=torch.int64)
        else:
            images, y = batch
            with device.autocast():
                pooled = model(device.batch(images)).pooled.float()
        rows = _gather_rows(world, pooled, y.to(pooled.device), batch_size)
        if arrays is not None:
            (features, _), (labels, _) = arrays
            for rank, (values, classes) in enumerate(rows):
                positions = rank + world.size * (step * batch_size + np.arange(len(classes)))
                features[positions] = values
                labels[positions] = classes
            # Statistics in the row order and batch grouping of one process, whatever W is.
            block = range(step * batch_size * world.size, min(n, (step + 1) * batch_size * world.size), batch_size)
            for start in block:
                stats.update(
                    torch.from_numpy(features[start : start + batch_size]),
                    torch.from_numpy(labels[start : start + batch_size]),
                )
    if arrays is None:
        return None
    (features, features_tmp), (labels, labels_tmp) = arrays
    _commit(run, f"{prefix}features.npy", features, features_tmp)
    _commit(run, f"{prefix}labels.npy", labels, labels_tmp)
    return stats


def _gather_rows(world: World, pooled: torch.Tensor, labels: torch.Tensor, batch_size: int) -> list[tuple]:
    """Every rank's (features, labels) of this step as numpy arrays, in rank order."""
    if not world.distributed:
        return [(pooled.cpu().numpy(), labels.cpu().numpy())]
    count = torch.tensor([len(labels)], device=pooled.device)
    padded = torch.zeros(batch_size, pooled.shape[1], device=pooled.device)
    padded[: len(labels)] = pooled
    padded_labels = torch.zeros(batch_size, dtype=torch.int64, device=pooled.device)
    padded_labels[: len(labels)] = labels
    counts = world.all_gather(count)
    values, classes = world.all_gather(padded), world.all_gather(padded_labels)
    return [
        (v[: int(c)].cpu().numpy(), k[: int(c)].cpu().numpy()) for v, k, c in zip(values, classes, counts, strict=True)
    ]


def validation_split(n_total: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train and validation splits, with `random_split` semantics (§4 step 5)."""
    n_val = int(np.floor(val_fraction * n_total))
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed)).numpy()
    return perm[: n_total - n_val], perm[n_total - n_val :]


def write_rows(run: RunDir, source: np.ndarray, positions: np.ndarray, name: str) -> None:
    """Gather rows of a (memory-mapped) array into a new .npy, a chunk at a time."""
    cols = source.shape[1] if source.ndim == 2 else 0
    out, tmp = _new_array(run, name, len(positions), cols, source.dtype)
    rows = max(1, CHUNK_BYTES // (source.dtype.itemsize * max(cols, 1)))
    for start in range(0, len(positions), rows):
        chunk = positions[start : start + rows]
        order = np.argsort(chunk)  # sorted reads are sequential on disk
        out[start + order] = source[chunk[order]]
    _commit(run, name, out, tmp)


@dataclass
class FeatureSet:
    """Memory-mapped features of one sparsification step, restricted on demand to S."""

    train: np.ndarray  # train split (N_tr × C), raw
    train_labels: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray  # test set (N_test × C), dataset order
    test_labels: np.ndarray
    stats: FeatureStats


FEATURE_FILES = (
    "train_features.npy",
    "train_labels.npy",
    "val_features.npy",
    "val_labels.npy",
    "test_features.npy",
    "test_labels.npy",
)


def load_feature_set(run: RunDir, folder: str) -> FeatureSet | None:
    """The cached features of a step, or None unless every file is intact."""
    record = run.load_torch(f"{folder}/feature_stats.pt")
    if record is None:
        return None
    arrays = [run.load_array(f"{folder}/{name}") for name in FEATURE_FILES]
    if any(array is None for array in arrays):
        return None
    train, train_labels, val, val_labels, test, test_labels = (
        np.load(run.file(f"{folder}/{name}"), mmap_mode="r") for name in FEATURE_FILES
    )
    return FeatureSet(train, train_labels, val, val_labels, test, test_labels, FeatureStats.from_record(record))


def extract_features(
    model: QResNet,
    train_eval_set: ImageListDataset,
    test_set: ImageListDataset,
    run: RunDir,
    folder: str,
    *,
    batch_size: int,
    workers: int,
    device: Device,
    seed: int,
    val_fraction: float,
    n_classes: int,
    world: World | None = None,
) -> FeatureSet | None:
    """§4 steps 1–5: extract, compute statistics, split 90/10 into `folder`. Every rank extracts
    its share; rank 0 writes and gets the FeatureSet, the others None."""
    world = world or World()

    def extract(dataset: ImageListDataset, prefix: str, shuffle_seed: int | None, desc: str) -> StatsAccumulator | None:
        return extract_split(
            model,
            dataset,
            run,
            f"{folder}/{prefix}",
            batch_size=batch_size,
            workers=workers,
            device=device,
            shuffle_seed=shuffle_seed,
            n_classes=n_classes,
            desc=desc,
            world=world,
        )

    train_stats = extract(train_eval_set, "all_train_", seed, "train")
    extract(test_set, "test_", None, "test")
    if train_stats is None:
        return None
    stats = train_stats.finish()
    all_features = np.load(run.file(f"{folder}/all_train_features.npy"), mmap_mode="r")
    all_labels = np.load(run.file(f"{folder}/all_train_labels.npy"), mmap_mode="r")
    train_pos, val_pos = validation_split(stats.n_total, val_fraction, seed)
    for split, positions in (("train", train_pos), ("val", val_pos)):
        write_rows(run, all_features, positions, f"{folder}/{split}_features.npy")
        write_rows(run, all_labels, positions, f"{folder}/{split}_labels.npy")
    del all_features, all_labels
    for name in ("all_train_features.npy", "all_train_labels.npy"):
        run.remove(f"{folder}/{name}")
    run.save_torch(f"{folder}/feature_stats.pt", stats.to_record())
    features = load_feature_set(run, folder)
    if features is None:
        raise QsennError(f"the features just written to {run.file(folder)} do not read back; check the disk")
    return features
