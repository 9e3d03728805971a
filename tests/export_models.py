"""Toy Q-SENN models and checkpoints for the export tests (no training, no downloads)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from qsenn_train.checkpoint import model_record
from qsenn_train.data.base import RESIZE_SHORTER, DatasetInfo
from qsenn_train.model import QResNet, build_model

MAGNITUDE = 0.37
# A dataset that is not on disk: verification falls back to random images.
ABSENT_DATASET = DatasetInfo(
    name="CUB2011",
    root="/nonexistent/qsenn-test-data",
    class_names=("albatross", "cardinal", "crow", "wren"),
    mean=(0.4853, 0.4964, 0.4295),
    std=(0.2300, 0.2258, 0.2625),
    resize_mode=RESIZE_SHORTER,
)


def _randomise_batch_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics, so that a wrongly sliced BN changes the outputs."""
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            bn.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            bn.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            bn.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


def random_ternary(num_classes: int, n_features: int, per_class: int, generator: torch.Generator) -> torch.Tensor:
    ternary = torch.zeros(num_classes, n_features)
    for k in range(num_classes):
        columns = torch.randperm(n_features, generator=generator)[:per_class]
        ternary[k, columns] = torch.randint(0, 2, (per_class,), generator=generator).float() * 2 - 1
    return ternary


def ternary_model(
    arch: str = "resnet10", num_classes: int = 4, n_features: int = 6, per_class: int = 2, seed: int = 0
) -> QResNet:
    """A random backbone with a random Q-SENN head: weight = MAGNITUDE · T, T ∈ {−1, 0, +1}."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(arch, num_classes)
    with torch.no_grad():
        _randomise_batch_norms(model, generator)
    selection = torch.randperm(model.feature_dim, generator=generator)[:n_features].sort().values
    ternary = random_ternary(num_classes, n_features, per_class, generator)
    model.install_sparse_head(
        selection,
        torch.rand(n_features, generator=generator),
        0.2 + torch.rand(n_features, generator=generator),
        MAGNITUDE * ternary,
        torch.randn(num_classes, generator=generator),
    )
    return model.eval()


def save_checkpoint(model: QResNet, path: Path, img_size: int = 32, info: DatasetInfo = ABSENT_DATASET) -> Path:
    if info.num_classes != model.num_classes:
        info = dataclasses.replace(info, class_names=tuple(f"c{k}" for k in range(model.num_classes)))
    torch.save(model_record(model, info, img_size, recipe="tiny", seed=7), path)
    return path


def fake_run(run_dir: Path, model: QResNet, model_type: str = "qsenn", img_size: int = 32) -> Path:
    """A finished run directory as `qsenn train` leaves it: config, metrics, final.pt link."""
    (run_dir / "qsenn" / "iter3").mkdir(parents=True)
    save_checkpoint(model, run_dir / "qsenn" / "iter3" / "model.pt", img_size)
    (run_dir / "config.json").write_text(json.dumps({"recipe": {"model_type": model_type}, "seed": 7}))
    (run_dir / f"metrics_{model_type}.json").write_text(json.dumps({"Accuracy": 0.5, "NFfeatures": 6}))
    os.symlink("qsenn/iter3/model.pt", run_dir / "final.pt")
    return run_dir
