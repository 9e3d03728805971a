"""Dynamic batching: rows of concurrent requests gathered into one backend call, then split back.

The first waiting request opens a window; requests arriving within it join the batch until it
holds `max_batch` rows (a request is never split across calls). While every instance is busy,
arrivals keep joining the next batch, which leaves as soon as an instance is free. A window of
0 turns batching off: each request is its own call. Either way at most `instances` backend
calls run at once, as in Triton's instance groups.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

Run = Callable[[np.ndarray], Sequence[np.ndarray]]  # a batch of rows -> outputs with one row each


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future


class BatchStatistics:
    """Backend calls by batch size, with the time they took (Triton's statistics extension)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[int] = Counter()  # batch size -> calls
        self.nanoseconds: Counter[int] = Counter()  # batch size -> total time

    def record(self, size: int, nanoseconds: int) -> None:
        with self._lock:
            self.calls[size] += 1
            self.nanoseconds[size] += nanoseconds

    @property
    def executions(self) -> int:
        return sum(self.calls.values())

    @property
    def rows(self) -> int:
        return sum(size * n for size, n in self.calls.items())


class DynamicBatcher:
    def __init__(self, run: Run, *, max_batch: int, window_s: float, instances: int = 1, name: str = "model"):
        if max_batch < 1 or instances < 1 or window_s < 0:
            raise ValueError(f"max_batch {max_batch} and instances {instances} must be ≥ 1, window_s {window_s} ≥ 0")
        self._run = run
        self.max_batch = max_batch
        self.window_s = window_s
        self.instances = instances
        self.statistics = BatchStatistics()
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"qsenn-{name}")
        self._slots: asyncio.Semaphore | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def batching(self) -> bool:
        return self.window_s > 0

    async def start(self) -> None:
        """Bind to the running event loop (call once, from it)."""
        self._slots = asyncio.Semaphore(self.instances)
        if self.batching:
            self._queue = asyncio.Queue()
            self._collector = asyncio.create_task(self._collect())

    async def submit(self, rows: np.ndarray) -> list[np.ndarray]:
        """The outputs for `rows` (at most max_batch of them); the backend's exception if it fails."""
        if self._slots is None:
            raise RuntimeError("the batcher is not started")
        if not 1 <= len(rows) <= self.max_batch:
            raise ValueError(f"{len(rows)} rows; a call takes 1 to {self.max_batch}")
        if self._queue is None:
            async with self._slots:
                return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed_run, rows)
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(rows, future))
        return await future

    async def stop(self) -> None:
        """After the last request: finish running calls, then release the threads."""
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    # -- internals ------------------------------------------------------------------------
    def _timed_run(self, rows: np.ndarray) -> list[np.ndarray]:
        began = time.perf_counter_ns()
        outputs = list(self._run(rows))
        self.statistics.record(len(rows), time.perf_counter_ns() - began)
        return outputs

    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry if carry is not None else await queue.get()
            carry = None
            if first.future.done():  # its request timed out or went away while queued
                continue
            batch, size = [first], len(first.rows)
            deadline = loop.time() + self.window_s
            while size < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                size, carry = self._join(batch, size, item)
                if carry is not None:
                    break
            await self._slots.acquire()
            # what arrived while every instance was busy joins too
            while carry is None and size < self.max_batch and not queue.empty():
                size, carry = self._join(batch, size, queue.get_nowait())
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _join(self, batch: list[_Pending], size: int, item: _Pending) -> tuple[int, _Pending | None]:
        """Add `item` to the batch if it fits: (new size, the item if it must wait for the next)."""
        if item.future.done():
            return size, None
        if size + len(item.rows) > self.max_batch:
            return size, item
        batch.append(item)
        return size + len(item.rows), None

    async def _execute(self, batch: list[_Pending]) -> None:
        assert self._slots is not None
        try:
            rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._timed_run, rows)
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        else:
            start = 0
            for pending in batch:
                n = len(pending.rows)
                if not pending.future.done():
                    pending.future.set_result([output[start : start + n] for output in outputs])
                start += n
        finally:
            self._slots.release()
