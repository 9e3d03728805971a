"""How well the weak-evidence flag tells a model's own test images from another dataset's.

    OMP_NUM_THREADS=1 python benchmarks/evidence_ood.py RUN_A RUN_B [--evidence-count N] [--limit N]

Each run's Q-SENN model is exported to ONNX with `qsenn export` (its evidence calibrated on N
training images of its own dataset, as every export does), then both runs' test images go through
qsenn_runtime: for each model its own test set is in-distribution, the other run's test set is
out-of-distribution (e.g. Fashion-MNIST images given to the synthetic-data model, and the reverse).
Per model: the AUROC of the runtime's evidence (its class percentile, and the raw positive
evidence) and, from the same outputs, of two common baselines (max logit, max softmax
probability); the weak-evidence flag's rate on its own test set (false flags) and on the other
dataset (detections). Prints a table and writes benchmarks/results/evidence_ood_<models>_….json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import qsenn_runtime
from qsenn_bench.reporting import RESULTS, save_result
from qsenn_bench.validation import runtime_input, test_split
from qsenn_export import export
from qsenn_export.formats import DEFAULT_EVIDENCE_COUNT, make_options
from qsenn_train.run import Run

SCORES = ("evidence percentile", "positive evidence", "max logit", "max softmax")


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an in-distribution image > score of an outside one), ties counting half
    (the Mann–Whitney statistic)."""
    ordered = np.sort(outside)
    below = np.searchsorted(ordered, inside, side="left")
    tied = np.searchsorted(ordered, inside, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(inside) * len(outside)))


def scores(predictions: list) -> dict[str, np.ndarray]:
    logits = np.array([p.logits for p in predictions], dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {
        "evidence percentile": np.array([p.evidence.percentile for p in predictions]),
        "positive evidence": np.array([p.evidence.score for p in predictions]),
        "max logit": logits.max(axis=1),
        "max softmax": (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1),
        "weak": np.array([p.evidence.weak for p in predictions]),
    }


def test_inputs(run: Run, limit: int | None) -> tuple[list, np.ndarray, str]:
    """The run's test images as a deployment passes them (files or arrays), labels, a name."""
    test = test_split(run.entry("qsenn").load_recipe(), run)
    indices = range(len(test)) if limit is None else np.linspace(0, len(test) - 1, min(limit, len(test))).astype(int)
    labels = np.array([test.samples[i][1] for i in indices])
    return [runtime_input(test, i) for i in indices], labels, run.info.name


def predict(model: qsenn_runtime.Model, inputs: list) -> list:
    results = model.predict(inputs)
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} images could not be used, e.g. {failed[0].error}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs=2, type=Path, metavar="RUN", help="two run directories with a Q-SENN model")
    parser.add_argument("--evidence-count", type=int, default=DEFAULT_EVIDENCE_COUNT)
    parser.add_argument("--limit", type=int, default=None, help="at most this many test images per dataset")
    args = parser.parse_args()
    runs = [Run(path) for path in args.runs]
    data = [test_inputs(run, args.limit) for run in runs]
    figures: dict = {"evidence_count": args.evidence_count, "models": []}
    with tempfile.TemporaryDirectory(prefix="qsenn-evidence-") as work:
        for n, run in enumerate(runs):
            (own_inputs, own_labels, own_name), (other_inputs, _, other_name) = data[n], data[1 - n]
            options = make_options(
                "onnx", out=Path(work) / f"{own_name}.onnx", model_type="qsenn", evidence_count=args.evidence_count
            )
            start = time.perf_counter()
            path = export(run.path, options, echo=print)
            export_seconds = time.perf_counter() - start
            model = qsenn_runtime.load(path, "cpu")
            calibration = model.metadata.evidence
            inside, outside = predict(model, own_inputs), predict(model, other_inputs)
            s_in, s_out = scores(inside), scores(outside)
            row = {
                "model": f"{own_name} ({run.path})",
                "calibration": calibration.source,
                "weak_below_percentile": calibration.weak_below,
                "threshold": calibration.threshold,
                "in_distribution": f"{len(inside)} test images of {own_name}",
                "out_of_distribution": f"{len(outside)} test images of {other_name}",
                "test_accuracy": float(np.mean([p.class_index for p in inside] == own_labels)),
                "auroc": {name: auroc(s_in[name], s_out[name]) for name in SCORES},
                "false_flag_rate": float(s_in["weak"].mean()),
                "detection_rate": float(s_out["weak"].mean()),
                "export_seconds": round(export_seconds, 1),
            }
            figures["models"].append(row)
    print()
    print(f"{'model':<16} {'in / out':<22} " + " ".join(f"{name:>20}" for name in SCORES) + "   false flags  detected")
    for row in figures["models"]:
        name = row["model"].split(" (")[0]
        print(
            f"{name:<16} {row['in_distribution'].split(' test')[0] + ' / ' + row['out_of_distribution'].split(' test')[0]:<22} "
            + " ".join(f"{row['auroc'][s]:>20.3f}" for s in SCORES)
            + f"   {100 * row['false_flag_rate']:>10.1f}%  {100 * row['detection_rate']:>7.1f}%"
        )
    names = "+".join(row["model"].split(" (")[0] for row in figures["models"])
    print(f"\nwrote {save_result('evidence_ood', names, figures, RESULTS, libraries=('onnxruntime',))}")


if __name__ == "__main__":
    main()
