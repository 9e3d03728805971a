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
from torch.utils.data import DataLoader

from .data.base import ImageListDataset
from .device import Device
from .errors import QsennError
from .fdl import feature_diversity_loss
from .model import QResNet
from .progress import progress
from .recipes import SGDSchedule
from .rundir import RunDir


def make_loader(
    dataset: ImageListDataset,
    batch_size: int,
    *,
    shuffle: bool,
    workers: int,
    generator: torch.Generator | None = None,
    train: bool = False,
) -> DataLoader:
    # In training, a trailing batch of one image would break BatchNorm on 1×1 maps; drop only that one.
    drop_last = train and len(dataset) % batch_size == 1
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        drop_last=drop_last,
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
    model: QResNet, loader: DataLoader, optimizer, scaler, device: Device, fdl_beta: float, desc: str
) -> dict:
    model.train()
    totals = {"loss": 0.0, "ce": 0.0, "fdl": 0.0, "correct": 0, "seen": 0}
    bar = progress(loader, desc=desc)
    for images, labels in bar:
        images, labels = device.batch(images), labels.to(device.torch_device)
        with device.autocast():
            out = model(images)
            ce = F.cross_entropy(out.logits, labels)
        fdl = feature_diversity_loss(out.feature_maps, out.logits, model.head_weight, fdl_beta)
        loss = ce.float() + fdl
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = labels.shape[0]
        totals["loss"] += loss.item() * n
        totals["ce"] += ce.item() * n
        totals["fdl"] += fdl.item() * n
        totals["correct"] += (out.logits.argmax(1) == labels).sum().item()
        totals["seen"] += n
        bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.3f}", acc=f"{totals['correct'] / totals['seen']:.3f}")
    if not totals["seen"]:
        raise QsennError("the training set produced no batch; it needs at least 2 images")
    seen = totals.pop("seen")
    correct = totals.pop("correct")
    return {**{k: v / seen for k, v in totals.items()}, "acc": correct / seen}


@torch.no_grad()
def evaluate(model: QResNet, loader: DataLoader, device: Device, desc: str = "test") -> dict:
    """Top-1 accuracy (a fraction) and mean cross-entropy, eval mode."""
    model.eval()
    loss, correct, seen = 0.0, 0, 0
    for images, labels in progress(loader, desc=desc):
        images, labels = device.batch(images), labels.to(device.torch_device)
        with device.autocast():
            logits = model(images).logits.float()
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += labels.shape[0]
    return {"acc": correct / max(seen, 1), "loss": loss / max(seen, 1)}


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
) -> list[dict]:
    """Train for sched.epochs, continuing from the per-epoch checkpoint when one exists."""
    scaler = torch.amp.GradScaler("cuda", enabled=device.amp)
    history: list[dict] = []
    start = 0
    state = run.load_torch(sched.partial_name)
    if state is not None:
        model.load_state_dict(state["model"])
        sched.optimizer.load_state_dict(state["optimizer"])
        sched.scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if device.torch_device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start, history = state["epoch"] + 1, state["history"]
        echo(f"{sched.label}: resuming after epoch {start} of {sched.epochs}")
        run.event("resume", stage=sched.label, epoch=start)

    test_loader = make_loader(test_set, sched.batch_size, shuffle=False, workers=workers)
    for epoch in range(start, sched.epochs):
        loader = make_loader(
            train_set,
            sched.batch_size,
            shuffle=True,
            workers=workers,
            generator=epoch_generator(seed, sched.label, epoch),
            train=True,
        )
        lrs = [g["lr"] for g in sched.optimizer.param_groups]
        stats = train_epoch(
            model, loader, sched.optimizer, scaler, device, fdl_beta, desc=f"{sched.label} {epoch + 1}/{sched.epochs}"
        )
        sched.scheduler.step()
        record = {"epoch": epoch, "lr": lrs, **{f"train_{k}": round(v, 6) for k, v in stats.items()}}
        if epoch % sched.eval_every == 0 or epoch == sched.epochs - 1:
            test = evaluate(model, test_loader, device)
            record.update(test_acc=test["acc"], test_loss=round(test["loss"], 6))
        history.append(record)
        run.event("epoch", stage=sched.label, **record)
        echo(_epoch_line(sched, record))
        checkpoint = {
            "model": model.state_dict(),
            "optimizer": sched.optimizer.state_dict(),
            "scheduler": sched.scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch,
            "history": history,
        }
        if device.torch_device.type == "cuda":
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state()
        run.save_torch(sched.partial_name, checkpoint)
    return history


def _epoch_line(sched: Schedule, r: dict) -> str:
    test = f"  test acc {r['test_acc']:.4f}" if "test_acc" in r else ""
    return (
        f"{sched.label} epoch {r['epoch'] + 1}/{sched.epochs}: loss {r['train_loss']:.4f} "
        f"(ce {r['train_ce']:.4f}, fdl {r['train_fdl']:.4f})  train acc {r['train_acc']:.4f}{test}"
    )
