"""What one prediction costs for the worst images the runtime's decoding budget lets in (and for
those it refuses): wall time and peak resident memory (VmHWM, reset after the model is loaded;
Linux), each in a fresh process.

    OMP_NUM_THREADS=1 python benchmarks/image_budget.py [--compare-with OTHER_SOURCE_TREE] [--repeats N]

Images (written to a temporary folder): the 1×80,000,000 px RGB PNG of 311 KB (over the default
pixel limit: refused), a 1×24,999,999 px RGB PNG (under the pixel limit, over the byte limit with
its row pointers: refused), a 1×11,184,810 px RGB PNG (the tallest sliver within the byte limit) and
a 5000×5000 RGB PNG (at the pixel limit), a 5000×5000 16-bit grey PNG, a 6400×4800 JPEG (over
the limit: decoded at 1/2 scale), and a 500×375 JPEG (a normal photo). The model is a toy ONNX model of 448 px input. With
--compare-with, the same images go through another checkout of the runtime too, interleaved
(e.g. the tree before the budget), so the ratios hold on a busy machine.
Prints a table and writes benchmarks/results/image_budget_<model>_….json.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qsenn_bench.reporting import RESULTS, save_result
from qsenn_bench.testing.hostile_inputs import generator
from qsenn_bench.testing.toy_onnx import save_toy_model, toy_metadata

REPO = Path(__file__).resolve().parents[1]
MODEL_SIZE = 448
# One prediction in a fresh process: its wall time and the process's peak RSS (ru_maxrss, KiB).
PROBE = """
import json, sys, time, warnings
from pathlib import Path
from PIL import Image
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
import qsenn_runtime

def status(key):  # MiB; VmHWM is this process's peak, reset below (ru_maxrss would include the parent's)
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024

model = qsenn_runtime.load(sys.argv[1], "cpu")
loaded = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak to the current RSS
start = time.perf_counter()
try:
    model.predict(sys.argv[2])
    outcome = "predicted"
except qsenn_runtime.InputError as exc:
    outcome = "refused: " + str(exc).split(": ", 1)[1][:90]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": status("VmHWM"), "loaded_mib": loaded, "outcome": outcome}))
"""


def sliver_png(height: int) -> bytes:
    """A 1×height black RGB PNG, its scanlines deflated a million at a time (a few hundred KB)."""
    chunk = generator().png_chunk  # tests/hostile/make_cases.py's PNG chunk framing
    packer, rows = zlib.compressobj(9), b"\0" * 4 * 1_000_000  # filter byte + 3 channels per row
    idat = b"".join(packer.compress(rows) for _ in range(height // 1_000_000))
    idat += packer.compress(b"\0" * 4 * (height % 1_000_000)) + packer.flush()
    header = struct.pack(">IIBBBBB", 1, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_images(folder: Path) -> dict[str, Path]:
    images = {
        "1×80,000,000 RGB PNG (the issue's)": ("sliver80m.png", lambda p: p.write_bytes(sliver_png(80_000_000))),
        "1×24,999,999 RGB PNG": ("sliver25m.png", lambda p: p.write_bytes(sliver_png(24_999_999))),
        "1×11,184,810 RGB PNG": ("sliver11m.png", lambda p: p.write_bytes(sliver_png(11_184_810))),
        "5000×5000 RGB PNG": ("square25m.png", lambda p: Image.new("RGB", (5000, 5000), (90, 140, 200)).save(p)),
        "5000×5000 16-bit grey PNG": (
            "grey16.png",
            lambda p: Image.fromarray(np.full((5000, 5000), 40000, np.uint16)).save(p),
        ),
        "6400×4800 JPEG (30.7 Mpx)": (
            "photo31m.jpg",
            lambda p: Image.new("RGB", (6400, 4800), (90, 140, 200)).save(p, quality=90),
        ),
        "500×375 JPEG (a normal photo)": (
            "photo.jpg",
            lambda p: Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), np.uint8)).save(
                p, quality=90
            ),
        ),
    }
    paths = {}
    for label, (name, write) in images.items():
        write(folder / name)
        paths[label] = folder / name
    return paths


def probe(tree: Path, model: Path, image: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(model), str(image)],
        capture_output=True,
        text=True,
        cwd=tree,  # `python -c` puts the working directory first on sys.path
        env={**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    if result.returncode:
        return {"outcome": f"failed: {result.stderr.strip().splitlines()[-1][:120]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-with", type=Path, default=None, metavar="TREE")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    trees = {"this tree": REPO} | ({"compared tree": args.compare_with} if args.compare_with else {})
    rows: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="qsenn-budget-") as work:
        model = Path(work) / "toy.onnx"
        save_toy_model(model, toy_metadata(size=MODEL_SIZE))
        images = write_images(Path(work))
        for _ in range(args.repeats):
            for label, image in images.items():
                for name, tree in trees.items():  # interleaved: the trees see the same machine
                    rows.setdefault(label, {}).setdefault(name, []).append(probe(tree, model, image))
        sizes = {label: image.stat().st_size for label, image in images.items()}
    figures: dict[str, Any] = {
        "model": f"toy ONNX, {MODEL_SIZE} px",
        "trees": {k: str(v) for k, v in trees.items()},
        "images": {},
    }
    print(
        f"{'image':<34} {'file':>8}  "
        + "  ".join(f"{name + ': s, peak MiB (+ over the loaded model), outcome':<60}" for name in trees)
    )
    for label, by_tree in rows.items():
        best = {name: min(runs, key=lambda r: r.get("seconds", 1e9)) for name, runs in by_tree.items()}
        figures["images"][label] = {"file_bytes": sizes[label], **best}
        cells = [
            f"{r.get('seconds', float('nan')):6.2f} {r.get('peak_mib', float('nan')):7.0f} "
            f"(+{r.get('peak_mib', float('nan')) - r.get('loaded_mib', float('nan')):5.0f})  {r['outcome'][:35]:<35}"
            for r in best.values()
        ]
        print(f"{label:<34} {sizes[label] / 1024:7.0f}K  " + "  ".join(cells))
    print(f"\nwrote {save_result('image_budget', f'toy-{MODEL_SIZE}px', figures, RESULTS, libraries=('onnxruntime',))}")


if __name__ == "__main__":
    main()
