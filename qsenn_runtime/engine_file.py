"""The `.engine` container: a TensorRT plan with the qsenn metadata stored in front of it.

TensorRT plans have no place for user metadata, so the file is
`MAGIC | u64 little-endian length of the JSON | metadata JSON | serialized plan`.
Writing and reading need no TensorRT. The metadata's engine section records the plan's size and
sha256, so a damaged or replaced plan is refused without TensorRT (by `qsenn inspect` too); only
TensorRT can tell whether intact bytes are a plan it can run.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from .metadata import MetadataError, ModelMetadata

MAGIC = b"QSENN-TRT\x00"
_LENGTH = struct.Struct("<Q")
MAX_METADATA_BYTES = 64 << 20
PLAN_BYTES_KEY, PLAN_SHA256_KEY = "plan_bytes", "plan_sha256"  # in the metadata's engine section


def pack_engine(metadata: ModelMetadata, plan: bytes) -> bytes:
    if metadata.engine is None:
        raise ValueError("engine metadata (TensorRT version, GPU, precision) is required")
    plan = bytes(plan)
    digest = {PLAN_BYTES_KEY: len(plan), PLAN_SHA256_KEY: hashlib.sha256(plan).hexdigest()}
    text = metadata.with_engine({**metadata.engine, **digest}).to_json().encode()
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
    try:
        metadata = ModelMetadata.from_json(blob[start : start + length])
    except MetadataError as exc:
        raise MetadataError(f"{source}: {exc}") from None
    plan = blob[start + length :]
    if not plan:
        raise MetadataError(f"{source} holds metadata but no TensorRT plan (truncated file)")
    if metadata.engine is None:
        raise MetadataError(f"{source}: the metadata lacks the engine section (TensorRT version, GPU)")
    check_plan(metadata.engine, plan, source)
    return metadata, plan


def check_plan(engine: dict, plan: bytes, source: str) -> None:
    """The plan must be the one packed: its size and sha256 as recorded (engines packed before
    these were recorded are not compared)."""
    size, digest = engine.get(PLAN_BYTES_KEY), engine.get(PLAN_SHA256_KEY)
    if size is not None and len(plan) != size:
        raise MetadataError(
            f"{source}: its TensorRT plan has {len(plan):,} bytes but {size:,} were packed (truncated or "
            f"damaged file); build the engine again with `qsenn export --format trt`"
        )
    if digest is not None and hashlib.sha256(plan).hexdigest() != digest:
        raise MetadataError(
            f"{source}: its TensorRT plan is not the one packed (sha256 mismatch: damaged or replaced "
            f"bytes); build the engine again with `qsenn export --format trt`"
        )


def read_engine_file(path: str | Path) -> tuple[ModelMetadata, bytes]:
    return unpack_engine(Path(path).read_bytes(), source=str(path))
