"""What every stage of a run shares: the recipe, the seed, the run directory, the device and data."""

from __future__ import annotations

import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import faults
from .data import open_dataset
from .data.base import DatasetInfo, ImageListDataset
from .data.transforms import build_transform
from .device import Device
from .distributed import World, join_world
from .errors import QsennError
from .names import DEFAULT_STAGE_TIMEOUT_S
from .recipes import Recipe
from .rundir import CONFIG, FollowerRunDir, RunDir, stage_key
from .sharding import check_global_batches
from .versions import library_versions


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
    sync_batchnorm: bool = True  # under torch.distributed: BatchNorm over the global batch
    stage_timeout_s: float = DEFAULT_STAGE_TIMEOUT_S


@dataclass(frozen=True)
class DataSplits:
    """A recipe's images with the transforms each use needs."""

    info: DatasetInfo
    train_set: ImageListDataset  # training images, training transform
    test_set: ImageListDataset  # test images, test transform
    train_eval_set: ImageListDataset  # training images, test transform (extraction, metrics)


def open_data(recipe: Recipe, data_root: Path, echo: Callable[[str], None] = print) -> DataSplits:
    train_raw, test_raw, info = open_dataset(recipe, data_root, echo=echo)
    return DataSplits(
        info=info,
        train_set=train_raw.with_transform(build_transform(info, recipe.img_size, train=True, augment=recipe.augment)),
        test_set=test_raw.with_transform(build_transform(info, recipe.img_size, train=False)),
        train_eval_set=train_raw.with_transform(build_transform(info, recipe.img_size, train=False)),
    )


@dataclass
class RunContext:
    recipe: Recipe
    seed: int
    run: RunDir
    device: Device
    data: DataSplits
    echo: Callable[[str], None] = print
    world: World = field(default_factory=World)
    sync_batchnorm: bool = True
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def info(self) -> DatasetInfo:
        return self.data.info

    @property
    def train_set(self) -> ImageListDataset:
        return self.data.train_set

    @property
    def test_set(self) -> ImageListDataset:
        return self.data.test_set

    @property
    def train_eval_set(self) -> ImageListDataset:
        return self.data.train_eval_set


def run_dir_for(recipe: Recipe, seed: int, out: Path) -> Path:
    """<out>/<arch>/<dataset>[_crop][_trainN_testM]/<seed> as in the reference (§12.2), so
    Q-SENN and SLDD runs with the same seed share one dense model."""
    dataset = recipe.dataset + ("_crop" if recipe.crop_gt else "") + recipe.subset_tag
    return Path(out) / recipe.arch / dataset / str(seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_stage(ctx: RunContext, label: str) -> int:
    """Reseed the global RNG from (run seed, stage), so a stage draws the same numbers whether
    the stages before it ran or were loaded from the run directory; returns that seed. Rank r of
    a distributed job draws from seed + r (its own dropout and augmentation; rank 0 as one process)."""
    seed = int(stage_key(ctx.seed, label), 16) % (1 << 62)
    torch.manual_seed(seed + ctx.world.rank)
    return seed


def stage_label(scope: str, step: str, round_: str | None = None) -> str:
    """How the event log and the fault hook name a stage: "<scope>[/<round>]: <step>"."""
    return f"{scope}/{round_}: {step}" if round_ else f"{scope}: {step}"


@contextmanager
def timed(ctx: RunContext, scope: str, step: str, round_: str | None = None) -> Iterator[None]:
    """Time a stage and record it (timings.json, the event log); the one place where the test-only
    fault injection can arm (faults.py). `scope` is the model the stage builds (dense-<key> or a
    sparsification folder), `round_` the Q-SENN round (iter0..3)."""
    label = stage_label(scope, step, round_)
    start = time.perf_counter()
    with faults.armed(label):
        yield
        calls = faults.counted()
    seconds = time.perf_counter() - start
    ctx.timings[label] += seconds
    ctx.run.record_time(scope, step, seconds, round_)
    ctx.run.event("stage_time", stage=label, scope=scope, round=round_, step=step, seconds=round(seconds, 3), **calls)


@contextmanager
def saga_threads(ctx: RunContext):
    """One CPU thread for the SAGA solvers: their minibatch matmuls are too small to split,
    and a second OpenMP thread only spin-waits (10–30× slower on a busy 2-core machine)."""
    if ctx.device.torch_device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepare(recipe: Recipe, opts: RunOptions, echo: Callable[[str], None] = print) -> RunContext:
    world, device_name = join_world(opts.device, opts.stage_timeout_s)
    if not world.is_main:
        echo = _silent  # rank 0 speaks for the job
    world.on_main("checking the recipe", lambda: check_global_batches(recipe.batch_sizes(), world.size))
    seed = world.broadcast(opts.seed if opts.seed is not None else random.randrange(1_000_000))
    seed_everything(seed)
    device = Device.resolve(device_name, opts.amp, opts.channels_last)
    # Rank 0 opens the data first: the embedded dataset is generated on first use.
    data = world.main_only("opening the dataset", lambda: open_data(recipe, opts.data_root, echo))
    if data is None:
        data = open_data(recipe, opts.data_root, echo)

    path = run_dir_for(recipe, seed, opts.out)
    run = world.main_only(
        "preparing the run directory", lambda: _open_run_dir(path, recipe, seed, opts, data, device, world, echo)
    )
    if run is None:
        run = FollowerRunDir(path)
    echo(f"run directory: {path}  (seed {seed}; resume with --seed {seed} --resume)")
    if world.distributed:
        echo(f"{world.size} processes ({world.backend}); the global batch of the recipe is split over them")
    return RunContext(
        recipe=recipe,
        seed=seed,
        run=run,
        device=device,
        data=data,
        echo=echo,
        world=world,
        sync_batchnorm=opts.sync_batchnorm,
    )


def _silent(_line: str) -> None:
    return None


def _open_run_dir(
    path: Path, recipe: Recipe, seed: int, opts: RunOptions, data: DataSplits, device: Device, world: World, echo
) -> RunDir:
    if path.exists() and opts.overwrite:
        shutil.rmtree(path)
    run = RunDir(path, echo=echo)
    if run.has_results() and not opts.resume:
        raise QsennError(
            f"{path} already holds results of an earlier run; add --resume to continue "
            f"it (finished stages are reused), --overwrite to start over, or another --seed/--out"
        )
    if removed := run.remove_stale_temporaries():
        echo(f"removed {removed} temporary files left behind by an interrupted run")
        run.event("stale_temporaries_removed", count=removed)
    run.save_json(CONFIG, run_config(run, recipe, seed, data.info, opts.data_root, device, world))
    run.event(
        "start", recipe=recipe.name, model_type=recipe.model_type, seed=seed, resume=opts.resume, world_size=world.size
    )
    return run


def run_config(
    run: RunDir, recipe: Recipe, seed: int, info: DatasetInfo, data_root: Path, device: Device, world: World
) -> dict:
    """config.json: what every model of the run shares (seed, dataset, where it lies, versions) and,
    per model type, the recipe it was last asked to train with; another model type's recipe stays."""
    previous = run.load_json(CONFIG) or {}
    legacy = previous.get("recipe")  # config.json of older versions: the last call's recipe only
    earlier = previous.get("recipes", {legacy["model_type"]: legacy} if isinstance(legacy, dict) else {})
    recipes = {**earlier, recipe.model_type: recipe.to_json()}
    return {
        "seed": seed,
        "dataset": info.to_json(),
        "data_root": str(Path(data_root).resolve()),
        "device": str(device.torch_device),
        "world_size": world.size,  # of the last `qsenn train` call (each stage's events record its own)
        "versions": library_versions(),
        "recipes": recipes,
    }
