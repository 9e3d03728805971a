"""Keeping native libraries off standard output.

onnxruntime's execution providers, the CUDA libraries they load and TensorRT write from C and C++
straight to file descriptor 1 (provider fallbacks, library warnings), past Python's sys.stdout.
Standard output is the result channel of `qsenn predict --json`, so while such a library is set up
file descriptor 1 points at standard error: what it prints is still seen, and stdout stays valid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.Lock()  # file descriptor 1 is one per process


def _flush_c_stdio() -> None:
    """fflush(NULL): what C's stdio (and C++ iostreams synced with it) buffered goes out now, to
    wherever file descriptor 1 points at this moment."""
    with contextlib.suppress(OSError, AttributeError):  # no C library to reach (not on Linux or macOS)
        ctypes.CDLL(None).fflush(None)


def _flush_python_stdout() -> None:
    if sys.stdout is not None:
        sys.stdout.flush()


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Within the block, everything written to file descriptor 1 — by Python or by native code —
    goes to standard error instead."""
    with _LOCK:
        _flush_python_stdout()
        try:
            saved = os.dup(1)
        except OSError:  # standard output is closed: nothing to protect
            yield
            return
        try:
            os.dup2(2, 1)
            yield
        finally:
            _flush_python_stdout()
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)
