"""Test-only fault injection: SIGKILL this process at a chosen point inside a stage.

    QSENN_KILL_AT="<stage>:<n>"   (read once, at import)

arms every stage run under `context.timed()` whose label contains <stage> (e.g. "dense training",
"iter2: fine-tuning", "metrics (qsenn)"): the stage's Python function calls are counted and at
the n-th one the process sends itself SIGKILL, as the OOM killer or a pulled plug would end it
(no exception, no cleanup, no flush). A stage that makes fewer calls is killed at its end.
With n = 0 nothing is killed; the events logged while an armed stage runs (epochs, stage_time)
then carry `calls`, the count so far, so a test can pick points inside a stage.

Counting calls makes a point reproducible where a timer would not be on a loaded machine, and a
point can land anywhere: mid-batch, inside torch.save, between a rename and the manifest update.
Unset, as in production, nothing is installed; a stage pays one comparison. Under torchrun,
QSENN_KILL_RANK=<r> arms rank r alone (a rank killed while the others train on).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "QSENN_KILL_AT"
RANK_ENV = "QSENN_KILL_RANK"  # under torchrun: arm only the rank of that number (default: every rank)


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    stage, _, n = spec.rpartition(":")
    return stage, int(n)


def _this_rank_armed() -> bool:
    wanted = os.environ.get(RANK_ENV)
    return wanted is None or wanted == os.environ.get("RANK", "0")


_TARGET = _parse(os.environ.get(ENV)) if _this_rank_armed() else None
_calls: int | None = None  # calls made so far by the armed stage that is running


@contextmanager
def armed(label: str) -> Iterator[None]:
    """Run a stage, killing the process inside it when QSENN_KILL_AT names it."""
    global _calls
    if _TARGET is None or _TARGET[0] not in label:
        yield
        return
    kill_at = _TARGET[1]

    def count(frame, event, arg):
        global _calls
        if event == "call":
            _calls += 1
            if _calls == kill_at:
                _kill(label, f"call {_calls} ({frame.f_code.co_name} in {frame.f_code.co_filename}:{frame.f_lineno})")

    _calls = 0
    previous = sys.getprofile()
    sys.setprofile(count)
    try:
        yield
    finally:
        sys.setprofile(previous)
        made, _calls = _calls, None
    if kill_at:
        _kill(label, f"its end, after {made} calls")


def counted() -> dict:
    """{"calls": n} while an armed stage runs in counting mode (n = 0), else {}."""
    return {"calls": _calls} if _calls is not None and _TARGET is not None and not _TARGET[1] else {}


def _kill(label: str, where: str) -> None:
    sys.stderr.write(f"{ENV}: SIGKILL in {label!r} at {where}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
