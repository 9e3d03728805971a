"""The model `qsenn bench` measures: a trained one (a run or a checkpoint), or a random one of a
given architecture and size for speed figures where no trained model exists."""

from __future__ import annotations

from pathlib import Path

import torch

from qsenn_export.fold import read_head
from qsenn_export.source import ExportSource, load_source
from qsenn_train.checkpoint import model_record
from qsenn_train.data.base import RESIZE_SHORTER, DatasetInfo
from qsenn_train.data.layouts import IMAGENET_MEAN, IMAGENET_STD
from qsenn_train.model import build_model

from .errors import BenchError

# A random model has the paper's CUB head: 200 classes, 50 features, 5 per class.
RANDOM_CLASSES, RANDOM_FEATURES, RANDOM_PER_CLASS, RANDOM_MAGNITUDE = 200, 50, 5, 0.5
RANDOM_DATASET = "random"


def random_source(arch: str, img_size: int, seed: int = 0) -> ExportSource:
    """A randomly initialised backbone with a random ternary head of the paper's size, for
    architectures no trained model exists for (speed only: its agreement figures say little)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(arch, RANDOM_CLASSES)
    selection = torch.randperm(model.feature_dim, generator=generator)[:RANDOM_FEATURES].sort().values
    ternary = torch.zeros(RANDOM_CLASSES, RANDOM_FEATURES)
    for k in range(RANDOM_CLASSES):
        columns = torch.randperm(RANDOM_FEATURES, generator=generator)[:RANDOM_PER_CLASS]
        ternary[k, columns] = torch.randint(0, 2, (RANDOM_PER_CLASS,), generator=generator).float() * 2 - 1
    model.install_sparse_head(
        selection,
        torch.zeros(RANDOM_FEATURES),
        torch.ones(RANDOM_FEATURES),
        RANDOM_MAGNITUDE * ternary,
        torch.randn(RANDOM_CLASSES, generator=generator),
    )
    model.eval()
    info = DatasetInfo(
        name=RANDOM_DATASET,
        root="",
        class_names=tuple(f"class {k}" for k in range(RANDOM_CLASSES)),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize_mode=RESIZE_SHORTER,
    )
    name = f"{arch}-{img_size}-random"
    return ExportSource(
        model=model,
        record=model_record(model, info, img_size, recipe="random", seed=seed),
        checkpoint=Path(f"{name}.pt"),
        run=None,
        model_type="qsenn",
        metrics=None,
        head=read_head(model, name, "qsenn"),
    )


def bench_source(
    path: Path | None, arch: str | None, img_size: int | None, random_weights: bool, model_type: str | None = None
) -> ExportSource:
    """A trained model (run directory, runs folder or checkpoint; `model_type` picks Q-SENN or SLDD
    in a run that holds both), or with `random_weights` a random one of `arch` at `img_size`."""
    if random_weights:
        if path is not None:
            raise BenchError("pass either MODEL_OR_RUN or --random, not both")
        if arch is None or img_size is None:
            raise BenchError("--random needs --arch and --img-size, e.g. --arch resnet50 --img-size 448 --random")
        return random_source(arch, img_size)
    if path is None:
        raise BenchError("pass a run directory or checkpoint, or --arch A --img-size N --random")
    if arch is not None or img_size is not None:
        raise BenchError("--arch and --img-size go with --random; a trained model brings its own")
    return load_source(path, model_type)


def model_label(source: ExportSource) -> str:
    if source.info.name == RANDOM_DATASET:
        return source.checkpoint.stem
    return f"{source.record['arch']}-{source.img_size}-{source.info.name}"
