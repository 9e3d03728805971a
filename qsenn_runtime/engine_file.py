"""The `.engine` container: a TensorRT plan with the qsenn metadata stored in front of it.

TensorRT plans have no place for user metadata, so the file is
`MAGIC | u64 little-endian length of the JSON | metadata JSON | serialized plan`.
Writing and reading need no TensorRT.
"""

from __future__ import annotations

import struct
from pathlib import Path

from .metadata import MetadataError, ModelMetadata

MAGIC = b"QSENN-TRT\x00"
_LENGTH = struct.Struct("<Q")
MAX_METADATA_BYTES = 64 << 20


def pack_engine(metadata: ModelMetadata, plan: bytes) -> bytes:
    if metadata.engine is None:
        raise ValueError("engine metadata (TensorRT version, GPU, precision) is required")
    text = metadata.to_json().encode()
    return MAGIC + _LENGTH.pack(len(text)) + text + bytes(plan)


def unpack_engine(blob: bytes, source: str = "engine") -> tuple[ModelMetadata, bytes]:
    """(metadata, TensorRT plan bytes); a foreign or damaged file is a MetadataError."""
    if not blob.startswith(MAGIC):
        raise MetadataError(
            f"{source} is not a qsenn engine (it does not start with the qsenn "
            f"header); build engines with `qsenn export --format trt`"
        )
    start = len(MAGIC) + _LENGTH.size
    if len(blob) < start:
        raise MetadataError(f"{source} is truncated (no metadata length)")
    (length,) = _LENGTH.unpack_from(blob, len(MAGIC))
    if length > MAX_METADATA_BYTES or start + length > len(blob):
        raise MetadataError(f"{source} is truncated or damaged (metadata length {length})")
    metadata = ModelMetadata.from_json(blob[start : start + length])
    plan = blob[start + length :]
    if not plan:
        raise MetadataError(f"{source} holds metadata but no TensorRT plan (truncated file)")
    if metadata.engine is None:
        raise MetadataError(f"{source}: the metadata lacks the engine section (TensorRT version, GPU)")
    return metadata, plan


def read_engine_file(path: str | Path) -> tuple[ModelMetadata, bytes]:
    return unpack_engine(Path(path).read_bytes(), source=str(path))
