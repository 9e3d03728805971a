"""The processes of one training job (torch.distributed): who this process is and what the
ranks share.

A job of one process (the default) has a World of size 1 whose collectives do nothing, so the
single-process code path is the distributed one with W = 1. Under torchrun every rank runs the
same stages in the same order; rank 0 alone touches the run directory and runs the sparse-GLM
stages, and hands their results to the others over the process group (`on_main`), so the other
ranks never need the run directory's files (nodes need not share a filesystem for results).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import QsennError, first_line
from .names import DEFAULT_STAGE_TIMEOUT_S, FOLLOWER_EXIT_CODE

T = TypeVar("T")

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class RankFailed(QsennError):
    """Rank 0 failed inside a stage it ran for every rank: the other ranks stop without a line
    of their own (rank 0 printed the cause)."""

    quiet = True
    exit_code = FOLLOWER_EXIT_CODE


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in LAUNCH_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


@dataclass
class World:
    """This process's place in the job, and the collectives the stages use."""

    rank: int = 0
    size: int = 1
    backend: str = ""
    stage_timeout_s: float = DEFAULT_STAGE_TIMEOUT_S
    _waits: Any = field(default=None, repr=False)  # gloo group for the long waits on rank 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    # -- collectives (no-ops for one process) ----------------------------------------------
    def broadcast(self, value: T) -> T:
        """Rank 0's value, on every rank."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self._waits)
        return box[0]  # type: ignore[return-value]

    def on_main(self, stage: str, compute: Callable[[], T]) -> T:
        """Run `compute` on rank 0 only and give its result to every rank. The others wait up to
        the stage timeout; a failure on rank 0 stops every rank (rank 0 alone reports it)."""
        if not self.distributed:
            return compute()
        if self.is_main:
            try:
                result: tuple[str, Any] = ("ok", compute())
            except BaseException as exc:
                self._send(("failed", first_line(exc)), stage)
                raise
            return self._send(result, stage)[1]
        status, value = self._send(None, stage)
        if status != "ok":
            raise RankFailed(f"rank 0 failed in {stage}: {value}")
        return value

    def main_only(self, stage: str, compute: Callable[[], T]) -> T | None:
        """Run `compute` on rank 0 only and keep its result there; the other ranks get None once
        it has finished (what they need of it reaches them otherwise)."""
        results: list[T] = []
        self.on_main(stage, lambda: results.append(compute()))
        return results[0] if results else None

    def _send(self, payload: Any, stage: str) -> Any:
        box = [payload]
        try:
            dist.broadcast_object_list(box, src=0, group=self._waits)
        except RuntimeError as exc:
            if self.is_main:
                raise
            raise QsennError(
                f"rank {self.rank} of {self.size}: no result from rank 0 for {stage} within {self.stage_timeout_s:.0f} s "
                f"or rank 0 is gone ({first_line(exc)}); raise --stage-timeout if the stage needs longer"
            ) from None
        return box[0]

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's tensor (all the same shape), in rank order."""
        if not self.distributed:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return parts

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks, in float64 (epoch statistics, test accuracy)."""
        if not self.distributed:
            return values
        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else None
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's picklable value, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value, group=self._waits)
        return values

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def join_world(device_name: str, stage_timeout_s: float = DEFAULT_STAGE_TIMEOUT_S) -> tuple[World, str]:
    """The World of this process, joined when torchrun started it; and the device it trains on
    (`auto`/`cuda` become the local rank's GPU)."""
    if not launched_by_torchrun():
        return World(stage_timeout_s=stage_timeout_s), device_name
    rank, size, local = (int(os.environ[name]) for name in LAUNCH_VARIABLES)
    cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name.startswith("cuda:"):
        raise QsennError(
            f"--device {device_name}: under torchrun each rank uses its local GPU; pass --device cuda "
            "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if cuda:
        if local >= torch.cuda.device_count():
            raise QsennError(
                f"rank {rank}: local rank {local} but this node has {torch.cuda.device_count()} GPU(s); "
                "use --nproc-per-node ≤ the GPU count"
            )
        torch.cuda.set_device(local)
        device_name = f"cuda:{local}"
    elif device_name == "auto":
        device_name = "cpu"
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    # broadcast_object_list and the waits for rank 0 go through a CPU (gloo) group with the stage
    # timeout: NCCL's watchdog would abort a rank that waits hours for a glm-saga path.
    waits = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=stage_timeout_s))
    world = World(rank, size, backend, stage_timeout_s, waits)
    return world, device_name
