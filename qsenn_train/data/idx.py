"""Reader for the IDX format of (Fashion-)MNIST: big-endian header, then raw unsigned bytes."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import QsennError

_UBYTE = 0x08  # the only element type the MNIST family uses
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path):
    """Plain or gzipped file; decided by content, so a renamed file still reads."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _malformed(path: Path, problem: str) -> QsennError:
    return QsennError(f"IDX file {path} is malformed ({problem}); replace it with the original download")


def _parse_header(path: Path, stream, ndim: int) -> tuple[int, ...]:
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != _UBYTE or magic[3] != ndim:
        raise _malformed(
            path, f"magic {magic.hex() or 'missing'}, expected 0000080{ndim} for {ndim}-dimensional unsigned bytes"
        )
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise _malformed(path, "header truncated")
    return struct.unpack(f">{ndim}I", dims)


def read_idx_header(path: str | Path, ndim: int) -> tuple[int, ...]:
    """The shape an IDX file declares, reading only its header."""
    path = Path(path)
    try:
        with _open(path) as stream:
            return _parse_header(path, stream, ndim)
    except (OSError, EOFError, zlib.error) as exc:
        raise _malformed(path, str(exc)) from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The whole array of an IDX file of unsigned bytes with `ndim` dimensions."""
    path = Path(path)
    try:
        with _open(path) as stream:
            shape = _parse_header(path, stream, ndim)
            data = stream.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _malformed(path, str(exc)) from None
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise _malformed(path, f"header declares shape {shape} = {expected} bytes, file holds {len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)
