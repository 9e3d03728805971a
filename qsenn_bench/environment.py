"""The machine and library versions a result belongs to (torch-free: versions are read from the
installed distributions, so the runtime benchmarks use it without importing torch)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from qsenn_train.versions import library_versions


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
