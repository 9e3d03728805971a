"""The run directory: atomically written stage results with a sha256 manifest, and an event log.

Every result is written to a temporary name and renamed, so a crash never leaves a file
that looks finished. Temporaries carry their writer's pid (`.name.tmpPID`, `.name.partialPID`):
the next run deletes those whose process is gone. The manifest records each result's sha256;
a file whose hash does not match (truncated, altered) is reported in one line and treated as
absent, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import faults
from .errors import QsennError

MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
CONFIG = "config.json"
FINAL_LINK = "final.pt"  # a link to the checkpoint of the run's final model
_TEMPORARY = re.compile(r"^\..+\.(?:tmp|partial)(\d+)$")


def stage_key(*parts: Any) -> str:
    """A short name for a stage's inputs: results of different inputs never collide."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_name(path: Path, kind: str = "tmp") -> Path:
    """Where `path` is written before it is renamed into place (hidden, tagged with our pid)."""
    return path.with_name(f".{path.name}.{kind}{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) then rename tmp over path; the temporary is removed on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


class RunDir:
    """One training run's folder. Names are relative paths inside it."""

    def __init__(self, path: Path, echo: Callable[[str], None] = print):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        manifest = self.path / MANIFEST
        self._manifest: dict[str, dict] = json.loads(manifest.read_text()) if manifest.exists() else {}

    def file(self, name: str) -> Path:
        return self.path / name

    def has_results(self) -> bool:
        """Whether anything but the configuration was saved."""
        return any(name != CONFIG for name in self._manifest)

    # -- writing ------------------------------------------------------------------------
    def _record(self, name: str) -> None:
        path = self.file(name)
        self._manifest[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        write_json_atomic(self.path / MANIFEST, self._manifest)

    def save_with(self, name: str, write: Callable[[Path], None]) -> Path:
        """Write a result through write(tmp_path); rename and record its hash."""
        path = self.file(name)
        atomic_write(path, write)
        self._record(name)
        return path

    def save_torch(self, name: str, obj: Any) -> Path:
        return self.save_with(name, lambda tmp: torch.save(obj, tmp))

    def save_json(self, name: str, obj: Any) -> Path:
        return self.save_with(name, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))

    def remove_stale_temporaries(self) -> int:
        """Delete the temporaries that killed processes left behind (those of live ones stay)."""
        removed = 0
        for folder, _, files in os.walk(self.path):
            for name in files:
                match = _TEMPORARY.match(name)
                if match and not _alive(int(match.group(1))):
                    Path(folder, name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def remove(self, name: str) -> None:
        self.file(name).unlink(missing_ok=True)
        if self._manifest.pop(name, None) is not None:
            write_json_atomic(self.path / MANIFEST, self._manifest)

    # -- reading ------------------------------------------------------------------------
    def intact(self, name: str) -> bool:
        """True when the result exists and matches its manifest hash; a bad file is reported."""
        path = self.file(name)
        entry = self._manifest.get(name)
        if entry is None or not path.exists():
            return False
        if path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]:
            return True
        self.echo(f"warning: {path} is damaged (its sha256 does not match the manifest); recomputing it")
        self.event("damaged_result", name=name)
        return False

    def load_torch(self, name: str) -> Any | None:
        """The stored object, or None when absent or damaged (safe load: tensors and plain data)."""
        if not self.intact(name):
            return None
        try:
            return torch.load(self.file(name), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise QsennError(
                f"refusing to load {self.file(name)}: it holds objects other than "
                f"tensors and plain data, which could run code; delete it"
            ) from None

    def load_json(self, name: str) -> Any | None:
        if not self.intact(name):
            return None
        return json.loads(self.file(name).read_text())

    # -- log ----------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": kind, **fields, **faults.counted()}
        with open(self.path / EVENTS, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
