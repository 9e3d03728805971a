"""The epoch loop shared by dense training (spec §3) and fine-tuning (§8, §9).

Loss = mean cross-entropy + Feature Diversity Loss on the head's current weight. A run of
epochs checkpoints itself after every epoch (model, optimiser, scheduler, RNG), so a killed
run continues from its last finished epoch and reproduces the uninterrupted run on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from .data.base import ImageListDataset
from .device import Device
from .distributed import World
from .errors import QsennError
from .fdl import feature_diversity_loss
from .model import QResNet
from .progress import progress
from .recipes import SGDSchedule
from .rundir import RunDir
from .sharding import GlobalBatches, shuffled_order
from .sync_batchnorm import global_batchnorm


def make_loader(
    dataset: ImageListDataset | Subset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    generator: torch.Generator | None = None,
    train: bool = False,
    world: World | None = None,
) -> DataLoader:
    """This rank's share of each global batch (sharding.GlobalBatches); in training a trailing
    batch too small for BatchNorm on every rank is dropped."""
    world = world or World()
    if shuffle and generator is None:
        raise ValueError("a shuffled pass needs its generator (the epoch's order comes from the run seed)")
    batches = GlobalBatches(
        len(dataset),
        batch_size,
        order=shuffled_order(len(dataset), generator) if shuffle and generator is not None else None,
        rank=world.rank,
        world_size=world.size,
        drop_small_tail=train,
    )
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        generator=generator,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def make_sgd(param_groups: list[dict], schedule: SGDSchedule):
    """SGD (coupled weight decay on every parameter) with a per-epoch StepLR."""
    optimizer = torch.optim.SGD(
        param_groups, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma)
    return optimizer, scheduler


def epoch_generator(seed: int, label: str, epoch: int) -> torch.Generator:
    """The shuffle (and worker seeds) of one epoch depend only on (seed, stage, epoch)."""
    digest = int.from_bytes(label.encode(), "little") % (1 << 31)
    return torch.Generator().manual_seed(seed * 1_000_003 + digest * 7919 + epoch)


def train_epoch(
    model: QResNet,
    loader: DataLoader,
    optimizer,
    scaler,
    device: Device,
    fdl_beta: float,
    desc: str,
    world: World | None = None,
    forward: nn.Module | None = None,
) -> dict:
    """One epoch; `forward` is the DDP wrapper of `model` under torch.distributed."""
    world = world or World()
    forward = forward or model
    forward.train()
    global_sizes = loader.batch_sampler.global_sizes() if isinstance(loader.batch_sampler, GlobalBatches) else []
    totals = {"loss": 0.0, "ce": 0.0, "fdl": 0.0, "correct": 0, "seen": 0}
    bar = progress(loader, desc=desc)
    for step, (images, labels) in enumerate(bar):
        images, labels = device.batch(images), labels.to(device.torch_device)
        with device.autocast():
            out = forward(images)
            ce = F.cross_entropy(out.logits, labels)
        fdl = feature_diversity_loss(out.feature_maps, out.logits, model.head_weight, fdl_beta)
        loss = ce.float() + fdl
        n = labels.shape[0]
        # DDP averages the ranks' gradients; weighting each rank's mean by its share of the global
        # batch makes that average the gradient of the global batch's mean, even uneven tails.
        objective = loss * (world.size * n / global_sizes[step]) if world.distributed else loss
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        scaler.step(optimizer)
        scaler.update()
        totals["loss"] += loss.item() * n
        totals["ce"] += ce.item() * n
        totals["fdl"] += fdl.item() * n
        totals["correct"] += (out.logits.argmax(1) == labels).sum().item()
        totals["seen"] += n
        bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.3f}", acc=f"{totals['correct'] / totals['seen']:.3f}")
    totals = dict(zip(totals, world.sum(list(totals.values())), strict=True))
    if not totals["seen"]:
        raise QsennError("the training set produced no batch; it needs at least 2 images per process")
    seen = totals.pop("seen")
    correct = totals.pop("correct")
    return {**{k: v / seen for k, v in totals.items()}, "acc": correct / seen}


@torch.no_grad()
def evaluate(
    model: QResNet, loader: DataLoader, device: Device, desc: str = "test", world: World | None = None
) -> dict:
    """Top-1 accuracy (a fraction) and mean cross-entropy, eval mode; under torch.distributed each
    rank evaluates its share and the sums are reduced (the accuracy is exact, the loss up to
    summation order)."""
    model.eval()
    loss, correct, seen = 0.0, 0, 0
    for images, labels in progress(loader, desc=desc):
        images, labels = device.batch(images), labels.to(device.torch_device)
        with device.autocast():
            logits = model(images).logits.float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += labels.shape[0]
    loss_sum, n_correct, n_seen = (world or World()).sum([loss, correct, seen])
    return {"acc": n_correct / max(n_seen, 1), "loss": loss_sum / max(n_seen, 1)}


@dataclass
class Schedule:
    """One resumable run of epochs: the optimiser, its scheduler and where to checkpoint."""

    label: str  # names the stage in progress bars, seeds and the event log
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epochs: int
    batch_size: int
    eval_every: int
    partial_name: str  # run-dir name of the per-epoch checkpoint


def run_epochs(
    model: QResNet,
    train_set: ImageListDataset,
    test_set: ImageListDataset,
    sched: Schedule,
    *,
    device: Device,
    fdl_beta: float,
    seed: int,
    workers: int,
    run: RunDir,
    echo: Callable[[str], None] = print,
    world: World | None = None,
    sync_batchnorm: bool = True,
) -> list[dict]:
    """Train for sched.epochs, continuing from the per-epoch checkpoint when one exists. Under
    torch.distributed the model trains as DDP over the ranks (BatchNorm over the global batch
    unless sync_batchnorm is off); rank 0 reads and writes the checkpoint for all."""
    world = world or World()
    scaler = torch.amp.GradScaler("cuda", enabled=device.amp)
    history: list[dict] = []
    start = 0
    state = world.on_main(f"{sched.label}: reading its epoch checkpoint", lambda: run.load_torch(sched.partial_name))
    if state is not None:
        _restore(state, model, sched, scaler, device, world)
        start, history = state["epoch"] + 1, state["history"]
        echo(f"{sched.label}: resuming after epoch {start} of {sched.epochs}")
        run.event("resume", stage=sched.label, epoch=start, world_size=world.size)

    test_loader = make_loader(test_set, sched.batch_size, shuffle=False, workers=workers, world=world)
    with global_batchnorm(model, sync_batchnorm and world.distributed):
        forward = _ddp(model, device) if world.distributed else model
        for epoch in range(start, sched.epochs):
            loader = make_loader(
                train_set,
                sched.batch_size,
                shuffle=True,
                workers=workers,
                generator=epoch_generator(seed, sched.label, epoch),
                train=True,
                world=world,
            )
            lrs = [g["lr"] for g in sched.optimizer.param_groups]
            stats = train_epoch(
                model,
                loader,
                sched.optimizer,
                scaler,
                device,
                fdl_beta,
                desc=f"{sched.label} {epoch + 1}/{sched.epochs}",
                world=world,
                forward=forward,
            )
            sched.scheduler.step()
            record = {"epoch": epoch, "lr": lrs, **{f"train_{k}": round(v, 6) for k, v in stats.items()}}
            if epoch % sched.eval_every == 0 or epoch == sched.epochs - 1:
                test = evaluate(model, test_loader, device, world=world)
                record.update(test_acc=test["acc"], test_loss=round(test["loss"], 6))
            history.append(record)
            run.event("epoch", stage=sched.label, world_size=world.size, **record)
            echo(_epoch_line(sched, record))
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": sched.optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "scheduler": sched.scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "world_size": world.size,
                **_rng_states(device, world),
            }
            run.save_torch(sched.partial_name, checkpoint)
    return history


def _ddp(model: QResNet, device: Device) -> DistributedDataParallel:
    cuda = device.torch_device.type == "cuda"
    return DistributedDataParallel(model, device_ids=[device.torch_device.index] if cuda else None)


def _rng_states(device: Device, world: World) -> dict:
    """The random state of every rank (dropout and augmentation draw per rank), so that a resumed
    run continues each rank's stream; "rng" stays rank 0's for one-process checkpoints."""
    cuda = device.torch_device.type == "cuda"
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None)
    states = world.gather_objects(mine)
    record: dict = {"rng": states[0][0]}
    if cuda:
        record["cuda_rng"] = states[0][1]
    if world.distributed:
        record["rank_rng"] = [cpu for cpu, _ in states]
        if cuda:
            record["rank_cuda_rng"] = [gpu for _, gpu in states]
    return record


def _restore(state: dict, model: QResNet, sched: Schedule, scaler, device: Device, world: World) -> None:
    started = int(state.get("world_size", 1))
    if started != world.size:
        raise QsennError(
            f"{sched.label} was started with {started} process(es) and stopped mid-stage; resume it with "
            f"{started} (--nproc-per-node), or delete {sched.partial_name} in the run directory to restart the stage"
        )
    model.load_state_dict(state["model"])
    sched.optimizer.load_state_dict(state["optimizer"])
    sched.scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rank_rng"][world.rank] if world.distributed else state["rng"])
    if device.torch_device.type == "cuda":
        cuda_rng = state["rank_cuda_rng"][world.rank] if world.distributed else state.get("cuda_rng")
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)


def _epoch_line(sched: Schedule, r: dict) -> str:
    test = f"  test acc {r['test_acc']:.4f}" if "test_acc" in r else ""
    return (
        f"{sched.label} epoch {r['epoch'] + 1}/{sched.epochs}: loss {r['train_loss']:.4f} "
        f"(ce {r['train_ce']:.4f}, fdl {r['train_fdl']:.4f})  train acc {r['train_acc']:.4f}{test}"
    )
