"""Start-up and memory of qsenn_runtime, each measured in fresh processes:
  - import time of `qsenn_runtime` alone (lazy) and of everything `load` needs (onnxruntime
    included), median of several processes;
  - peak RSS of a process that loads the model and predicts one image (a 500×375 JPEG),
    next to a bare onnxruntime process that creates a session and runs the same model once.

    python benchmarks/runtime_footprint.py [MODEL.onnx] [--processes 7]

Results: benchmarks/results/runtime_footprint_<cpu>_ort<version>_<model>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from runtime_common import toy_model_file, write_results

from qsenn_bench.measurement import PEAK_RSS_KIB

REPO = Path(__file__).resolve().parents[1]

IMPORT_LAZY = """
import time; start = time.perf_counter(); import qsenn_runtime
print(time.perf_counter() - start)"""
IMPORT_FULL = """
import time; start = time.perf_counter(); import qsenn_runtime.loader, qsenn_runtime.backends, onnxruntime
print(time.perf_counter() - start)"""
PEAK_RUNTIME = (
    """
import sys, qsenn_runtime
qsenn_runtime.load(sys.argv[1]).predict(sys.argv[2])
"""
    + PEAK_RSS_KIB
)
PEAK_BARE = (
    """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
size = session.get_inputs()[0].shape[2]
session.run(["logits"], {"images": np.zeros((1, 3, size, size), np.float32)})
"""
    + PEAK_RSS_KIB
)


def run(code: str, *args: str) -> float:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="an ONNX export (default: a toy model)")
    parser.add_argument("--processes", type=int, default=7, help="fresh processes per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.model or toy_model_file(Path(scratch))
        image = Path(scratch) / "photo.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(image)
        lazy = [run(IMPORT_LAZY) for _ in range(args.processes)]
        full = [run(IMPORT_FULL) for _ in range(args.processes)]
        runtime_kib = [run(PEAK_RUNTIME, str(path), str(image)) for _ in range(3)]
        bare_kib = [run(PEAK_BARE, str(path)) for _ in range(3)]
        name = path.name
    data = {
        "import_qsenn_runtime_ms": 1e3 * statistics.median(lazy),
        "import_for_load_ms": 1e3 * statistics.median(full),
        "peak_rss_load_predict_one_mib": statistics.median(runtime_kib) / 1024,
        "peak_rss_bare_onnxruntime_mib": statistics.median(bare_kib) / 1024,
    }
    print(json.dumps({"model": name, **data}, indent=2))
    print(f"wrote {write_results('runtime_footprint', Path(name), data)}")


if __name__ == "__main__":
    main()
