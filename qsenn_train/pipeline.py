"""`qsenn train`: the stages in order, each cached in the run directory under a key of its inputs."""
from __future__ import annotations

import platform
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision

from .checkpoint import model_from_record, model_record
from .data import open_dataset
from .data.base import DatasetInfo
from .data.transforms import build_transform
from .errors import QsennError
from .model import QResNet, build_model
from .recipes import Recipe
from .rundir import CONFIG, RunDir, stage_key
from .training import Device, Schedule, evaluate, make_loader, make_sgd, run_epochs


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe (none of this changes the result, except the seed)."""

    seed: int | None
    data_root: Path
    out: Path
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    resume: bool = False
    overwrite: bool = False


@dataclass
class RunContext:
    recipe: Recipe
    seed: int
    run: RunDir
    device: Device
    info: DatasetInfo
    train_set: torch.utils.data.Dataset   # training transform
    test_set: torch.utils.data.Dataset    # test transform
    train_eval_set: torch.utils.data.Dataset  # training images, test transform (extraction, metrics)
    echo: Callable[[str], None]


def run_dir_for(recipe: Recipe, seed: int, out: Path) -> Path:
    """<out>/<arch>/<dataset>[_crop]/<seed> as in the reference (§12.2), so Q-SENN and SLDD
    runs with the same seed share one dense model."""
    dataset = recipe.dataset + ("_crop" if recipe.crop_gt else "")
    return Path(out) / recipe.arch / dataset / str(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare(recipe: Recipe, opts: RunOptions, echo: Callable[[str], None] = print) -> RunContext:
    seed = opts.seed if opts.seed is not None else random.randrange(1_000_000)
    seed_everything(seed)
    device = Device.resolve(opts.device, opts.amp, opts.channels_last)
    train_raw, test_raw, info = open_dataset(recipe, opts.data_root, echo=echo)

    path = run_dir_for(recipe, seed, opts.out)
    if path.exists() and opts.overwrite:
        shutil.rmtree(path)
    run = RunDir(path, echo=echo)
    if run.has_results() and not opts.resume:
        raise QsennError(f"{path} already holds results of an earlier run; add --resume to continue "
                         f"it (finished stages are reused), --overwrite to start over, or another --seed/--out")
    run.save_json(CONFIG, {"recipe": recipe.to_json(), "seed": seed, "dataset": info.to_json(),
                           "device": str(device.torch_device), "versions": library_versions()})
    run.event("start", recipe=recipe.name, seed=seed, resume=opts.resume)
    echo(f"run directory: {path}  (seed {seed}; resume with --seed {seed} --resume)")
    return RunContext(
        recipe=recipe, seed=seed, run=run, device=device, info=info,
        train_set=train_raw.with_transform(build_transform(info, recipe.img_size, train=True)),
        test_set=test_raw.with_transform(build_transform(info, recipe.img_size, train=False)),
        train_eval_set=train_raw.with_transform(build_transform(info, recipe.img_size, train=False)),
        echo=echo)


def library_versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__}


# ---- stage: dense model ----------------------------------------------------------------

def dense_key(ctx: RunContext) -> str:
    r = ctx.recipe
    return stage_key("dense", r.dataset, r.crop_gt, r.arch, r.img_size, r.reduced_strides,
                     r.pretrained, r.do_dense, r.dense, r.fdl_beta, r.dense_dropout, ctx.seed)


def dense_stage(ctx: RunContext) -> QResNet:
    """Dense training (spec §3), or the pretrained/initial model when dense training is off."""
    r = ctx.recipe
    name = f"dense-{dense_key(ctx)}.pt"
    record = ctx.run.load_torch(name)
    if record is not None:
        ctx.echo(f"dense model: reusing {ctx.run.file(name)}")
        return ctx.device.prepare(model_from_record(record))

    model = ctx.device.prepare(build_model(r.arch, ctx.info.num_classes, reduced_strides=r.reduced_strides,
                                           pretrained=r.pretrained, dropout=r.dense_dropout))
    history: list[dict] = []
    if r.do_dense:
        optimizer, scheduler = make_sgd(
            [{"params": model.backbone_parameters(), "lr": r.dense.lr},
             {"params": model.head_parameters(), "lr": r.dense.head_lr}], r.dense)
        sched = Schedule("dense", optimizer, scheduler, r.dense.epochs, r.dense.batch_size,
                         r.eval_every, partial_name=f"dense-{dense_key(ctx)}.partial.pt")
        history = run_epochs(model, ctx.train_set, ctx.test_set, sched, device=ctx.device,
                             fdl_beta=r.fdl_beta, seed=ctx.seed, workers=r.workers, run=ctx.run,
                             echo=ctx.echo)
    ctx.run.save_torch(name, model_record(model, ctx.info, r.img_size, recipe=r.name,
                                          seed=ctx.seed, stage="dense", history=history))
    ctx.run.remove(f"dense-{dense_key(ctx)}.partial.pt")
    return model


def test_accuracy(ctx: RunContext, model: QResNet) -> float:
    loader = make_loader(ctx.test_set, ctx.recipe.metrics_batch_size, shuffle=False,
                         workers=ctx.recipe.workers)
    return evaluate(model, loader, ctx.device)["acc"]


def train(recipe: Recipe, opts: RunOptions, echo: Callable[[str], None] = print) -> dict:
    """Run every stage of the recipe; return the final metrics."""
    ctx = prepare(recipe, opts, echo)
    dense = dense_stage(ctx)
    metrics = {"Accuracy": test_accuracy(ctx, dense)}
    ctx.run.save_json("metrics_dense.json", metrics)
    ctx.run.event("done", metrics=metrics)
    echo(f"dense model: test accuracy {metrics['Accuracy']:.4f}")
    return {"run_dir": str(ctx.run.path), "dense": metrics}
