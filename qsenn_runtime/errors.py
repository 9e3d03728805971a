"""Errors of the runtime. Every message is one line that names the file or input and says what to do."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class QsennRuntimeError(Exception):
    """A problem the user can fix; the CLI prints the message without a traceback."""


class InputError(QsennRuntimeError):
    """One input image cannot be used (unreadable, too large, wrong array shape or dtype, NaN)."""


class BackendError(QsennRuntimeError):
    """The model cannot run here: unknown/unavailable execution provider, TensorRT or GPU mismatch."""


class IdentityCheckError(QsennRuntimeError):
    """The logits are not the sum of the contributions plus the bias: the model file is broken."""


# The same helper lives in qsenn_train.errors (the runtime imports nothing of ours, and
# training may not import the runtime); tests/test_error_lines.py keeps the two equal
# (first_line and path_problem).
MAX_REASON_CHARS = 300


def first_line(exc: BaseException, limit: int = MAX_REASON_CHARS) -> str:
    """An exception as a short reason inside one line: the first non-blank line of its message,
    or its type name when the message is empty (torch's EOFError on a zero-byte file has none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def path_problem(path: Path) -> str | None:
    """Why `path` cannot be opened as a file, in words (None when it is a regular file)."""
    try:
        mode = os.stat(path).st_mode  # follows symbolic links
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)})"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "no such file"
        return first_line(exc)
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None
