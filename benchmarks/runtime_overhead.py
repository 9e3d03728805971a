"""Overhead of qsenn_runtime over a bare onnxruntime `session.run`, on the CPU.

Both run the same model on the same preprocessed batch, interleaved in one process (the order
alternates every repetition, so drifts in machine load hit both alike):
  bare:    session.run(["logits"], {"images": batch})   — what a plain classifier would call
  runtime: model.predict_tensor(batch)                  — logits and features, the identity check
                                                         on every class, softmax, and the sorted
                                                         contributions of the predicted class
The ratio of the medians is the overhead (goal ≤ 1.05); "paired" is the median of the per-
repetition ratios. On a loaded machine both carry the inference's noise, so the runtime's own
work (everything but inference, replayed on recorded outputs) is also timed: 1 + own/bare.
Preprocessing (decode, resize, crop) is timed separately per image, since a bare
session.run does none.

    python benchmarks/runtime_overhead.py [MODEL.onnx] [--batches 1 32] [--repeats 20] [--threads 1]

Without MODEL a toy model of realistic size is built (benchmarks/runtime_common.py).
Results: benchmarks/results/runtime_overhead_<cpu>_ort<version>_<model>.json
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from runtime_common import latency_summary, toy_model_file, write_results

import qsenn_runtime
from qsenn_runtime.model import Model


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure_batch(path: Path, batch_size: int, repeats: int, threads: int | None) -> dict:
    model = qsenn_runtime.load(path, "cpu", threads=threads, batch_size=batch_size)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    size = model.metadata.input.size
    batch = np.random.default_rng(0).random((batch_size, 3, size, size), dtype=np.float32)
    runs = {"bare": lambda: session.run(["logits"], {"images": batch}), "runtime": lambda: model.predict_tensor(batch)}
    for run in runs.values():  # warm-up: allocations, kernel selection
        run(), run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name in ("bare", "runtime") if repeat % 2 == 0 else ("runtime", "bare"):
            times[name].append(timed(runs[name]))
    bare, runtime = latency_summary(times["bare"]), latency_summary(times["runtime"])
    paired = np.asarray(times["runtime"]) / np.asarray(times["bare"])
    own = runtime_own_work(model, batch, repeats)
    return {
        "batch": batch_size,
        "bare": bare,
        "runtime": runtime,
        "median_ratio": runtime["median_ms"] / bare["median_ms"],
        "median_paired_ratio": float(np.median(paired)),
        "runtime_own_work": own,
        "own_work_ratio": 1 + own["median_ms"] / bare["median_ms"],
    }


class ReplayBackend:
    """The model's backend with its outputs for one batch recorded: inference costs nothing."""

    def __init__(self, backend, batch: np.ndarray):
        self.name, self.precision, self.batch_range = backend.name, backend.precision, backend.batch_range
        self.input_shapes, self.output_shapes = backend.input_shapes, backend.output_shapes
        self.head_precision = backend.head_precision
        names = ("logits", "features", "feature_maps")
        self.outputs = dict(zip(names, backend.run(batch, names)))

    def run(self, batch, output_names):
        return [self.outputs[name] for name in output_names]


def runtime_own_work(model, batch: np.ndarray, repeats: int) -> dict:
    """predict_tensor without inference: the NaN check, the identity check, softmax and the
    sorted contributions. Free of inference noise, so it stays meaningful on a loaded machine."""
    replay = Model(model.metadata, ReplayBackend(model.backend, batch), source=model.source, batch_size=len(batch))
    replay.predict_tensor(batch)
    return latency_summary([timed(lambda: replay.predict_tensor(batch)) for _ in range(max(repeats, 50))])


def measure_preprocessing(path: Path, repeats: int) -> dict:
    """Per image: decode a 500×375 JPEG (CUB's typical size) and apply the test transform."""
    from qsenn_runtime.preprocess import load_rgb, resize_and_crop, to_chw

    spec = qsenn_runtime.read_metadata(path).input
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(
        buffer, "JPEG", quality=90
    )
    jpeg = buffer.getvalue()
    seconds = [timed(lambda: to_chw(resize_and_crop(load_rgb(jpeg, "x"), spec))) for _ in range(repeats)]
    return {"image": "500x375 JPEG", **latency_summary(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="an ONNX export (default: a toy model)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per variant and batch")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.model or toy_model_file(Path(scratch))
        rows = [measure_batch(path, b, args.repeats, args.threads) for b in args.batches]
        preprocessing = measure_preprocessing(path, 50)
        name = path.name
    print(f"model {name}; onnxruntime {ort.__version__} CPU, threads {args.threads or 'default'}")
    print(
        f"{'batch':>5} {'bare median ms':>15} {'runtime median ms':>18} {'ratio':>7} {'paired':>7} "
        f"{'own work ms':>12} {'1 + own/bare':>13}"
    )
    for row in rows:
        print(
            f"{row['batch']:>5} {row['bare']['median_ms']:>15.2f} {row['runtime']['median_ms']:>18.2f} "
            f"{row['median_ratio']:>7.3f} {row['median_paired_ratio']:>7.3f} "
            f"{row['runtime_own_work']['median_ms']:>12.3f} {row['own_work_ratio']:>13.4f}"
        )
    print(f"preprocessing per image ({preprocessing['image']}): median {preprocessing['median_ms']:.2f} ms")
    out = write_results(
        "runtime_overhead",
        Path(name),
        {"threads": args.threads, "repeats": args.repeats, "batches": rows, "preprocessing": preprocessing},
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
