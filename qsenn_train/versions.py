"""The versions of qsenn and the libraries it runs on, as every record states them (run
configuration, exported metadata, benchmark results). Read from the installed distributions,
so nothing heavy is imported."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform

LIBRARIES = (
    "qsenn",
    "torch",
    "torchvision",
    "glm-saga",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
)
SOURCE_TREE = "source tree"  # qsenn run from a checkout that is not installed


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """{"python": …, name: version} for every installed distribution of `names`."""
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    versions.setdefault("qsenn", SOURCE_TREE)
    return versions
