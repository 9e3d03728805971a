"""Reading a finished run: the one run-directory API of every command that takes `RUN`
(evaluate, export, validate-run, bench, atlas).

A run directory holds one dense model and, trained on it, up to one final model per model
type (Q-SENN and SLDD share the dense model). `qsenn train` records each finished model in the
registry (`models.json`): its checkpoint, the sparsification folder (its cache key), its dense
model, its metrics file and the full recipe that produced it. Readers use those recorded fields,
never the shape of paths or the targets of links, so the order in which models were trained
does not matter. Every file is read through the manifest, so a damaged one is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import model_from_record
from .data.base import DatasetInfo
from .errors import QsennError
from .model import QResNet
from .names import MODEL_TYPES
from .recipes import Recipe
from .rundir import CONFIG, REGISTRY, RunDir

DENSE = "dense"


@dataclass(frozen=True)
class ModelEntry:
    """What the registry records of one finished model."""

    model_type: str  # "qsenn" or "sldd"
    checkpoint: str  # run-relative name of the final checkpoint
    folder: str  # the sparsification folder (named by its cache key)
    metrics: str  # run-relative name of its metrics file
    dense_checkpoint: str  # the dense model it was trained from
    dense_key: str
    dense_metrics: str
    recipe: dict  # the full recipe (Recipe.to_json) that produced it
    seed: int
    finished: float  # unix time
    world_size: int = 1  # processes of the `qsenn train` call that finished it

    def to_json(self) -> dict:
        return {
            "model_type": self.model_type,
            "checkpoint": self.checkpoint,
            "folder": self.folder,
            "metrics": self.metrics,
            "dense": {"checkpoint": self.dense_checkpoint, "key": self.dense_key, "metrics": self.dense_metrics},
            "recipe": self.recipe,
            "seed": self.seed,
            "finished": self.finished,
            "world_size": self.world_size,
        }

    @classmethod
    def from_json(cls, d: dict, source: str) -> ModelEntry:
        try:
            dense = d["dense"]
            return cls(
                model_type=str(d["model_type"]),
                checkpoint=str(d["checkpoint"]),
                folder=str(d["folder"]),
                metrics=str(d["metrics"]),
                dense_checkpoint=str(dense["checkpoint"]),
                dense_key=str(dense["key"]),
                dense_metrics=str(dense["metrics"]),
                recipe=dict(d["recipe"]),
                seed=int(d["seed"]),
                finished=float(d["finished"]),
                world_size=int(d.get("world_size", 1)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise QsennError(f"{source}: a registry entry is malformed ({type(exc).__name__} {exc})") from None

    def load_recipe(self) -> Recipe:
        return Recipe.from_json(self.recipe)


class Run:
    """A run directory opened for reading (nothing is written)."""

    def __init__(self, path: Path, echo=print):
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise QsennError(
                f"{path} is not a run directory of `qsenn train` (no {CONFIG}); pass OUT/<arch>/<dataset>/<seed>"
            )
        self.path = path
        self.files = RunDir(path, echo=echo, create=False)
        self.config: dict[str, Any] = self._read_config()
        self._entries = {
            model_type: ModelEntry.from_json(entry, str(path / REGISTRY))
            for model_type, entry in self.files.registry().items()
            if model_type in MODEL_TYPES
        }

    def _read_config(self) -> dict:
        file = self.path / CONFIG
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise QsennError(f"cannot read {file} ({exc}); the run directory is damaged") from None
        if not isinstance(config, dict) or "seed" not in config or "dataset" not in config:
            raise QsennError(f"{file} names no seed or dataset; the run directory is damaged")
        return config

    # -- what the run holds -----------------------------------------------------------------
    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo.from_json(self.config["dataset"])

    @property
    def data_root(self) -> Path:
        return Path(self.config["data_root"])

    @property
    def model_types(self) -> tuple[str, ...]:
        """The finished model types, in MODEL_TYPES order."""
        return tuple(t for t in MODEL_TYPES if t in self._entries)

    def entry(self, model_type: str | None = None) -> ModelEntry:
        """The registry entry of `model_type`; None: the only finished model (a clear line when
        there are none or several)."""
        if model_type is not None:
            if model_type not in MODEL_TYPES:
                raise QsennError(f"unknown model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
            if model_type not in self._entries:
                raise QsennError(self._missing(model_type))
            return self._entries[model_type]
        if not self._entries:
            raise QsennError(self._missing(None))
        if len(self._entries) > 1:
            raise QsennError(
                f"run {self.path} holds a finished {' and a '.join(self.model_types)} model; "
                f"pick one with --model-type {'|'.join(self.model_types)}"
            )
        return next(iter(self._entries.values()))

    def _missing(self, model_type: str | None) -> str:
        what = f"no finished {model_type} model" if model_type else "no finished model"
        if not self.files.intact(REGISTRY) and "recipe" in self.config:
            return (
                f"run {self.path} has {what} registered: it was written by an older qsenn; rerun the "
                f"`qsenn train … --resume` command that made it (finished stages are reused) to register it"
            )
        have = f" (it has: {', '.join(self.model_types)})" if self._entries else ""
        wanted = f" --model-type {model_type}" if model_type else ""
        return f"run {self.path} has {what}{have}; finish it with `qsenn train …{wanted} --resume`"

    def recipes(self) -> dict[str, Recipe]:
        """The recipe each model type was last asked to train with (finished or not)."""
        return {t: Recipe.from_json(r) for t, r in self.config.get("recipes", {}).items() if t in MODEL_TYPES}

    # -- loading through the manifest ---------------------------------------------------------
    def load_record(self, name: str) -> dict:
        """A checkpoint record of this run, refused when absent or damaged."""
        record = self.files.load_torch(name)
        if record is None:
            raise QsennError(
                f"{self.path / name} is missing or damaged (its sha256 does not match the manifest); "
                f"recompute it with `qsenn train … --resume`"
            )
        if not isinstance(record, dict):
            raise QsennError(f"{self.path / name} is not a qsenn model checkpoint")
        return record

    def load_model(self, model_type: str | None = None) -> tuple[QResNet, dict, ModelEntry]:
        entry = self.entry(model_type)
        record = self.load_record(entry.checkpoint)
        return model_from_record(record), record, entry

    def metrics(self, name: str) -> dict | None:
        """A metrics file of this run (None when absent); a damaged one is refused."""
        if not self.files.file(name).exists():
            return None
        metrics = self.files.load_json(name)
        if metrics is None:
            raise QsennError(
                f"{self.path / name} is damaged or unrecorded; recompute it with `qsenn evaluate {self.path}`"
            )
        return metrics

    def stage_seconds(self, scope: str) -> dict[str, float]:
        """Seconds per step of one scope (a dense model or a sparsification folder), summed over
        its rounds, plus "total"."""
        steps: dict[str, float] = {}
        for record in self.files.timings():
            if record.get("scope") == scope:
                steps[record["step"]] = round(steps.get(record["step"], 0.0) + float(record["seconds"]), 2)
        return {**steps, "total": round(sum(steps.values()), 2)}


def find_runs(folder: Path) -> list[Run]:
    """The run directories below a `qsenn train --out` folder that hold a finished model,
    the most recently finished first."""
    runs = []
    for registry in Path(folder).glob(f"**/{REGISTRY}"):
        try:
            run = Run(registry.parent)
        except QsennError:
            continue
        if run.model_types:
            runs.append(run)
    return sorted(runs, key=lambda run: -max(run.entry(t).finished for t in run.model_types))
