"""Kill `qsenn train` with SIGKILL inside every stage of the tiny recipe, resume, and compare.

Shared by tests/test_crash_resume.py and benchmarks/reliability_figures.py.

The kills come from the test-only hook of qsenn_train/faults.py (QSENN_KILL_AT="<stage>:<n>":
SIGKILL at the n-th Python call of that stage): a point inside the stage under any load, and
nearly the same one on every run (garbage collection may shift it by a few calls), where a test
that watches the event log and kills after a delay would miss stages that last a tenth of a
second on a busy 2-core machine. A reference run in counting
mode (n = 0) records how many calls each stage makes, and each kill point is drawn in that
range by a random generator seeded per stage, so CI repeats the same points.

One chain covers every stage cheaply: kill in stage A, resume and kill in stage B, ... in
pipeline order, then resume to the end and compare with the uninterrupted reference run.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
SEED = 3
CHAIN_SEED = 20240611
RUN_SUBDIR = Path("resnet10") / "synth" / str(SEED)
ITERATIONS = 4
TEMPORARY = re.compile(r"^\..+\.(?:tmp|partial)\d+$")
# Between epochs: the first calls after an epoch's event hold its checkpoint's state dict and save.
BETWEEN_EPOCHS_WINDOW = 4000


@dataclass(frozen=True)
class KillPoint:
    stage: str  # a substring of exactly one stage label
    where: str = "random"  # "random": anywhere in the stage; "between epochs": after epoch 0


# Pipeline order: each kill lands in a stage that the chain has not finished yet.
KILL_POINTS = (
    KillPoint("dense training"),  # drawn inside epoch 0 (see points())
    KillPoint("dense training", "between epochs"),
    KillPoint("metrics (dense)"),
    KillPoint("iter0: feature extraction"),
    KillPoint("iter0: feature selection"),
    KillPoint("iter0: regularisation path"),
    KillPoint("iter0: quantisation"),
    KillPoint("iter0: fine-tuning"),
    KillPoint("iter1: fine-tuning"),
    KillPoint("iter2: feature extraction"),
    KillPoint("iter2: fine-tuning"),
    KillPoint("iter3: fine-tuning", "between epochs"),
    KillPoint("iter3: fine-tuning"),
    KillPoint("metrics (qsenn)"),
)


def train_command(data_root: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cli",
        "train",
        "--recipe",
        "tiny",
        "--seed",
        str(SEED),
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--resume",
    ]


def run_train(data_root: Path, out: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("QSENN_KILL_AT", None)
    if kill_at is not None:
        env["QSENN_KILL_AT"] = kill_at
    return subprocess.run(train_command(data_root, out), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def read_events(run_dir: Path) -> list[list[dict]]:
    """events.jsonl split into one list per process (each begins with a "start" event)."""
    runs: list[list[dict]] = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "start" or not runs:
            runs.append([])
        runs[-1].append(record)
    return runs


def stage_calls(run_dir: Path) -> dict[str, dict]:
    """Per stage label of a counting-mode run: total calls and the count at each epoch's end."""
    stages: dict[str, dict] = {}
    dense_epochs: list[int] = []  # logged as stage "dense"; the stage's label is "dense-<key>: dense training"
    for record in (r for run in read_events(run_dir) for r in run):
        if record["event"] == "stage_time":
            stages.setdefault(record["stage"], {"epochs": []})["calls"] = record["calls"]
        elif record["event"] == "epoch" and record["stage"] == "dense":
            dense_epochs.append(record["calls"])
        elif record["event"] == "epoch":
            label = record["stage"].replace(" fine-tune", ": fine-tuning")
            stages.setdefault(label, {"epochs": []})["epochs"].append(record["calls"])
    (dense,) = [label for label in stages if label.endswith(": dense training")]
    stages[dense]["epochs"] = dense_epochs
    return stages


def short_stage(label: str) -> str:
    """ "qsenn_6_2-<key>/iter0: fine-tuning" → "iter0: fine-tuning", "dense-<key>: dense training" →
    "dense training": the stage without the model's cache key."""
    scope, _, step = label.partition(": ")
    round_ = scope.rsplit("/", 1)[1] if "/" in scope else None
    return f"{round_}: {step}" if round_ else step


def points(reference_calls: dict[str, dict], seed: int = CHAIN_SEED) -> list[tuple[KillPoint, str, int]]:
    """(kill point, full stage label, call number) for every kill, drawn per stage from `seed`."""
    chosen = []
    for point in KILL_POINTS:
        (label,) = [name for name in reference_calls if point.stage in name]
        calls = reference_calls[label]
        rng = random.Random(f"{seed}:{point.stage}:{point.where}")
        if point.where == "between epochs":
            n = calls["epochs"][0] + rng.randint(1, BETWEEN_EPOCHS_WINDOW)
        elif point.stage == "dense training":  # mid-epoch 0, so the next kill finds epoch 0 to end
            n = rng.randint(1, calls["epochs"][0])
        else:
            n = rng.randint(1, calls["calls"])
        chosen.append((point, label, n))
    return chosen


@dataclass
class Kill:
    stage: str
    where: str
    n: int
    message: str  # the hook's line: where in the code the process died
    returncode: int
    temporaries: list = field(default_factory=list)  # left in the run directory by the kill
    manifest_problems: list = field(default_factory=list)  # recorded results not matching their hash
    redone_epochs: list = field(default_factory=list)  # finished epochs the next process repeated
    redone_stages: list = field(default_factory=list)  # finished stages it recomputed

    @property
    def location(self) -> str:
        """The function (file:line) the process died in, from the hook's line."""
        return self.message.rsplit(" (", 1)[-1].rstrip(")")


@dataclass
class ChainResult:
    run_dir: Path
    kills: list[Kill]
    damaged_reports: int  # "is damaged" lines printed by the resumes after the kills
    temporaries_removed: int  # stale temporaries the resumes deleted
    final_output: str


def run_chain(data_root: Path, out: Path, reference_calls: dict[str, dict], echo=lambda line: None) -> ChainResult:
    run_dir = out / RUN_SUBDIR
    kills, outputs = [], []
    for point, label, n in points(reference_calls):
        result = run_train(data_root, out, f"{point.stage}:{n}")
        message = next(
            (line for line in result.stderr.splitlines() if line.startswith("QSENN_KILL_AT")),
            f"no kill (exit {result.returncode}): {result.stderr.strip()[-500:]}",
        )
        kills.append(
            Kill(label, point.where, n, message, result.returncode, temporaries(run_dir), manifest_problems(run_dir))
        )
        outputs.append(result.stdout)
        echo(f"kill {len(kills):2d}: {point.stage} ({point.where}) at call {n}: {message}")
    final = run_train(data_root, out)
    outputs.append(final.stdout)
    if final.returncode != 0:
        raise AssertionError(f"the final resume failed:\n{final.stdout}\n{final.stderr}")
    _count_lost_work(run_dir, kills)
    removed = sum(
        r.get("count", 0) for run in read_events(run_dir) for r in run if r["event"] == "stale_temporaries_removed"
    )
    return ChainResult(run_dir, kills, sum(text.count("is damaged") for text in outputs), removed, final.stdout)


def _count_lost_work(run_dir: Path, kills: list[Kill]) -> None:
    """Per kill: what the next process repeated that a process before had already finished."""
    runs = read_events(run_dir)
    assert len(runs) == len(kills) + 1, f"{len(runs)} processes logged for {len(kills)} kills"
    done_epochs, done_stages = set(), set()
    for kill, before, after in zip(kills, runs, runs[1:]):
        done_epochs |= {(r["stage"], r["epoch"]) for r in before if r["event"] == "epoch"}
        done_stages |= {r["stage"] for r in before if r["event"] == "stage_time"}
        kill.redone_epochs = [
            (r["stage"], r["epoch"]) for r in after if r["event"] == "epoch" and (r["stage"], r["epoch"]) in done_epochs
        ]
        kill.redone_stages = [r["stage"] for r in after if r["event"] == "stage_time" and r["stage"] in done_stages]


def temporaries(run_dir: Path) -> list[str]:
    return sorted(
        str(Path(folder, name).relative_to(run_dir))
        for folder, _, files in os.walk(run_dir)
        for name in files
        if TEMPORARY.match(name)
    )


def manifest_problems(run_dir: Path) -> list[str]:
    """Manifest entries whose file is missing or does not match its sha256 (must be none)."""
    from qsenn_train.rundir import sha256_file

    manifest = json.loads((run_dir / "manifest.json").read_text())
    return [
        name
        for name, entry in manifest.items()
        if not (run_dir / name).is_file() or sha256_file(run_dir / name) != entry["sha256"]
    ]


# ---- comparing two finished runs ----------------------------------------------------------


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def sparse_folder(run_dir: Path) -> Path:
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("qsenn_")]
    return folder


def fixed_inputs() -> torch.Tensor:
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def final_logits(run_dir: Path) -> torch.Tensor:
    from qsenn_train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(run_dir / "final.pt")
    with torch.no_grad():
        return model.eval()(fixed_inputs()).logits


def differences(run_dir: Path, reference_dir: Path) -> dict:
    """How the run's results differ from the reference's: selection, heads, models, final logits."""
    ours, theirs = sparse_folder(run_dir), sparse_folder(reference_dir)
    report = {
        "selection_equal": _load(ours / "iter0/selection.pt")["selected"]
        == _load(theirs / "iter0/selection.pt")["selected"],
        "ternary_equal": [],
        "head_max_diff": [],
        "model_max_diff": [],
    }
    for i in range(ITERATIONS):
        a, b = _load(ours / f"iter{i}/head.pt"), _load(theirs / f"iter{i}/head.pt")
        report["ternary_equal"].append(torch.equal(a["ternary"], b["ternary"]))
        report["head_max_diff"].append(
            max(abs(float(a["magnitude"]) - float(b["magnitude"])), float((a["bias"] - b["bias"]).abs().max()))
        )
        sa, sb = _load(ours / f"iter{i}/model.pt")["state_dict"], _load(theirs / f"iter{i}/model.pt")["state_dict"]
        report["model_max_diff"].append(max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa))
    report["logits_max_diff"] = float((final_logits(run_dir) - final_logits(reference_dir)).abs().max())
    return report
