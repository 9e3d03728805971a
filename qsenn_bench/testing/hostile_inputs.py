"""Run the hostile-input corpus (tests/hostile/cases, written by tests/hostile/make_cases.py)
through the runtime library, `qsenn predict`, `qsenn inspect`, `qsenn train` and the commands that
read checkpoints (export, import-reference, evaluate, validate-run, bench); shared by
tests/test_hostile_inputs.py and benchmarks/reliability_figures.py (it needs the source tree).

Every run gives an Outcome: the one-line error the user saw (None when it worked), whether a
traceback showed (an exception other than the documented one, or "Traceback" in the output), the
exit code against the one expected, and the files it left behind: for a command that reads a
checkpoint or run, any file it created or changed; for `qsenn train`, temporaries (its run
directory with config and event log is the state `--resume` continues from).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
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
    expected_exit: int | None = None  # None: no exit code (the library)
    left_behind: list[str] = field(default_factory=list)
    expect: str | None = ""  # this runner's expectation; "" : the case's

    def __post_init__(self) -> None:
        if self.expect == "":
            self.expect = self.case["expect"]

    @property
    def as_expected(self) -> bool:
        if self.traceback:
            return False
        if self.expect is None:
            return self.error is None
        return self.error is not None and self.expect in self.error and "\n" not in self.error.strip()

    @property
    def wrong_exit_code(self) -> bool:
        return self.expected_exit is not None and self.exit_code != self.expected_exit


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
    """All image cases in one `qsenn predict --json` (each image fails or succeeds on its own;
    the command exits 1 when any could not be used)."""
    result = _qsenn("predict", folder / GOOD_MODEL, *(folder / c["file"] for c in cases), "--json")
    broken = "Traceback" in result.stderr or "Traceback" in result.stdout
    exit_code = 1 if any(c["expect"] is not None for c in cases) else 0
    try:
        entries = json.loads(result.stdout)
    except ValueError:
        return [Outcome(c, "qsenn predict", None, True, result.returncode, result.stderr, exit_code) for c in cases]
    return [
        Outcome(c, "qsenn predict", entry.get("error"), broken, result.returncode, result.stderr, exit_code)
        for c, entry in zip(cases, entries, strict=True)
    ]


def cli_model(case: dict, command: str = "predict", folder: Path = CASES) -> Outcome:
    """`qsenn predict MODEL good-image` or `qsenn inspect MODEL`: a bad model is one `error: …`
    line and exit 2. inspect refuses what predict refuses, but what only a backend can find
    (the case's `inspect_expect`)."""
    args = (folder / case["file"], folder / GOOD_IMAGE) if command == "predict" else (folder / case["file"],)
    result = _qsenn(command, *args)
    error = result.stderr.strip().removeprefix("error: ") if result.returncode else None
    expect = case.get("inspect_expect", case["expect"]) if command == "inspect" else case["expect"]
    broken = "Traceback" in result.stderr + result.stdout
    exit_code = 0 if expect is None else 2
    return Outcome(case, f"qsenn {command}", error, broken, result.returncode, result.stderr, exit_code, expect=expect)


# ---- commands that import torch (in this process: importing it per case would cost seconds) -----


def _in_process(case: dict, runner: str, argv: list[str], expect: str | None = "") -> Outcome:
    """`qsenn ARGV` through cli.main(), the function the `qsenn` script calls: exit 2 and one
    `error: …` line, or an exception escaping it (a traceback)."""
    try:
        code, out, err = run_cli(*argv)
    except Exception:
        return _unexpected(case, runner)
    error = err.strip().removeprefix("error: ") if code else None
    broken = "Traceback" in err + out
    return Outcome(case, runner, error, broken, code, err, expected_exit=2, expect=expect)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and link below `root` with its content hash (a link: its target)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(root))] = "-> " + os.readlink(path)
        elif path.is_file():
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(name for name in after.keys() | before.keys() if before.get(name) != after.get(name))


CHECKPOINT_ARGS = {
    "export": lambda path, out: ["export", path, "--out", out / "model.onnx"],
    "import-reference": lambda path, out: ["import-reference", path, "--dataset", "CUB2011", "--out", out / "x.pt"],
    "bench": lambda path, out: ["bench", path, "--backends", "torch", "--no-memory", "--iters", "1"],
}
RUN_ARGS = {
    "export RUN": lambda run: ["export", run],
    "export RUN/final.pt": lambda run: ["export", run / "final.pt"],
    "evaluate": lambda run: ["evaluate", run, "--device", "cpu"],
    "validate-run": lambda run: ["validate-run", run],
    "bench RUN": lambda run: ["bench", run, "--backends", "torch", "--no-memory", "--iters", "1"],
}


def cli_checkpoint(case: dict, command: str, work: Path, folder: Path = CASES) -> Outcome:
    """A damaged checkpoint (kind "checkpoint") or run (kind "run") given to `command`, on a copy
    in `work`: one line, exit 2, and no file created or changed there."""
    source = folder / case["file"]
    copy = work / source.name
    if source.is_dir():
        shutil.copytree(source, copy, symlinks=True)
    else:
        shutil.copy2(source, copy)
    out = work / "out"
    out.mkdir()
    argv = CHECKPOINT_ARGS[command](copy, out) if case["kind"] == "checkpoint" else RUN_ARGS[command](copy)
    before = _snapshot(work)
    expect = case.get("expect_by_command", {}).get(command, case["expect"])
    outcome = _in_process(case, f"qsenn {command}", [str(a) for a in argv], expect)
    outcome.left_behind = _changed(before, _snapshot(work))
    return outcome


def cli_train_dataset(case: dict, out: Path, folder: Path = CASES) -> Outcome:
    """`qsenn train --recipe tiny --dataset D --data-root CASE`: exit 2 and one `error: …` line;
    no temporary left in its run directory."""
    from .kill_chain import temporaries

    argv = [
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
    outcome = _in_process(case, "qsenn train", argv)
    outcome.left_behind = temporaries(out) if out.exists() else []
    return outcome
