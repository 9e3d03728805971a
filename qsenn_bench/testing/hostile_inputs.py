"""Run the hostile-input corpus (tests/hostile/cases, written by tests/hostile/make_cases.py)
through the runtime library, `qsenn predict` and `qsenn train`; shared by
tests/test_hostile_inputs.py and benchmarks/reliability_figures.py (it needs the source tree).

Every run gives an Outcome: the one-line error the user saw (None when it worked) and whether a
traceback showed (an exception other than the documented one, or "Traceback" in the output).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli_runs import run_cli

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "tests" / "hostile" / "cases"  # committed data, written by tests/hostile/make_cases.py
GOOD_MODEL = "models/good.onnx"
GOOD_IMAGE = "images/rgba.png"


def generator():
    """tests/hostile/make_cases.py as a module (it is a script, not on the import path)."""
    spec = importlib.util.spec_from_file_location("make_cases", CASES.parent / "make_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_cases(folder: Path = CASES, kind: str | None = None) -> list[dict]:
    cases = json.loads((folder / "cases.json").read_text(encoding="utf-8"))["cases"]
    return [c for c in cases if kind is None or c["kind"] == kind]


@dataclass
class Outcome:
    case: dict
    runner: str
    error: str | None  # what the user was told; None: the input was used
    traceback: bool = False
    exit_code: int | None = None
    output: str = ""

    @property
    def as_expected(self) -> bool:
        expect = self.case["expect"]
        if self.traceback:
            return False
        if expect is None:
            return self.error is None
        return self.error is not None and expect in self.error and "\n" not in self.error.strip()


def _unexpected(case: dict, runner: str) -> Outcome:
    return Outcome(case, runner, error=None, traceback=True, output=traceback.format_exc())


# ---- the library ---------------------------------------------------------------------------


def library_outcome(case: dict, model, folder: Path = CASES) -> Outcome:
    """One case through qsenn_runtime: load for models, predict / predict_tensor for inputs."""
    import qsenn_runtime

    path = folder / case["file"]
    try:
        if case["kind"] == "model":
            qsenn_runtime.load(path)
            return Outcome(case, "library", None)
        if case["kind"] == "tensor":
            results = model.predict_tensor(np.load(path, allow_pickle=False))
            errors = [r.error for r in results if not r.ok]
            return Outcome(case, "library", "; ".join(errors) or None)
        source = str(path) if case["kind"] == "image" else np.load(path, allow_pickle=False)
        prediction = model.predict(source)
        assert np.isfinite(prediction.logits).all()
        return Outcome(case, "library", None)
    except qsenn_runtime.QsennRuntimeError as exc:
        return Outcome(case, "library", str(exc))
    except Exception:
        return _unexpected(case, "library")


# ---- qsenn predict (subprocesses: the real script) ------------------------------------------


def _qsenn(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def cli_predict_images(cases: list[dict], folder: Path = CASES) -> list[Outcome]:
    """All image cases in one `qsenn predict --json` (each image fails or succeeds on its own)."""
    result = _qsenn("predict", folder / GOOD_MODEL, *(folder / c["file"] for c in cases), "--json")
    broken = "Traceback" in result.stderr or "Traceback" in result.stdout
    try:
        entries = json.loads(result.stdout)
    except ValueError:
        return [Outcome(c, "qsenn predict", None, True, result.returncode, result.stderr) for c in cases]
    return [
        Outcome(c, "qsenn predict", entry.get("error"), broken, result.returncode, result.stderr)
        for c, entry in zip(cases, entries, strict=True)
    ]


def cli_predict_model(case: dict, folder: Path = CASES) -> Outcome:
    """`qsenn predict MODEL good-image`: a bad model is one `error: …` line and exit 2."""
    result = _qsenn("predict", folder / case["file"], folder / GOOD_IMAGE)
    error = result.stderr.strip().removeprefix("error: ") if result.returncode else None
    broken = "Traceback" in result.stderr + result.stdout or (result.returncode not in (0, 2))
    return Outcome(case, "qsenn predict", error, broken, result.returncode, result.stderr)


# ---- qsenn train (in this process: importing torch per case would cost seconds) ---------------


def cli_train_dataset(case: dict, out: Path, folder: Path = CASES) -> Outcome:
    """`qsenn train --recipe tiny --dataset D --data-root CASE` through cli.main(), the function the
    `qsenn` script calls: exit 2 and one `error: …` line, or an exception escaping it (traceback)."""
    args = [
        "train",
        "--recipe",
        "tiny",
        "--dataset",
        case["dataset"],
        "--seed",
        "0",
        "--data-root",
        str(folder / case["file"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        *case.get("args", []),
    ]
    try:
        code, out_text, err = run_cli(*args)
    except Exception:
        return _unexpected(case, "qsenn train")
    error = err.strip().removeprefix("error: ") if code else None
    return Outcome(case, "qsenn train", error, "Traceback" in err + out_text or code not in (0, 2), code, err)
