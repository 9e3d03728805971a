"""The elastic-net regularisation path on the selected features (spec §6), with glm-saga.

The standardisation x̂ = (f − μ)/max(σ, 1e-5) runs inside glm-saga as its `preprocess`
module, so λ_max and n_ex are computed from the standardised train split exactly as the
reference does (metadata=None).

glm-saga is fed by `ShuffledBatches`, not by a DataLoader over a per-item TensorDataset:
the same batches in the same order from the same random draws, gathered with one index per
batch instead of one `__getitem__` per sample and a collate (68 % of the path's time).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from glm_saga import elasticnet
from torch import nn
from torch.utils.data import DataLoader

from .features import GLM_STD_CLAMP, FeatureSet
from .recipes import SagaSettings, check_path_solver
from .saga_path import matrix_path

READ_CHUNK = 65536


class Standardize(nn.Module):
    """x ↦ (x − μ)/max(σ, 1e-5); carries `.device` because glm-saga asks its preprocess for one."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, device: torch.device):
        super().__init__()
        self.device = device
        self.register_buffer("mean", mean.float().to(device))
        self.register_buffer("std", torch.clamp(std.float(), min=GLM_STD_CLAMP).to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def columns(array: np.ndarray, selection: list[int] | None) -> torch.Tensor:
    """Rows of a memory-mapped array restricted to `selection`, read a chunk at a time so the
    full N×D matrix never sits in memory."""
    cols = slice(None) if selection is None else np.asarray(selection)
    parts = [np.asarray(array[i : i + READ_CHUNK])[:, cols] for i in range(0, len(array), READ_CHUNK)]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts))).float()


class ShuffledBatches:
    """What `DataLoader(dataset, batch_size, shuffle=True)` yields for a dataset of
    `(features, labels)` rows, as `(features[rows], labels[rows], rows)` batches.

    Every pass draws from the global RNG exactly as a single-process DataLoader does: one
    int64 for the iterator's base seed, one to seed the RandomSampler's generator, whose
    randperm orders the rows. The results are therefore bit-identical to the DataLoader
    feeding, and the random stream after a pass is where the DataLoader would leave it.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int):
        self.features, self.labels, self.batch_size = features, labels, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def order(self) -> torch.Tensor:
        """One pass's permutation of the rows, drawn as the DataLoader draws it."""
        torch.empty((), dtype=torch.int64).random_()  # _BaseDataLoaderIter's base seed
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # RandomSampler's
        return torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for rows in self.order().split(self.batch_size):
            yield self.features[rows], self.labels[rows], rows


def dataloader_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    """The feeding glm-saga had before ShuffledBatches (and the reference has): a shuffled
    DataLoader over per-item rows. Kept to show the two give the same path (tests, benchmarks)."""
    return DataLoader(elasticnet.IndexedTensorDataset(features, labels), batch_size=batch_size, shuffle=True)


@contextmanager
def _count_lambdas(tick: Callable[[], None]):
    """glm-saga (pinned 0.1.2) calls elasticnet.train_saga once per λ: count the calls."""
    original = elasticnet.train_saga

    def counted(*args, **kwargs):
        state = original(*args, **kwargs)
        tick()
        return state

    elasticnet.train_saga = counted
    try:
        yield
    finally:
        elasticnet.train_saga = original


def fit_path(
    features: FeatureSet,
    selection: list[int] | None,
    settings: SagaSettings,
    *,
    n_classes: int,
    device: torch.device,
    solver: str = "glm-saga",
    table_dtype: str = "float32",
    table_device: torch.device | None = None,
    tick: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = lambda line: None,
    batches: Callable[[torch.Tensor, torch.Tensor, int], Iterable] = ShuffledBatches,
) -> list[dict]:
    """101 solutions (100 log-spaced λ's and λ = 0), each with weight K×F, bias K and the
    number of epochs its fit ran.

    `selection` restricts D-dimensional features to S (first iteration); None when the
    features are already the model's F selected ones. `solver`: "glm-saga" (the package) or
    "matrix" (saga_path.py). The SAGA residual table lives on `table_device` (default: the
    solver's device) in `table_dtype` (anything but float32: matrix solver only).
    `batches(x, y, batch_size)` makes the shuffled loaders glm-saga iterates (a DataLoader
    gives the same path, slower).
    """
    check_path_solver(solver, table_dtype)
    mean, std = features.stats.mean, features.stats.std
    if selection is not None:
        mean, std = mean[selection], std[selection]
    x_train = columns(features.train, selection)
    # np.array copies: torch wants writable memory, the memory-mapped labels are read-only
    y_train = torch.from_numpy(np.array(features.train_labels))
    x_val, y_val = columns(features.val, selection), torch.from_numpy(np.array(features.val_labels))
    x_test, y_test = columns(features.test, selection), torch.from_numpy(np.array(features.test_labels))

    batch = settings.batch_size
    train_loader = batches(x_train, y_train, batch)
    val_loader = batches(x_val, y_val, batch) if len(x_val) else None
    test_loader = batches(x_test, y_test, batch)

    linear = nn.Linear(x_train.shape[1], n_classes).to(device)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    preprocess = Standardize(mean, std, device)
    if solver == "matrix":
        if not isinstance(train_loader, ShuffledBatches):
            raise TypeError("the matrix path solver draws its epochs from ShuffledBatches")
        path = matrix_path(
            linear,
            train_loader,
            val_loader,
            test_loader,
            preprocess,
            settings,
            table_dtype=getattr(torch, table_dtype),
            table_device=table_device,
            tick=tick,
            log=log,
        )
        return [_plain(entry) | {"epochs": entry["epochs"]} for entry in path]
    captured = io.StringIO()
    with _count_lambdas(tick), contextlib.redirect_stdout(captured), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax")
        result = elasticnet.glm_saga(
            linear,
            train_loader,
            settings.lr,
            settings.max_epochs,
            settings.alpha,
            k=settings.n_lambdas,
            epsilon=settings.epsilon,
            tol=settings.tol,
            lookbehind=settings.lookbehind,
            group=False,
            do_zero=True,
            lr_decay_factor=1,
            preprocess=preprocess,
            n_classes=n_classes,
            val_loader=val_loader,
            test_loader=test_loader,
            table_device=table_device or device,
            checkpoint=None,
        )
    lines = captured.getvalue().splitlines()
    for line in lines:
        log(line)
    epochs = _epochs_per_fit(lines, settings.max_epochs)
    return [_plain(entry) | {"epochs": n} for entry, n in zip(result["path"], epochs, strict=True)]


def _epochs_per_fit(lines: list[str], max_epochs: int) -> list[int]:
    """Epochs of each λ's fit, from the line glm-saga's train_saga ends every fit with:
    "... [early stop at t]" (t counts from 0) or "did not converge at N iterations"."""
    epochs = []
    for line in lines:
        if match := re.search(r"\[early stop at (\d+)\]$", line):
            epochs.append(int(match.group(1)) + 1)
        elif line.startswith("did not converge at "):
            epochs.append(max_epochs)
    return epochs


def _plain(entry: dict) -> dict:
    """A path entry as plain numbers and CPU tensors (safe to save and reload)."""
    return {
        "lam": float(entry["lam"]),
        "lr": float(entry["lr"]),
        "alpha": float(entry["alpha"]),
        "time": float(entry["time"]),
        "loss": float(entry["loss"]),
        "metrics": {k: float(v) for k, v in entry["metrics"].items()},
        "weight": entry["weight"].cpu(),
        "bias": entry["bias"].cpu(),
    }
