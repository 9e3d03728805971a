"""Peak memory of feature extraction (spec §4) on the embedded dataset at two sizes.

Each size runs in a fresh process: the synthetic dataset is generated (once, under --data),
a ResNet-18 with random weights extracts the pooled features of the training and test images
into memory-mapped .npy files, and a sampler thread records the process's peak anonymous
memory (RssAnon: what the process itself holds) next to its peak resident set (VmHWM, which
also counts the mapped feature-file pages the kernel may write back and drop at will).

    .venv/bin/python benchmarks/extraction_memory.py [--sizes 100,800] [--data data/extraction]

Writes benchmarks/results/extraction_memory_<cpu>_torch<v>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from qsenn_bench.environment import environment
from qsenn_bench.reporting import RESULTS, save_result

REPO = Path(__file__).resolve().parents[1]


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure_one(per_class: int, data: Path, image_size: int) -> dict:
    """Runs in the child process: generate, extract, report."""
    import tempfile

    import torch

    from qsenn_train.data.layouts import load_synth_splits
    from qsenn_train.data.synth import SynthSpec, ensure_synth
    from qsenn_train.data.transforms import build_transform
    from qsenn_train.device import Device
    from qsenn_train.features import extract_features
    from qsenn_train.model import build_model
    from qsenn_train.rundir import RunDir

    torch.set_num_threads(1)
    spec = SynthSpec(train_per_class=per_class, test_per_class=per_class // 2, image_size=image_size)
    train, test, info = load_synth_splits(ensure_synth(data, spec))
    transform = build_transform(info, image_size, train=False)
    model = build_model("resnet18", len(info.class_names))

    peak_anon = [status_kib("RssAnon")]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], status_kib("RssAnon"))

    baseline = status_kib("RssAnon")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        features = extract_features(
            model,
            train.with_transform(transform),
            test.with_transform(transform),
            RunDir(Path(folder), echo=lambda line: None),
            "features",
            batch_size=64,
            workers=0,
            device=Device.resolve("cpu"),
            seed=0,
            val_fraction=0.1,
            n_classes=len(info.class_names),
        )
        assert features is not None  # one process: rank 0
        feature_bytes = sum(a.nbytes for a in (features.train, features.val, features.test))
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return {
        "train_images": len(train),
        "test_images": len(test),
        "image_size": image_size,
        "feature_file_mib": round(feature_bytes / 2**20, 1),
        "seconds": round(seconds, 1),
        "rss_anon_before_mib": round(baseline / 1024, 1),
        "peak_rss_anon_mib": round(peak_anon[0] / 1024, 1),
        "peak_rss_vmhwm_mib": round(status_kib("VmHWM") / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,800", help="training images per class (16 classes), comma-separated")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "extraction")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure_one(args.child, args.data, args.image_size)))
        return
    rows = []
    for per_class in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(per_class),
                "--data",
                str(args.data),
                "--image-size",
                str(args.image_size),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    result = {
        "what": "feature extraction peak memory, resnet18 random weights, 1 thread, fresh process per size",
        "environment": environment(None),
        "sizes": rows,
    }
    print(f"wrote {save_result('extraction_memory', 'synth-resnet18', result, RESULTS, ('torch',))}")


if __name__ == "__main__":
    main()
