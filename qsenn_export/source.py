"""What is exported: a finished model of a run (through the run-directory API, so the manifest's
sha256 check covers the very file that is shipped), or a checkpoint file.

    RUN                    the run's finished model (--model-type when it holds Q-SENN and SLDD)
    RUN/<any checkpoint>   that file; a run's registered checkpoint keeps its model type and metrics
    OUT                    (a `qsenn train --out` folder) the most recently finished run below it
    FILE.pt                a checkpoint file (`qsenn import-reference` writes those too)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qsenn_train.checkpoint import load_checkpoint, model_from_record
from qsenn_train.data.base import DatasetInfo
from qsenn_train.errors import QsennError, path_problem
from qsenn_train.model import QResNet
from qsenn_train.names import MODEL_TYPES
from qsenn_train.run import ModelEntry, Run, find_runs
from qsenn_train.rundir import CONFIG

from .errors import ExportError
from .fold import FoldedHead, read_head


@dataclass
class ExportSource:
    """A loaded model with everything the metadata and the verification need."""

    model: QResNet
    record: dict
    checkpoint: Path  # where it was read from
    run: Run | None  # its run, when it is a registered model of one
    model_type: str | None  # "qsenn" or "sldd" where known
    metrics: dict | None
    head: FoldedHead

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo.from_json(self.record["dataset"])

    @property
    def img_size(self) -> int:
        return int(self.record["img_size"])

    @property
    def label(self) -> str:
        """How messages name it."""
        return f"{self.model_type} model {self.checkpoint}" if self.model_type else str(self.checkpoint)


def load_source(path: Path, model_type: str | None = None) -> ExportSource:
    path = Path(path)
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ExportError(f"unknown model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if path.is_dir():
        return _from_run(_run_of_folder(path, model_type), model_type)
    problem = path_problem(path)
    if problem == "no such file":
        raise ExportError(f"{path} does not exist; pass a run directory or a checkpoint file")
    if problem is None and (path.parent / CONFIG).is_file():  # else load_checkpoint names the problem
        run = Run(path.parent)
        for entry in (run.entry(t) for t in run.model_types):
            if run.files.file(entry.checkpoint).resolve() == path.resolve():
                if model_type not in (None, entry.model_type):
                    raise ExportError(f"{path} is the run's {entry.model_type} model, not its {model_type} model")
                return _from_entry(run, entry)
    model, record = load_checkpoint(path)
    return _loaded(model, record, path, None, model_type or record.get("model_type"), None)


def _run_of_folder(folder: Path, model_type: str | None) -> Run:
    if (folder / CONFIG).is_file():
        return Run(folder)
    runs = [run for run in find_runs(folder) if model_type is None or model_type in run.model_types]
    if not runs:
        what = f"a finished {model_type} model" if model_type else "a finished model"
        raise ExportError(f"{folder} is neither a run directory (no {CONFIG}) nor a folder of runs with {what}")
    return runs[0]


def _from_run(run: Run, model_type: str | None) -> ExportSource:
    try:
        return _from_entry(run, run.entry(model_type))
    except QsennError as exc:  # the run's own line (which model types it has, what to finish)
        raise ExportError(str(exc)) from None


def _from_entry(run: Run, entry: ModelEntry) -> ExportSource:
    record = run.load_record(entry.checkpoint)
    return _loaded(
        model_from_record(record),
        record,
        run.files.file(entry.checkpoint),
        run,
        entry.model_type,
        run.metrics(entry.metrics),
    )


def _loaded(
    model: QResNet, record: dict, checkpoint: Path, run: Run | None, model_type: str | None, metrics: dict | None
) -> ExportSource:
    model.eval()
    return ExportSource(
        model=model,
        record=record,
        checkpoint=checkpoint,
        run=run,
        model_type=model_type,
        metrics=metrics,
        head=read_head(model, str(checkpoint), model_type),
    )
