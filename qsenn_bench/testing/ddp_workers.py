"""Processes of a small gloo job for the distributed-training tests: the same training steps and
the same extraction run by one process and by W, so the tests can compare the results.

`run_job(world_size, job, out)` starts the ranks as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT in the environment) and each calls the training code's own join_world.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import cast

import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from qsenn_train.data.base import ImageListDataset
from qsenn_train.device import Device
from qsenn_train.distributed import World, join_world
from qsenn_train.features import extract_split
from qsenn_train.model import QResNet, build_model
from qsenn_train.recipes import SGDSchedule
from qsenn_train.rundir import FollowerRunDir, RunDir
from qsenn_train.sync_batchnorm import global_batchnorm
from qsenn_train.training import epoch_generator, make_loader, make_sgd, train_epoch

from .toy_models import random_ternary

N_IMAGES = 37  # not a multiple of the batch nor of W: uneven shares and a short tail
N_CLASSES = 4
BATCH = 8
STEPS_EPOCHS = 1  # five steps, the last a short tail split 3 + 2
FDL_BETA = 0.2
LR = 0.005  # small steps: the FDL follows each image's argmax, and a flipped argmax is a jump


class RandomImages(Dataset):
    """Fixed random 32 px images and labels (no augmentation: every rank sees the same pixels);
    stands in for an ImageListDataset (`images()`)."""

    def __init__(self, n: int = N_IMAGES):
        generator = torch.Generator().manual_seed(11)
        self.images = torch.rand(n, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, N_CLASSES, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def images() -> ImageListDataset:
    return cast(ImageListDataset, RandomImages())


def toy_network(sparse: bool) -> QResNet:
    """resnet10 without dropout; with `sparse`, a frozen ternary head on 6 features (a
    fine-tuning round: the backbone and μ/σ train)."""
    torch.manual_seed(5)
    model = build_model("resnet10", N_CLASSES, dropout=0.0)
    if sparse:
        generator = torch.Generator().manual_seed(6)
        selection = torch.tensor([3, 40, 77, 150, 301, 499])
        weight = 0.5 * random_ternary(N_CLASSES, len(selection), 2, generator)
        model.install_sparse_head(selection, torch.zeros(6), torch.ones(6), weight, torch.zeros(N_CLASSES), dropout=0.0)
    return model


def train_steps(world: World, sparse: bool) -> dict[str, torch.Tensor]:
    """SGD with the FDL over global batches of BATCH; the parameters and buffers afterwards."""
    model = toy_network(sparse)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, _ = make_sgd([{"params": trainable, "lr": LR}], _schedule())
    device = Device.resolve("cpu")
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    dataset = images()
    with global_batchnorm(model, world.distributed):
        forward = DistributedDataParallel(model) if world.distributed else model
        for epoch in range(STEPS_EPOCHS):
            loader = make_loader(
                dataset,
                BATCH,
                shuffle=True,
                workers=0,
                generator=epoch_generator(0, "ddp-test", epoch),
                train=True,
                world=world,
            )
            train_epoch(model, loader, optimizer, scaler, device, FDL_BETA, "test", world=world, forward=forward)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _schedule() -> SGDSchedule:
    return SGDSchedule(lr=LR, momentum=0.9, weight_decay=5e-4, step_size=10, gamma=0.1, epochs=2, batch_size=BATCH)


def extract(world: World, out: Path) -> None:
    """Features of the toy network in a shuffled order, in batches of 5, into out/features.npy."""
    model = toy_network(sparse=False).eval()
    run = RunDir(out) if world.is_main else FollowerRunDir(out)
    extract_split(
        model,
        images(),
        run,
        "",
        batch_size=5,
        workers=0,
        device=Device.resolve("cpu"),
        shuffle_seed=1234,
        n_classes=N_CLASSES,
        desc="train",
        world=world,
    )


def _rank_main(rank: int, world_size: int, port: int, job: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    world, _ = join_world("cpu", stage_timeout_s=120)
    try:
        run_one(world, job, Path(out))
    finally:
        world.close()


def run_one(world: World, job: str, out: Path) -> None:
    if job == "extract":
        extract(world, out)
        return
    state = train_steps(world, sparse=job == "finetune")
    if world.is_main:
        torch.save(state, out / "state.pt")


def run_job(world_size: int, job: str, out: Path) -> None:
    """Run `job` ("dense", "finetune" or "extract") with world_size gloo ranks (1: in this process)."""
    out.mkdir(parents=True, exist_ok=True)
    if world_size == 1:
        run_one(World(), job, out)
        return
    mp.start_processes(
        _rank_main, args=(world_size, free_port(), job, str(out)), nprocs=world_size, start_method="spawn"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
