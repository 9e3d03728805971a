"""One loaded model serving many threads at once with a mix of good and bad inputs; shared by
tests/test_concurrency.py and benchmarks/reliability_figures.py.

Every input is first predicted once on its own (the sequential reference); then each thread
draws inputs at random (seeded per thread) and checks every answer against that reference:
good inputs must give bitwise the same logits and features, bad ones the same one-line error.
Resident memory is read at the start, the middle and the end of the concurrent run.
"""

from __future__ import annotations

import io
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qsenn_runtime.errors import InputError
from qsenn_runtime.model import Model
from qsenn_runtime.results import PredictionError


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def mixed_inputs(folder: Path) -> dict[str, object]:
    """Named inputs of every accepted kind, good and bad; one list is a batch of three."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    png, jpeg = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    Image.fromarray(pixels).save(jpeg, "JPEG", quality=90)
    path = folder / "photo.png"
    path.write_bytes(png.getvalue())
    nan = rng.random((20, 30, 3))
    nan[1, 2, 0] = np.nan
    return {
        "path": str(path),
        "png bytes": png.getvalue(),
        "jpeg bytes": jpeg.getvalue(),
        "uint8 array": pixels,
        "float array": rng.random((33, 21, 3)),
        "grey array": rng.integers(0, 256, (40, 40), dtype=np.uint8),
        "bad: truncated": jpeg.getvalue()[:300],
        "bad: text": b"not an image at all",
        "bad: nan array": nan,
        "bad: 5 channels": np.zeros((8, 8, 5), np.uint8),
        "bad: missing file": str(folder / "missing.png"),
        "bad: empty bytes": b"",
        "batch": [png.getvalue(), nan, pixels],
    }


Answer = tuple[Any, Any]  # (logits, features) or ("error", the message)


def answer(model: Model, source: Any) -> Answer | list[Answer]:
    """What a call returns, reduced to comparable values: (logits, features) or the error line."""
    try:
        result = model.predict(source)
    except InputError as exc:
        return ("error", str(exc))
    if isinstance(result, list):
        return [("error", r.error) if isinstance(r, PredictionError) else (r.logits, r.features) for r in result]
    return (result.logits, result.features)


@dataclass
class ServingReport:
    threads: int
    per_thread: int
    served: int  # predictions answered (a batch of three counts three)
    good: int
    bad: int
    mismatches: int  # answers that differ from the sequential reference
    unexpected: list  # exceptions other than InputError (type: message)
    seconds: float
    rss_start_mib: float
    rss_middle_mib: float
    rss_end_mib: float

    @property
    def growth_mib(self) -> float:
        return self.rss_end_mib - self.rss_start_mib

    def line(self) -> str:
        return (
            f"{self.threads} threads × {self.per_thread} calls: {self.served} predictions "
            f"({self.good} good, {self.bad} bad inputs) in {self.seconds:.1f} s; "
            f"{self.mismatches} mismatches, {len(self.unexpected)} unexpected errors; "
            f"RSS {self.rss_start_mib:.1f} → {self.rss_middle_mib:.1f} → {self.rss_end_mib:.1f} MiB "
            f"({self.growth_mib:+.1f} MiB)"
        )


def serve(model, inputs: dict[str, object], threads: int = 8, per_thread: int = 500, seed: int = 0) -> ServingReport:
    names = sorted(inputs)
    reference = {name: answer(model, inputs[name]) for name in names}
    for _ in range(20):  # let the allocator and onnxruntime's arena settle
        answer(model, inputs["path"])
    lock = threading.Lock()
    counts = {"calls": 0, "served": 0, "good": 0, "bad": 0, "mismatches": 0}
    unexpected: list[str] = []
    half = threading.Event()
    start_barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        rng = random.Random(f"{seed}:{index}")
        start_barrier.wait()
        for _ in range(per_thread):
            name = rng.choice(names)
            try:
                got, failure = answer(model, inputs[name]), None
            except Exception as exc:  # anything but InputError is a bug
                got, failure = None, f"{name}: {type(exc).__name__}: {exc}"
            expected = reference[name]
            if isinstance(got, list) and isinstance(expected, list):
                pairs: list[tuple[Any, Any]] = list(zip(got, expected))
            else:
                pairs = [(got, expected)]
            with lock:
                counts["calls"] += 1
                if failure:
                    unexpected.append(failure)
                else:
                    counts["mismatches"] += sum(a != b for a, b in pairs)
                    counts["bad"] += sum(want[0] == "error" for _, want in pairs)
                    counts["good"] += sum(want[0] != "error" for _, want in pairs)
                    counts["served"] += len(pairs)
                if counts["calls"] == threads * per_thread // 2:
                    half.set()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    rss_start = rss_mib()
    began = time.perf_counter()
    start_barrier.wait()
    half.wait(timeout=600)
    rss_middle = rss_mib()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - began
    return ServingReport(
        threads,
        per_thread,
        counts["served"],
        counts["good"],
        counts["bad"],
        counts["mismatches"],
        unexpected,
        seconds,
        rss_start,
        rss_middle,
        rss_mib(),
    )
