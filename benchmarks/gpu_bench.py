"""GPU figures for a Q-SENN ResNet-50 at 448 px on an H100/H200, measured by `qsenn bench`
(qsenn_bench): torch fp32 eager (the baseline), torch fp16 channels-last, torch.compile,
and torch.compile with CUDA graphs, at batch 1 and 64. Every GPU backend's logits, features c
and contributions are checked against the fp32 baseline, and so are the ONNX model's
(onnxruntime on the CPU, not timed).

Runs with the GPU machine's python from the repository root, nothing installed (torch,
torchvision, onnx, onnxruntime, numpy, pillow suffice; onnxscript, tqdm and glm-saga may be
missing):

    PYTHONPATH=. python benchmarks/gpu_bench.py             # ResNet-50, 448 px, random weights
    PYTHONPATH=. python benchmarks/gpu_bench.py RUN         # a trained model instead
    PYTHONPATH=. python benchmarks/gpu_bench.py --dry-run   # any CPU: tiny model and sizes

Results: $OUT (or benchmarks/results) / gpu_bench_<model>_<gpu>_torch<version>.json; a dry run
writes to $OUT or a temporary folder, never to benchmarks/results. A full run takes a few
minutes, most of them torch.compile (two modes × two batch sizes); `--backends` trims it. A
backend that fails (e.g. a compiler error) is recorded as skipped with its error; the others run.
Goals: ≥ 5× the fp32 eager throughput at batch 64, batch-1 latency < 1.0 ms, outputs within the
fp16 tolerance of the format table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qsenn_bench.bench import BenchConfig, run_bench
from qsenn_bench.errors import BenchError
from qsenn_bench.reporting import RESULTS, result_name, table
from qsenn_bench.sources import bench_source
from qsenn_export.errors import ExportError
from qsenn_train.errors import QsennError

GPU_BACKENDS = ("torch", "torch-fp16", "torch-compile", "torch-cudagraphs")
THROUGHPUT_GOAL, LATENCY_GOAL_MS = 5.0, 1.0  # at batch 64 against fp32 eager; at batch 1


@dataclass(frozen=True)
class Sizes:
    arch: str
    img_size: int
    batches: tuple[int, ...]
    warmup: int
    iters: int
    images: int


FULL = Sizes("resnet50", 448, (1, 64), warmup=5, iters=50, images=64)
# A dry run checks the script end to end on a CPU in seconds: the GPU-only eager backend runs on
# the CPU; torch.compile takes minutes there and is left out unless --backends names it.
DRY_RUN = Sizes("resnet10", 64, (1, 2), warmup=1, iters=3, images=4)
DRY_RUN_BACKENDS = ("torch", "torch-fp16")


def goals(result: dict, batches: tuple[int, ...]) -> dict:
    """The targets, judged on the fastest non-baseline backend and every agreement."""
    rows = [r for r in result["results"] if r["backend"] != "torch"]
    large, small = max(batches), min(batches)
    best_speedup = max((r["speedup"] for r in rows if r["batch"] == large), default=None)
    best_latency = min((r["median_ms"] for r in rows if r["batch"] == small), default=None)
    verdicts = {name: agreed.get("verdict", "OK") for name, agreed in result["agreement"].items()}
    return {
        f"speedup_at_batch_{large}": best_speedup,
        "speedup_goal_met": best_speedup is not None and best_speedup >= THROUGHPUT_GOAL,
        f"median_latency_ms_at_batch_{small}": best_latency,
        "latency_goal_met": best_latency is not None and best_latency < LATENCY_GOAL_MS,
        "outputs_checked": verdicts,
        "outputs_ok": all(v == "OK" for v in verdicts.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, help="run directory or checkpoint (default: random ResNet-50)")
    parser.add_argument("--dry-run", action="store_true", help="tiny model and sizes on any device (CPU included)")
    parser.add_argument("--backends", default=None, help="comma-separated (default: the GPU torch backends)")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable CPUs)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT)")
    args = parser.parse_args()

    sizes = DRY_RUN if args.dry_run else FULL
    backends = (
        tuple(args.backends.split(",")) if args.backends else (DRY_RUN_BACKENDS if args.dry_run else GPU_BACKENDS)
    )
    config = BenchConfig(
        backends=backends,
        check_only=("onnx",),
        batches=sizes.batches,
        warmup=sizes.warmup,
        iters=args.iters or sizes.iters,
        images=sizes.images,
        threads=args.threads,
        device="cpu" if args.dry_run else "cuda",
        memory=not args.dry_run,
        gpu_backends_on_cpu=args.dry_run,
    )
    random_weights = args.source is None
    source = bench_source(
        args.source,
        sizes.arch if random_weights else None,
        sizes.img_size if random_weights else None,
        random_weights,
    )
    try:
        result = run_bench(source, config)
    except (QsennError, ExportError, BenchError) as exc:
        sys.exit(f"error: {exc}")
    result["goals"] = goals(result, config.batches)
    result["dry_run"] = args.dry_run
    print(table(result))
    print(json.dumps(result["goals"], indent=2))

    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="qsenn-gpu-bench-")) if args.dry_run else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    name = result_name(
        "gpu_bench" + ("-dry-run" if args.dry_run else ""), result["model"]["label"], result["environment"], ("torch",)
    )
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
