"""Sparse-GLM stages (spec §5 selection, §6 path) on synthetic features: time per solver,
agreement of the path solvers, and per-epoch time and peak memory at large N.

    .venv/bin/python benchmarks/sparse_glm.py table [--n-train 2700 --n-val 300 --n-test 1000
        --dim 512 --classes 50 --features 20] [--solvers dataloader,glm-saga,matrix,glm-saga-1ulp]
    .venv/bin/python benchmarks/sparse_glm.py scale [--rows 100000,400000] [--classes 1000
        --features 50 --dim 2048] [--stages path-matrix,path-glm-saga,selection]
        [--table-dtype float32] [--device cpu]

`table`: selection with the paper's settings, then the paper's 101-λ path once per solver,
each from the same seed: `dataloader` is glm-saga fed by a shuffled DataLoader (how the
reference and qsenn before this benchmark fed it), `glm-saga` the same package fed by
ShuffledBatches (the default), `matrix` the matrix-form solver, `glm-saga-1ulp` glm-saga on
train features one float32 ulp larger (how far rounding alone moves glm-saga's own path). Per λ
it compares each path with the first one: weights and biases (relative Frobenius error), epoch
counts and the quantised head.

`scale`: each stage in a fresh process (peak RSS is that process's VmHWM, RssAnon sampled
every 20 ms next to it): N rows of F features (K classes) for one SAGA epoch of the path and
one evaluation pass; `selection` one SAGA epoch of the selection solver on N × D features
memory-mapped from disk. The 1.28 M projection is linear in N (both are per-row costs).

Features: non-negative (pooled ReLU maps), class means + unit noise, float32, seeded.
Threads: 1, as the pipeline runs both SAGA stages (context.saga_threads).
Writes benchmarks/results/sparse_glm_<what>_<cpu>_torch<v>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from extraction_memory import status_kib

from qsenn_bench.environment import environment
from qsenn_bench.reporting import RESULTS, save_result
from qsenn_train.features import FeatureSet, StatsAccumulator
from qsenn_train.glm_path import ShuffledBatches, dataloader_batches, fit_path
from qsenn_train.names import TABLE_DTYPES
from qsenn_train.quantize import quantization_entry, quantize
from qsenn_train.recipes import PAPER
from qsenn_train.selection import select_features

IMAGENET_ROWS = 1_281_167


def synthetic(
    n: int, dim: int, n_classes: int, seed: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """n non-negative feature rows whose means depend on the class (and their labels),
    written a chunk at a time into `out` (e.g. a memory-mapped file) when given."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 0.5, size=(n_classes, dim)).astype(np.float32)
    labels = rng.integers(0, n_classes, size=n)
    rows = np.empty((n, dim), dtype=np.float32) if out is None else out
    for start in range(0, n, 65536):  # bounded temporaries at 400 k × 2048
        part = labels[start : start + 65536]
        noise = rng.standard_normal((len(part), dim), dtype=np.float32)
        rows[start : start + 65536] = np.maximum(means[part] + noise, 0)
    return rows, labels


def feature_set(n_train: int, n_val: int, n_test: int, dim: int, n_classes: int, folder: Path) -> FeatureSet:
    """Train/val/test features memory-mapped from .npy files, as extract_features leaves them."""
    x, y = synthetic(n_train + n_val + n_test, dim, n_classes, seed=0)
    stats = StatsAccumulator(dim, n_classes)
    stats.update(torch.from_numpy(x[: n_train + n_val]), torch.from_numpy(y[: n_train + n_val]))
    arrays = []
    for name, part in (
        ("train", slice(0, n_train)),
        ("val", slice(n_train, n_train + n_val)),
        ("test", slice(n_train + n_val, None)),
    ):
        for kind, values in (("features", x[part]), ("labels", y[part])):
            np.save(folder / f"{name}_{kind}.npy", values)
            arrays.append(np.load(folder / f"{name}_{kind}.npy", mmap_mode="r"))
    train, train_labels, val, val_labels, test, test_labels = arrays
    return FeatureSet(train, train_labels, val, val_labels, test, test_labels, stats.finish())


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (0 when both are zero)."""
    scale = b.norm().item()
    diff = (a - b).norm().item()
    return diff / scale if scale else (0.0 if diff == 0 else float("inf"))


def compare(path: list[dict], reference: list[dict], n_per_class: int) -> dict:
    weight_err = [relative(a["weight"], b["weight"]) for a, b in zip(path, reference)]
    bias_err = [relative(a["bias"], b["bias"]) for a, b in zip(path, reference)]
    entry = quantization_entry(len(path))
    heads = [quantize(p[entry]["weight"], p[entry]["bias"], n_per_class) for p in (path, reference)]
    return {
        "bit_identical": all(
            torch.equal(a["weight"], b["weight"]) and torch.equal(a["bias"], b["bias"]) for a, b in zip(path, reference)
        ),
        "max_weight_rel_err": max(weight_err),
        "max_bias_rel_err": max(bias_err),
        "worst_lambda_index": int(np.argmax(np.maximum(weight_err, bias_err))),
        "lambdas_within_1e-4": sum(max(w, b) <= 1e-4 for w, b in zip(weight_err, bias_err)),
        "same_lambdas": all(a["lam"] == b["lam"] for a, b in zip(path, reference)),
        "same_epochs_at_every_lambda": [a["epochs"] for a in path] == [b["epochs"] for b in reference],
        "lambdas_with_other_epochs": [i for i, (a, b) in enumerate(zip(path, reference)) if a["epochs"] != b["epochs"]],
        "same_ternary_pattern": bool(torch.equal(heads[0].ternary, heads[1].ternary)),
        "ternary_entries_differing": int(heads[0].ternary.ne(heads[1].ternary).sum()),
        "magnitude_rel_err": abs(heads[0].magnitude - heads[1].magnitude) / heads[1].magnitude,
        "head_bias_rel_err": relative(heads[0].bias, heads[1].bias),
        "test_acc_entry": [path[entry]["metrics"]["acc_test"], reference[entry]["metrics"]["acc_test"]],
        "weight_rel_err_per_lambda": weight_err,
        "bias_rel_err_per_lambda": bias_err,
    }


def table(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        table_in(args, feature_set(args.n_train, args.n_val, args.n_test, args.dim, args.classes, Path(folder)))


def table_in(args, features: FeatureSet) -> None:
    torch.set_num_threads(1)
    stats = features.stats
    torch.manual_seed(0)
    start = time.perf_counter()
    selection = select_features(
        features.train,
        features.train_labels,
        stats.mean,
        stats.std,
        n_features=args.features,
        n_total=stats.n_total,
        max_reg_group=stats.max_reg_group,
        settings=PAPER.selection,
        n_classes=args.classes,
    ).selected
    rows: dict = {"selection": {"seconds": round(time.perf_counter() - start, 2), "selected": selection}}
    print(f"selection: {rows['selection']['seconds']} s", flush=True)
    paths = {}
    # glm-saga-1ulp: glm-saga on train features one float32 ulp larger, its own noise floor.
    nudged = dataclasses.replace(features, train=np.nextafter(np.asarray(features.train), np.float32(np.inf)))
    for solver in args.solvers.split(","):
        torch.manual_seed(1)
        start = time.perf_counter()
        paths[solver] = fit_path(
            nudged if solver == "glm-saga-1ulp" else features,
            selection,
            PAPER.glm_path,
            n_classes=args.classes,
            device=torch.device("cpu"),
            solver="matrix" if solver == "matrix" else "glm-saga",
            batches=dataloader_batches if solver == "dataloader" else ShuffledBatches,
        )
        seconds = time.perf_counter() - start
        rows[f"path_{solver}"] = {"seconds": round(seconds, 2), "epochs": sum(e["epochs"] for e in paths[solver])}
        print(f"path {solver}: {seconds:.1f} s, {rows[f'path_{solver}']['epochs']} epochs", flush=True)
    reference = paths["dataloader" if "dataloader" in paths else "glm-saga"]
    agreement = {}
    for solver, path in paths.items():
        if path is not reference:
            agreement[solver] = compare(path, reference, PAPER.n_per_class)
            brief = {k: v for k, v in agreement[solver].items() if not k.endswith("per_lambda")}
            print(f"{solver} vs reference: {brief}", flush=True)
    result = {
        "what": "selection and 101-λ path per solver on synthetic features, paper settings, 1 thread",
        "problem": {k: getattr(args, k) for k in ("n_train", "n_val", "n_test", "dim", "classes", "features")},
        "reference": "dataloader" if "dataloader" in paths else "glm-saga",
        "stages": rows,
        "agreement": agreement,
        "environment": environment(None),
    }
    name = f"{args.n_train + args.n_val}x{args.dim}-k{args.classes}-f{args.features}"
    print(f"wrote {save_result('sparse_glm_table', name, result, RESULTS, ('torch',))}")


def seconds_since(began: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def measure_stage(stage: str, rows: int, args) -> dict:
    """One stage in this (fresh) process: returns seconds and memory."""
    from glm_saga import elasticnet

    from qsenn_train.glm_path import Standardize
    from qsenn_train.saga_path import GlmSagaSteps, elastic_net_prox
    from qsenn_train.selection import ProximalSaga, extended_prox, standardised_batches

    torch.set_num_threads(1)
    device = torch.device(args.device)
    dtype = getattr(torch, args.table_dtype)
    one_epoch = dataclasses.replace(PAPER.glm_path, max_epochs=1, lookbehind=1)
    peak_anon = [status_kib("RssAnon")]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak_anon[0] = max(peak_anon[0], status_kib("RssAnon"))

    out: dict = {"stage": stage, "rows": rows, "table_dtype": args.table_dtype, "device": args.device}
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        dim = args.dim if stage == "selection" else args.features
        if stage == "selection":  # on disk, as extract_features leaves them
            path = Path(folder) / "x.npy"
            file = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
            y = synthetic(rows, dim, args.classes, seed=0, out=file)[1]
            file.flush()
            del file  # the only mapping left is the read-only one below
            features = np.load(path, mmap_mode="r")
            out["feature_file_mib"] = round(features.nbytes / 2**20, 1)
        else:
            x, y = synthetic(rows, dim, args.classes, seed=0)
            features = torch.from_numpy(x)
        labels = torch.from_numpy(y)
        stats = StatsAccumulator(dim, args.classes)
        for start in range(0, rows, 65536):
            stats.update(torch.from_numpy(np.asarray(features[start : start + 65536])), labels[start : start + 65536])
        mean, std = stats.finish().mean, stats.finish().std
        baseline = status_kib("RssAnon")
        out["rss_before_mib"] = round(status_kib("VmRSS") / 1024, 1)
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak restarts at the current RSS
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        torch.manual_seed(0)
        began = time.perf_counter()
        if stage == "selection":
            solver = ProximalSaga(
                standardised_batches(features, mean, std, device),
                labels.to(device),
                args.classes,
                rows,
                dataclasses.replace(PAPER.selection, max_epochs=1, lookbehind=1),
                device,
                table_dtype=dtype,
            )
            selected = torch.zeros(dim, dtype=torch.bool, device=device)
            solver.fit(1e-3, lambda w: extended_prox(w, selected, 1e-3, PAPER.selection.lr, PAPER.selection.alpha))
            out["epoch_seconds"] = seconds_since(began, device)
        else:
            batches = ShuffledBatches(features, labels, one_epoch.batch_size)
            preprocess = Standardize(mean, std, device)
            linear = torch.nn.Linear(dim, args.classes).to(device)
            torch.nn.init.zeros_(linear.weight)
            torch.nn.init.zeros_(linear.bias)
            lam = torch.tensor(1e-3)
            if stage == "path-glm-saga":
                elasticnet.train_saga(
                    linear,
                    batches,
                    one_epoch.lr,
                    1,
                    lam,
                    one_epoch.alpha,
                    group=False,
                    n_ex=rows,
                    n_classes=args.classes,
                    preprocess=preprocess,
                    lookbehind=1,
                    table_device=device,
                    logger=lambda line: None,
                )
            else:
                solver = GlmSagaSteps(
                    standardised_batches(features, mean, std, device),
                    labels.to(device),
                    args.classes,
                    rows,
                    one_epoch,
                    device,
                    table_dtype=dtype,
                    order=batches.order,
                )
                solver.fit(lam, elastic_net_prox(lam, torch.tensor(one_epoch.lr), one_epoch.alpha))
                with torch.no_grad():
                    linear.weight.copy_(solver.weight)
                    linear.bias.copy_(solver.bias)
            out["epoch_seconds"] = seconds_since(began, device)
            began = time.perf_counter()
            with torch.no_grad():  # the per-λ evaluation: one chunked pass over the train split
                elasticnet.elastic_loss_and_acc_loader(linear, batches, lam, one_epoch.alpha, preprocess)
            out["eval_pass_seconds"] = seconds_since(began, device)
        done.set()
        sampler.join()
    out.update(
        rss_anon_before_mib=round(baseline / 1024, 1),
        peak_rss_anon_mib=round(peak_anon[0] / 1024, 1),
        peak_rss_vmhwm_mib=round(status_kib("VmHWM") / 1024, 1),
    )
    if device.type == "cuda":
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def scale(args) -> None:
    rows = []
    for n in (int(s) for s in args.rows.split(",")):
        for stage in args.stages.split(","):
            child = [sys.executable, __file__, "scale", "--child", stage, "--rows", str(n)]
            for flag in ("classes", "features", "dim", "table_dtype", "device", "tmp"):
                child += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            done = subprocess.run(child, check=True, capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["projected_epoch_seconds_1.28M"] = round(row["epoch_seconds"] * IMAGENET_ROWS / n, 1)
            rows.append(row)
            print(row, flush=True)
    result = {
        "what": "one SAGA epoch (and one evaluation pass) per stage, fresh process each, 1 thread",
        "problem": {k: getattr(args, k) for k in ("classes", "features", "dim", "table_dtype", "device")},
        "runs": rows,
        "environment": environment(None),
    }
    name = (
        f"{args.stages.replace(',', '-')}-k{args.classes}-f{args.features}-d{args.dim}-{args.table_dtype}-{args.device}"
    )
    print(f"wrote {save_result('sparse_glm_scale', name, result, RESULTS, ('torch',))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("table")
    t.add_argument("--n-train", type=int, default=2700)
    t.add_argument("--n-val", type=int, default=300)
    t.add_argument("--n-test", type=int, default=1000)
    t.add_argument("--dim", type=int, default=512)
    t.add_argument("--classes", type=int, default=50)
    t.add_argument("--features", type=int, default=20)
    t.add_argument("--solvers", default="dataloader,glm-saga,matrix,glm-saga-1ulp")
    t.add_argument("--tmp", default=None, help="folder for the memory-mapped features")
    s = sub.add_parser("scale")
    s.add_argument("--rows", default="100000,400000")
    s.add_argument("--classes", type=int, default=1000)
    s.add_argument("--features", type=int, default=50)
    s.add_argument("--dim", type=int, default=2048)
    s.add_argument("--stages", default="path-matrix,path-glm-saga,selection")
    s.add_argument("--table-dtype", default="float32", choices=TABLE_DTYPES)
    s.add_argument("--device", default="cpu")
    s.add_argument("--tmp", default=None, help="folder for the memory-mapped selection features")
    s.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what == "table":
        table(args)
    elif args.child:
        print(json.dumps(measure_stage(args.child, int(args.rows), args)))
    else:
        scale(args)


if __name__ == "__main__":
    main()
