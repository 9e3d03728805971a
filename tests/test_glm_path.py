"""The glm-saga path (spec §6): fast feeding and the matrix-form solver against the package."""

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from glm_saga import elasticnet
from torch.utils.data import DataLoader

from qsenn_train.features import FeatureSet, FeatureStats
from qsenn_train.glm_path import ShuffledBatches, fit_path
from qsenn_train.recipes import PAPER

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


def dataloader_batches(x, y, batch_size):
    """The feeding glm-saga was given before: a shuffled DataLoader over per-item rows."""
    return DataLoader(elasticnet.IndexedTensorDataset(x, y), batch_size=batch_size, shuffle=True)


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
