"""GPU figures of Q-SENN on one lent GPU, in one run of a few minutes: inference of a Q-SENN
ResNet-50 at 448 px, and dense training plus the glm-saga path of the demo recipe.

Sections, each in a child process with its own time budget (a section that runs over is stopped
and recorded as timed out; the others still run):

- inference (300 s): `qsenn bench` (qsenn_bench) at 448 px, batch 1 and 64, backends torch fp32
  eager (the baseline), torch-fp16 (the folded graph, BN fused, fp16 channels-last backbone, fp32
  head), torch-fp16-graph (its CUDA-graph replay), torch-compile (inductor) and
  torch-compile-graph (CUDA-graph replay of the compiled model). Every backend's logits, features
  c and contributions W·c are checked against fp32 eager on 64 images.
- training (180 s): `qsenn train --recipe demo --model-type sldd --device cuda`: dense training
  (16 epochs, Feature Diversity Loss), feature selection, the glm-saga path on the GPU and the
  fine-tuning, on the embedded synthetic dataset (generated on the CPU first); the stage times
  are the run's own timings.json.

Runs with the GPU machine's python from the repository root, nothing installed (torch,
torchvision, onnx, numpy, pillow suffice; onnxscript and tqdm may be missing). glm-saga is pure
Python: where it is not installed, copy it next to the tree and put it on the path, e.g.

    mkdir -p .gpu-site && cp -r .venv/lib/python3.11/site-packages/glm_saga .gpu-site/  # here (git ignores it)
    PYTHONPATH=.:.gpu-site python benchmarks/gpu_bench.py          # there: results to $OUT
    PYTHONPATH=. python benchmarks/gpu_bench.py --dry-run          # any CPU, tiny sizes, seconds

Without glm-saga the training section still reports the dense stage and says why the path is
missing. Results: $OUT (or --out, else benchmarks/results) /
gpu_bench_<model>_<gpu>_torch<version>.json; a dry run writes to $OUT, --out or a temporary
folder, never to benchmarks/results. Goals: ≥ 5× the fp32 eager throughput at batch 64 and a
batch-1 latency ≤ 1.0 ms, with the outputs within the fp16 tolerance of the format table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THROUGHPUT_GOAL, LATENCY_GOAL_MS = 5.0, 1.0  # at batch 64 against fp32 eager; at batch 1
INFERENCE_BACKENDS = ("torch", "torch-fp16", "torch-fp16-graph", "torch-compile", "torch-compile-graph")


@dataclass(frozen=True)
class Sizes:
    arch: str
    img_size: int
    batches: tuple[int, ...]
    warmup: int
    iters: int
    images: int
    backends: tuple[str, ...]
    recipe: str
    device: str
    budgets: dict[str, int]  # seconds per section


FULL = Sizes(
    "resnet50",
    448,
    (1, 64),
    5,
    50,
    64,
    INFERENCE_BACKENDS,
    "demo",
    "cuda",
    {"inference": 300, "training": 180},
)
# A dry run checks the script end to end on a CPU: the eager fp16 backend runs there too; CUDA
# graphs need a GPU and torch.compile takes minutes on a CPU, so they are left out.
DRY_RUN = Sizes(
    "resnet10", 64, (1, 2), 1, 3, 4, ("torch", "torch-fp16"), "tiny", "cpu", {"inference": 300, "training": 300}
)


def inference_section(sizes: Sizes, iters: int | None, threads: int | None) -> dict:
    """qsenn bench of a random Q-SENN of sizes.arch at sizes.img_size, outputs checked against fp32."""
    from qsenn_bench.bench import BenchConfig, run_bench
    from qsenn_bench.reporting import table
    from qsenn_bench.sources import bench_source

    config = BenchConfig(
        backends=sizes.backends,
        batches=sizes.batches,
        warmup=sizes.warmup,
        iters=iters or sizes.iters,
        images=sizes.images,
        threads=threads,
        device=sizes.device,
        memory=sizes.device == "cuda",
        gpu_backends_on_cpu=sizes.device == "cpu",
    )
    result = run_bench(bench_source(None, sizes.arch, sizes.img_size, True), config, echo=_stderr)
    _stderr(table(result))
    return result


def training_section(sizes: Sizes, scratch: Path, budget: int) -> dict:
    """`qsenn train` of the demo recipe (SLDD: dense, selection, one glm-saga path, fine-tuning) on
    the device, in a child process stopped after `budget` seconds; the stage times it recorded."""
    out = scratch / "runs"
    command = [
        sys.executable,
        "-m",
        "cli",
        "train",
        "--recipe",
        sizes.recipe,
        "--model-type",
        "sldd",
        "--seed",
        "0",
        "--device",
        sizes.device,
        "--data-root",
        str(scratch / "data"),
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    status = _run(command, budget)
    runs = sorted(out.glob("*/*/*/timings.json"))
    timings = json.loads(runs[0].read_text()) if runs else []
    epochs = [json.loads(line) for path in out.glob("*/*/*/events.jsonl") for line in path.read_text().splitlines()]
    dense_epochs = [e for e in epochs if e.get("event") == "epoch" and e.get("stage") == "dense"]
    return {
        "command": " ".join(command[1:]),
        "status": status,
        "wall_s": round(time.perf_counter() - started, 1),
        "timings": timings,
        "dense_epochs_done": len(dense_epochs),
        "final_dense_test_acc": next((e["test_acc"] for e in reversed(dense_epochs) if "test_acc" in e), None),
    }


def _run(command: list[str], budget: int) -> str:
    """Run `command` from the repository root for at most `budget` seconds: "ok", "timed out after
    N s" or "failed (exit N): <its last line of stderr>"."""
    try:
        done = subprocess.run(command, cwd=REPO, timeout=budget, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return f"timed out after {budget} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"failed (exit {done.returncode}): {last[:300]}"
    return "ok"


def goals(result: dict, batches: tuple[int, ...]) -> dict:
    """The targets, judged on the fastest non-baseline backend, and every output check."""
    rows = [r for r in result["results"] if r["backend"] != "torch"]
    large, small = max(batches), min(batches)
    best_speedup = max((r["speedup"] for r in rows if r["batch"] == large), default=None)
    best_latency = min((r["median_ms"] for r in rows if r["batch"] == small), default=None)
    verdicts = {name: agreed.get("verdict", "OK") for name, agreed in result["agreement"].items()}
    return {
        f"speedup_at_batch_{large}": best_speedup,
        "speedup_goal_met": best_speedup is not None and best_speedup >= THROUGHPUT_GOAL,
        f"median_latency_ms_at_batch_{small}": best_latency,
        "latency_goal_met": best_latency is not None and best_latency <= LATENCY_GOAL_MS,
        "outputs_checked": verdicts,
        "outputs_ok": all(v == "OK" for v in verdicts.values()),
    }


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny model and sizes on the CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per backend and batch")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable CPUs)")
    parser.add_argument("--sections", default="inference,training", help="comma-separated: inference, training")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT)")
    parser.add_argument("--section-json", type=Path, default=None, help=argparse.SUPPRESS)  # child of one section
    args = parser.parse_args()
    sizes = DRY_RUN if args.dry_run else FULL

    if args.section_json is not None:  # the inference child
        args.section_json.write_text(json.dumps(inference_section(sizes, args.iters, args.threads)))
        return

    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(sizes.budgets))
    if unknown:
        sys.exit(f"error: unknown section {unknown[0]!r}; choose from {', '.join(sizes.budgets)}")
    report: dict = {"kind": "gpu-bench", "dry_run": args.dry_run, "budgets_s": sizes.budgets, "sections": {}}
    result = None
    with tempfile.TemporaryDirectory(prefix="qsenn-gpu-bench-") as scratch:
        for section in sections:
            budget = sizes.budgets[section]
            _stderr(f"== {section} (budget {budget} s)")
            started = time.perf_counter()
            if section == "inference":
                child = Path(scratch) / "inference.json"
                command = [sys.executable, __file__, "--section-json", str(child)]
                command += ["--dry-run"] * args.dry_run + (["--iters", str(args.iters)] if args.iters else [])
                command += ["--threads", str(args.threads)] if args.threads else []
                status = _run(command, budget)
                entry: dict = {"status": status}
                if child.is_file():
                    result = json.loads(child.read_text())
                    entry["goals"] = goals(result, sizes.batches)
            else:
                entry = training_section(sizes, Path(scratch), budget)
            entry["wall_s"] = round(time.perf_counter() - started, 1)
            report["sections"][section] = entry
            _stderr(f"== {section}: {entry['status']} in {entry['wall_s']} s")

    from qsenn_bench.environment import environment
    from qsenn_bench.reporting import RESULTS, result_name

    if result is not None:
        report.update(result)  # model, environment (GPU, versions, TF32 settings), agreement, results
    else:
        report["environment"] = environment()
    label = report.get("model", {}).get("label", f"{sizes.arch}-{sizes.img_size}-random")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="qsenn-gpu-bench-")) if args.dry_run else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    kind = "gpu_bench" + ("-dry-run" if args.dry_run else "")
    path = out / f"{result_name(kind, label, report['environment'], ('torch',))}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(
        json.dumps({name: entry.get("goals", entry["status"]) for name, entry in report["sections"].items()}, indent=2)
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
