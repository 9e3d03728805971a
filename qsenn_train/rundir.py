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
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import faults
from .errors import QsennError, first_line
from .torchfile import CodeCarryingFile, UnreadableFile, read_torch_file

MANIFEST = "manifest.json"
EVENTS = "events.jsonl"
CONFIG = "config.json"
REGISTRY = "models.json"  # per model type: its final checkpoint and the record of what produced it
TIMINGS = "timings.json"
FINAL_LINK = "final.pt"  # a convenience link to the checkpoint of the model finished last
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


def remove_stale_temporaries(folder: Path, recursive: bool = True) -> int:
    """Delete the temporaries that killed processes left below `folder` (those of live ones stay)."""
    removed = 0
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for where, _, files in walk:
        for name in files:
            match = _TEMPORARY.match(name)
            if match and not _alive(int(match.group(1))):
                Path(where, name).unlink(missing_ok=True)
                removed += 1
    return removed


def final_link_name(model_type: str) -> str:
    """RUN/final_<type>.pt: a convenience link to a model type's final checkpoint."""
    return f"final_{model_type}.pt"


def link_atomically(link: Path, target: str) -> None:
    """A relative symlink `link` → `target`, swapped in atomically."""
    tmp = temporary_name(link)
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
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

    def __init__(self, path: Path, echo: Callable[[str], None] = print, create: bool = True):
        """create=False opens the folder for reading only (run.Run): a damaged result is then
        refused with one error line by the reader instead of reported here as recomputed."""
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        self.recomputes = create
        manifest = self.path / MANIFEST
        try:
            self._manifest: dict[str, dict] = json.loads(manifest.read_text()) if manifest.exists() else {}
        except (OSError, ValueError) as exc:
            raise QsennError(
                f"cannot read {manifest} ({exc}); the run directory is damaged: start it again with --overwrite"
            ) from None

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

    def save_with(self, name: str, write: Callable[[Path], object]) -> Path:
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
        return remove_stale_temporaries(self.path)

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
        if self.recomputes:
            self.echo(f"warning: {path} is damaged (its sha256 does not match the manifest); recomputing it")
            self.event("damaged_result", name=name)
        return False

    def _unreadable(self, name: str, problem: str) -> None:
        """A result that matches its manifest entry yet cannot be read (written damaged, e.g. on a
        full disk): the writer recomputes it, a reader refuses it."""
        path = self.file(name)
        if not self.recomputes:
            raise QsennError(
                f"{path} {problem} (its manifest entry matches: it was saved damaged); "
                f"recompute it with `qsenn train … --resume`"
            )
        self.echo(f"warning: {path} {problem} although its manifest entry matches (saved damaged); recomputing it")
        self.event("unreadable_result", name=name, problem=problem)

    def load_torch(self, name: str) -> Any | None:
        """The stored object, or None when absent or damaged (safe load: tensors and plain data)."""
        if not self.intact(name):
            return None
        try:
            return read_torch_file(self.file(name), "recompute it with `qsenn train … --resume`")
        except CodeCarryingFile as exc:
            raise QsennError(f"{exc}; delete it") from None
        except UnreadableFile as exc:
            self._unreadable(name, exc.problem)
            return None

    def load_array(self, name: str) -> np.ndarray | None:
        """A stored .npy array, memory-mapped (no pickle); None when absent, damaged or unreadable."""
        if not self.intact(name):
            return None
        try:
            return np.load(self.file(name), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:  # numpy's header checks: ValueError mostly
            self._unreadable(name, f"is not a readable .npy array ({first_line(exc)})")
            return None

    def load_json(self, name: str) -> Any | None:
        if not self.intact(name):
            return None
        return json.loads(self.file(name).read_text())

    # -- the registry of finished models and the stage times ------------------------------
    def registry(self) -> dict[str, dict]:
        """{model type: entry} of the models finished in this run (see run.ModelEntry)."""
        return self.load_json(REGISTRY) or {}

    def register(self, model_type: str, entry: dict) -> None:
        """Record a finished model, and point final_<type>.pt and final.pt at its checkpoint."""
        self.save_json(REGISTRY, {**self.registry(), model_type: entry})
        link_atomically(self.file(final_link_name(model_type)), entry["checkpoint"])
        link_atomically(self.file(FINAL_LINK), entry["checkpoint"])

    def timings(self) -> list[dict]:
        """One record per timed stage: {scope, round, step, seconds} (the latest run of each)."""
        path = self.file(TIMINGS)
        if not path.is_file():
            return []
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        return records if isinstance(records, list) else []

    def record_time(self, scope: str, step: str, seconds: float, round_: str | None = None) -> None:
        """Stage times survive kills: each is written when its stage finishes."""
        records = [
            r for r in self.timings() if (r.get("scope"), r.get("round"), r.get("step")) != (scope, round_, step)
        ]
        records.append({"scope": scope, "round": round_, "step": step, "seconds": round(seconds, 2)})
        write_json_atomic(self.file(TIMINGS), records)

    # -- log ----------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": kind, **fields, **faults.counted()}
        with open(self.path / EVENTS, "a") as fh:
            fh.write(json.dumps(record, default=str) + "\n")


class FollowerRunDir(RunDir):
    """The run directory as ranks other than 0 see it: rank 0 writes for the job (every write is a
    no-op here) and reads for it (distributed.World.on_main hands the result over), so a read on
    another rank is a bug in the stage code, refused loudly."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.echo = lambda _line: None
        self.recomputes = False
        self._manifest = {}

    def save_with(self, name: str, write: Callable[[Path], object]) -> Path:
        return self.file(name)

    def remove(self, name: str) -> None:
        return None

    def remove_stale_temporaries(self) -> int:
        return 0

    def register(self, model_type: str, entry: dict) -> None:
        return None

    def record_time(self, scope: str, step: str, seconds: float, round_: str | None = None) -> None:
        return None

    def event(self, kind: str, **fields: Any) -> None:
        return None

    def intact(self, name: str) -> bool:
        raise RuntimeError(f"rank > 0 read {name} from the run directory; reads go through World.on_main")
