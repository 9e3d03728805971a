"""Toy Q-SENN and SLDD models, checkpoints and run directories for the export tests (no training,
no downloads)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from qsenn_train.checkpoint import model_record
from qsenn_train.data.base import RESIZE_SHORTER, DatasetInfo
from qsenn_train.model import QResNet, build_model
from qsenn_train.recipes import resolve_recipe
from qsenn_train.run import ModelEntry
from qsenn_train.rundir import CONFIG, RunDir

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
            assert bn.running_mean is not None and bn.running_var is not None
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


def random_sparse(num_classes: int, n_features: int, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """An SLDD-like head: per class `per_class` real weights of either sign, magnitudes 0.2..1.2."""
    signs = random_ternary(num_classes, n_features, per_class, generator)
    return signs * (0.2 + torch.rand(num_classes, n_features, generator=generator))


def toy_model(
    kind: str = "ternary",
    arch: str = "resnet10",
    num_classes: int = 4,
    n_features: int = 6,
    per_class: int = 2,
    seed: int = 0,
) -> QResNet:
    """A random backbone with a random sparse head: Q-SENN's MAGNITUDE · T, T ∈ {−1, 0, +1}
    (kind "ternary"), or SLDD's real weights (kind "sparse")."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(arch, num_classes)
    with torch.no_grad():
        _randomise_batch_norms(model, generator)
    selection = torch.randperm(model.feature_dim, generator=generator)[:n_features].sort().values
    if kind == "ternary":
        weight = MAGNITUDE * random_ternary(num_classes, n_features, per_class, generator)
    else:
        weight = random_sparse(num_classes, n_features, per_class, generator)
    model.install_sparse_head(
        selection,
        torch.rand(n_features, generator=generator),
        0.2 + torch.rand(n_features, generator=generator),
        weight,
        torch.randn(num_classes, generator=generator),
    )
    return model.eval()


def ternary_model(
    arch: str = "resnet10", num_classes: int = 4, n_features: int = 6, per_class: int = 2, seed: int = 0
) -> QResNet:
    return toy_model("ternary", arch, num_classes, n_features, per_class, seed)


def sldd_model(
    arch: str = "resnet10", num_classes: int = 4, n_features: int = 6, per_class: int = 2, seed: int = 0
) -> QResNet:
    return toy_model("sparse", arch, num_classes, n_features, per_class, seed)


def save_checkpoint(
    model: QResNet, path: Path, img_size: int = 32, info: DatasetInfo = ABSENT_DATASET, **extra
) -> Path:
    torch.save(model_record(model, _info_for(model, info), img_size, recipe="tiny", seed=7, **extra), path)
    return path


def _info_for(model: QResNet, info: DatasetInfo) -> DatasetInfo:
    if info.num_classes != model.num_classes:
        return dataclasses.replace(info, class_names=tuple(f"c{k}" for k in range(model.num_classes)))
    return info


def fake_run(run_dir: Path, models: dict[str, QResNet], img_size: int = 32, info: DatasetInfo = ABSENT_DATASET) -> Path:
    """A finished run directory as `qsenn train` leaves it, written through the run-directory API:
    config.json, per model type (qsenn, sldd) its checkpoint, metrics and registry entry, and the
    dense model they share (a copy of the first model: only its file matters here)."""
    run = RunDir(run_dir)
    first = next(iter(models.values()))
    info = _info_for(first, info)
    recipe = resolve_recipe("tiny")
    run.save_json(
        CONFIG,
        {
            "seed": 7,
            "dataset": info.to_json(),
            "data_root": info.root,
            "device": "cpu",
            "versions": {},
            "recipes": {t: recipe.replace(model_type=t).to_json() for t in models},
        },
    )
    run.save_torch("dense-0000000000.pt", model_record(first, info, img_size, recipe="tiny", seed=7, stage="dense"))
    run.save_json("metrics_dense.json", {"Accuracy": 0.4, "NFfeatures": 512, "model": "dense-0000000000"})
    for n, (model_type, model) in enumerate(models.items()):
        folder = f"{model_type}_6_2-{n:010d}"
        checkpoint = f"{folder}/model.pt"
        run.save_torch(
            checkpoint, model_record(model, info, img_size, recipe="tiny", model_type=model_type, seed=7, stage=folder)
        )
        run.save_json(f"metrics_{model_type}.json", {"Accuracy": 0.5, "NFfeatures": 6, "model": folder})
        entry = ModelEntry(
            model_type=model_type,
            checkpoint=checkpoint,
            folder=folder,
            metrics=f"metrics_{model_type}.json",
            dense_checkpoint="dense-0000000000.pt",
            dense_key="0000000000",
            dense_metrics="metrics_dense.json",
            recipe=recipe.replace(model_type=model_type).to_json(),
            seed=7,
            finished=1e9 + n,
        )
        run.register(model_type, entry.to_json())
    return run_dir
