"""What every benchmark reports the same way: trtexec-style latency statistics and the machine
and library versions, and result files named by device and versions (timm's habit).

Torch-free (versions are read from the installed distributions), so the runtime benchmarks
use it without importing torch.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
from pathlib import Path

import numpy as np

# Code that prints the process's peak RSS in KiB. VmHWM, not ru_maxrss: Linux carries a parent's
# peak RSS over fork and exec into the child's ru_maxrss.
PEAK_RSS_KIB = "print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))"
LIBRARIES = ("qsenn", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy")


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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide which integer kernels onnxruntime can use."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx")))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def environment(gpu: str | None = None) -> dict:
    """The machine and libraries a result belongs to; `gpu` names the GPU when one was used."""
    return {
        "device": gpu or cpu_name(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "gpu": gpu,
        "cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **library_versions(),
    }


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def result_name(kind: str, model: str, env: dict, libraries: tuple[str, ...] = ("torch", "onnxruntime")) -> str:
    """<kind>_<model>_<device>_<library><version>…, e.g.
    bench_resnet50-448-random_amd-epyc_torch2.14.1_onnxruntime1.32.0 (no suffix)."""
    versions = "_".join(f"{name}{env[name]}" for name in libraries if name in env)
    return "_".join(part for part in (kind, slug(model), slug(env["device"]), versions) if part)
