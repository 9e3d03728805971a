"""How `qsenn bench` measures: trtexec-style latency statistics, interleaved timed calls, peak
memory in a fresh process or from the CUDA allocator, and onnxruntime's per-operator profile."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qsenn_runtime.metadata import INPUT_NAME

from .errors import BenchError

if TYPE_CHECKING:
    import torch

    from .backends import Runner

REPO_ROOT = Path(__file__).resolve().parents[1]
# Code that prints the process's peak RSS in KiB. VmHWM, not ru_maxrss: Linux carries a parent's
# peak RSS over fork and exec into the child's ru_maxrss.
PEAK_RSS_KIB = "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))"
# After a CPU backend's call its worker threads spin for a moment; a short pause keeps them from
# stealing cores from the next backend's timed call.
CPU_PAUSE_S = 0.005
PROFILE_RUNS = 3
PROFILE_BATCH = 1


def latency_summary(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {
        "n": len(ms),
        "min_ms": float(ms.min()),
        "mean_ms": float(ms.mean()),
        **{
            f"{name}_ms": float(np.percentile(ms, q))
            for name, q in (("median", 50), ("p90", 90), ("p95", 95), ("p99", 99))
        },
    }


def first_call(runner: Runner, batch: np.ndarray) -> tuple[Any, float]:
    """(the prepared batch, seconds of the first call): compilation, CUDA-graph capture and
    allocations happen here, outside the timed calls."""
    prepared = runner.prepare(batch)
    start = time.perf_counter()
    runner.run(prepared)
    return prepared, time.perf_counter() - start


def time_interleaved(
    runners: list[Runner], prepared: dict[str, Any], warmup: int, iters: int
) -> dict[str, list[float]]:
    """Seconds per timed call of each runner, after `warmup` untimed calls each; see the module
    docstring for the interleaving."""
    for runner in runners:
        for _ in range(warmup):
            runner.run(prepared[runner.name])
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    gc.collect()
    gc.disable()
    try:
        previous_on_cpu = False
        for i in range(iters):
            shift = i % len(runners)
            for runner in runners[shift:] + runners[:shift]:
                if previous_on_cpu:
                    time.sleep(CPU_PAUSE_S)
                start = time.perf_counter()
                runner.run(prepared[runner.name])
                times[runner.name].append(time.perf_counter() - start)
                previous_on_cpu = not runner.gpu
    finally:
        gc.enable()
    return times


def peak_rss_mib(probe: tuple[str, ...], batch: int) -> float:
    """Peak RSS of a fresh process running `probe` (code, path, threads, …) on one batch."""
    code, path, *rest = probe
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))}
    result = subprocess.run(
        [sys.executable, "-c", code, path, str(batch), *rest], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise BenchError(f"the memory probe of {Path(path).name} failed: {last_line}")
    return float(result.stdout.split()[-1]) / 1024


def peak_gpu_mib(runner: Runner, batch: np.ndarray, device: torch.device) -> float:
    """CUDA allocator peak during two calls, over what was allocated before, plus the weights."""
    images = runner.prepare(batch)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        runner.run(images)
    return (torch.cuda.max_memory_allocated(device) - before + runner.weights_bytes) / 2**20


def onnx_op_profile(path: Path, batch: np.ndarray, threads: int, runs: int = PROFILE_RUNS) -> dict:
    """onnxruntime's own profile of `runs` calls: per operator type of the optimised graph the
    number of nodes, milliseconds per call and share of the node time — which kernels run
    (QLinearConv, ConvInteger, or DequantizeLinear feeding a float Conv)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="qsenn-profile-") as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first call (allocations) is dropped below
            session.run(None, {INPUT_NAME: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_call = len(nodes) // (runs + 1)
    ops: dict[str, dict] = {}
    for event in nodes[per_call:]:
        op = ops.setdefault(event["args"]["op_name"], {"nodes": set(), "ms": 0.0})
        op["nodes"].add(event["name"])
        op["ms"] += event["dur"] / 1e3 / runs
    total = sum(op["ms"] for op in ops.values()) or 1.0
    return {
        name: {"nodes": len(op["nodes"]), "ms": round(op["ms"], 3), "share": round(op["ms"] / total, 4)}
        for name, op in sorted(ops.items(), key=lambda item: -item[1]["ms"])
    }


def profile_line(name: str, profile: dict) -> str:
    top = ", ".join(f"{op} {100 * p['share']:.0f}%" for op, p in list(profile.items())[:5])
    float_convs = profile.get("Conv", {}).get("nodes", 0) + profile.get("FusedConv", {}).get("nodes", 0)
    integer = profile.get("QLinearConv", {}).get("nodes", 0) + profile.get("ConvInteger", {}).get("nodes", 0)
    note = f"; {integer} integer and {float_convs} float conv nodes" if integer else ""
    return f"{name} kernels at batch {PROFILE_BATCH}: {top}{note}"
