"""`qsenn train --nproc-per-node N …`: start the job through torch's elastic launcher (torchrun's
own code), one process per GPU, each running the same `qsenn train` without the launch options.
A scheduler that launches processes itself runs `torchrun … -m cli train …` instead; the
training code only reads the variables torchrun sets (distributed.join_world)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import QsennError
from .names import FOLLOWER_EXIT_CODE

# The options that only this launcher reads; everything else goes to every rank unchanged.
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")
DEFAULT_MASTER_PORT = 29500  # torchrun's


@dataclass(frozen=True)
class Launch:
    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    def check(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise QsennError("--nproc-per-node and --nnodes take a count of at least 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise QsennError(
                f"--node-rank {self.node_rank} is not one of the {self.nnodes} nodes (0 … {self.nnodes - 1})"
            )
        if self.nnodes > 1 and self.master_addr is None:
            raise QsennError(
                "a job of several nodes needs --master-addr HOST (node 0's address, reachable from every node)"
            )

    @property
    def needed(self) -> bool:
        """One process on one node is a plain run: no launcher."""
        return self.nproc_per_node * self.nnodes > 1

    def torchrun_args(self, train_args: Sequence[str]) -> list[str]:
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}"]
        if self.nnodes == 1 and self.master_addr is None and self.master_port is None:
            args.append("--standalone")  # a free local port, as `torchrun --standalone`
        else:
            args += [
                f"--master-addr={self.master_addr or '127.0.0.1'}",
                f"--master-port={self.master_port or DEFAULT_MASTER_PORT}",
            ]
        return [*args, "-m", "cli", "train", *train_args]


def without_launch_options(argv: Sequence[str]) -> list[str]:
    """`qsenn train`'s arguments minus the launch options (`--opt V` and `--opt=V` forms)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            kept.append(arg)
    return kept


def launch(job: Launch, train_args: Sequence[str], device: str) -> None:
    """Run the job on this node; a failed rank becomes one line each (its own line came first)."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    job.check()
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") and torch.cuda.is_available() else 0
    if gpus and job.nproc_per_node > gpus:
        raise QsennError(
            f"--nproc-per-node {job.nproc_per_node}: this node has {gpus} GPU(s), one process each; "
            f"use --nproc-per-node {gpus} (or --device cpu)"
        )
    # torchrun's default for several processes is one thread each, with a warning; share the cores.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // job.nproc_per_node)))
    # The agent's own log repeats each failure as a multi-line report; our lines replace it.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(job.torchrun_args(train_args)))
    except ChildFailedError as exc:
        failed = sorted((rank, failure.exitcode) for rank, failure in exc.failures.items())
        # The agent stops the other ranks with SIGTERM once one fails, and ranks that stop because
        # rank 0 failed exit with FOLLOWER_EXIT_CODE: those are not causes.
        causes = [(rank, code) for rank, code in failed if code not in (-signal.SIGTERM, FOLLOWER_EXIT_CODE)] or failed
        lines = [_failure_line(rank, code) for rank, code in causes]
        stopped = " (the launcher stopped the other ranks)" if len(causes) < job.nproc_per_node else ""
        if all(code > 0 for _, code in causes):  # the rank printed its own error line
            raise QsennError("; ".join(lines) + stopped + "; its error is above") from None
        raise QsennError("; ".join(lines) + stopped + "; rerun the same command with --resume to continue") from None


def _failure_line(rank: int, exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"rank {rank} was killed by {name}"
    return f"rank {rank} exited with code {exitcode}"
