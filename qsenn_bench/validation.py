"""`qsenn validate-run RUN`: a trained run checked end to end on its whole test set.

It collects the metrics of the dense model and of every finished sparse model (Q-SENN, and SLDD
where trained) and the wall time of every stage; names each feature after the classes it raises
and lowers (the global explanation); exports every finished model to ONNX with those names; runs
qsenn_runtime over every test image (decoding and preprocessing them itself) and compares it with
the PyTorch model under the training test transform; draws a contact sheet of the Q-SENN model's
top features with the test images that activate them most; and writes one JSON result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import qsenn_runtime
from qsenn_export import export
from qsenn_export.fold import FoldedHead, is_ternary, read_head
from qsenn_export.formats import make_options
from qsenn_export.verify import (
    argmax_agreement,
    identity_residual,
    max_abs_diff,
    torch_outputs,
)
from qsenn_train.atlas.feature_names import class_based_names
from qsenn_train.data import spread_subset
from qsenn_train.data.base import ArrayImageDataset
from qsenn_train.data.layouts import load_splits
from qsenn_train.data.transforms import unnormalised_test_transform
from qsenn_train.metrics import METRIC_KEYS
from qsenn_train.model import QResNet
from qsenn_train.recipes import Recipe
from qsenn_train.run import DENSE, ModelEntry, Run
from qsenn_train.rundir import write_json_atomic

from .environment import environment
from .errors import BenchError
from .reporting import result_name

SHEET_FILE = "features.png"
MODEL_LABELS = {DENSE: "dense", "qsenn": "Q-SENN", "sldd": "SLDD"}
BATCH = 256
# A sparse model counts as close to dense within this many points of top-1 (the paper's claim).
ACCURACY_GAP_POINTS = 1.5


def feature_names_file(model_type: str) -> str:
    """RUN/feature_names_<type>.json: the names written into that model's export."""
    return f"feature_names_{model_type}.json"


@dataclass(frozen=True)
class Checked:
    """One exported model against its PyTorch source over the test set."""

    model_type: str
    onnx_path: Path
    head: FoldedHead
    agreement: dict
    features: np.ndarray  # c of the exported model, per test image
    predicted: np.ndarray
    labels: np.ndarray


# ---- the two sides over the test set -------------------------------------------------------


def test_split(recipe: Recipe, run: Run):
    """The run's test images (its subset for a smoke run), without a transform."""
    info = run.info
    _, test, _ = load_splits(info.name, info.root, crop_gt=info.crop_gt)
    return spread_subset(test, recipe.limit_test)


def runtime_input(dataset, index: int):
    """An image as a deployment would pass it: the raw array, or the file path."""
    return dataset.images[index] if isinstance(dataset, ArrayImageDataset) else dataset.samples[index][0]


def torch_pass(model: QResNet, head: FoldedHead, test, run: Run, img_size: int) -> dict[str, np.ndarray]:
    """Logits and features c of the trained model (verify.SourceForward), training test transform,
    a batch at a time."""
    loader = DataLoader(test.with_transform(unnormalised_test_transform(run.info, img_size)), batch_size=BATCH)
    logits, features, labels = [], [], []
    for images, y in loader:
        out = torch_outputs(model, head.scale, run.info, images)
        logits.append(out["logits"])
        features.append(out["features"])
        labels.append(y.numpy())
    return {"logits": np.concatenate(logits), "features": np.concatenate(features), "labels": np.concatenate(labels)}


def runtime_pass(model: qsenn_runtime.Model, test) -> dict[str, np.ndarray]:
    """Logits and features c of the exported model, qsenn_runtime decoding every image itself."""
    logits, features = [], []
    for start in range(0, len(test), BATCH):
        batch = [runtime_input(test, i) for i in range(start, min(start + BATCH, len(test)))]
        for prediction in model.predict(batch):
            if not prediction.ok:
                raise BenchError(f"the runtime could not read test image {prediction.source}: {prediction.error}")
            logits.append(prediction.logits)
            features.append(prediction.features)
    return {"logits": np.asarray(logits, dtype=np.float32), "features": np.asarray(features, dtype=np.float32)}


def agreement(reference: dict, exported: dict, metadata: qsenn_runtime.ModelMetadata) -> dict:
    """Exact argmax agreement, the disagreements with PyTorch's top-2 margin, the largest logit and
    feature differences and the largest identity residual over all images and classes."""
    ref, got = reference["logits"], exported["logits"]
    ref_class, got_class = ref.argmax(1), got.argmax(1)
    differ = np.flatnonzero(ref_class != got_class)
    top2 = np.sort(ref, axis=1)[:, -2:]
    return {
        "images": len(ref),
        "argmax_agreement": argmax_agreement(ref, got, tie=0.0),
        "disagreements": [
            {
                "image": int(i),
                "pytorch": int(ref_class[i]),
                "onnx": int(got_class[i]),
                "pytorch_top2_margin": float(top2[i, 1] - top2[i, 0]),
            }
            for i in differ[:20]
        ],
        "max_abs_logit_difference": max_abs_diff(got, ref),
        "max_abs_feature_difference": max_abs_diff(exported["features"], reference["features"]),
        "max_identity_residual": identity_residual(got, exported["features"], metadata),
        "pytorch_accuracy": float(np.mean(ref_class == reference["labels"])),
        "onnx_accuracy": float(np.mean(got_class == reference["labels"])),
    }


# ---- the contact sheet ----------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSummary:
    index: int
    channel: int
    name: str
    raises: tuple[str, ...]
    lowers: tuple[str, ...]
    importance: float  # mean |W[ŷ, j]·c_j| over the test images (ŷ: predicted class)
    top_images: tuple[int, ...]  # test images with the largest c_j, strongest first

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "channel": self.channel,
            "name": self.name,
            "raises": list(self.raises),
            "lowers": list(self.lowers),
            "importance": self.importance,
            "top_images": list(self.top_images),
        }


def summarize_features(
    metadata: qsenn_runtime.ModelMetadata, features: np.ndarray, predicted: np.ndarray, top_k: int
) -> list[FeatureSummary]:
    """Every used feature, most important first."""
    weights = metadata.weights.astype(np.float64)
    importance = np.abs(weights[predicted] * features).mean(axis=0)
    summaries = []
    for j in np.argsort(-importance, kind="stable"):
        column = weights[:, j]
        if not column.any():
            continue
        feature = metadata.features[j]
        summaries.append(
            FeatureSummary(
                int(j),
                feature.channel,
                feature.name,
                tuple(metadata.class_names[k] for k in np.flatnonzero(column > 0)),
                tuple(metadata.class_names[k] for k in np.flatnonzero(column < 0)),
                float(importance[j]),
                tuple(int(i) for i in np.argsort(-features[:, j], kind="stable")[:top_k]),
            )
        )
    return summaries


def save_contact_sheet(
    model: qsenn_runtime.Model,
    test,
    labels: np.ndarray,
    features: np.ndarray,
    rows: list[FeatureSummary],
    path: Path,
    title: str,
) -> Path:
    """Rows: features; columns: the test images that activate each most, as the model sees them,
    with the feature's heat map over them and their true class and c below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from qsenn_runtime.heatmap import heat_map

    columns = max(len(row.top_images) for row in rows)
    figure = Figure(figsize=(2.2 + 1.0 * columns, 0.5 + 1.22 * len(rows)), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=11, fontweight="bold")
    grid = figure.add_gridspec(len(rows), columns + 1, width_ratios=[2.2] + [1.0] * columns)
    for r, row in enumerate(rows):
        label = figure.add_subplot(grid[r, 0])
        label.axis("off")
        label.text(0, 0.78, f"feature {row.index} (channel {row.channel})", fontsize=9, fontweight="bold")
        label.text(0, 0.48, "+ " + (", ".join(row.raises) or "—"), fontsize=8.5, color="#1a7f37", wrap=True)
        label.text(0, 0.2, "− " + (", ".join(row.lowers) or "—"), fontsize=8.5, color="#c62828", wrap=True)
        for c, image in enumerate(row.top_images):
            axes = figure.add_subplot(grid[r, c + 1])
            explained = model.explain(runtime_input(test, image))
            axes.imshow(explained.image, interpolation="nearest")  # small images: show their pixels
            axes.imshow(
                heat_map(explained.feature_maps[row.index], explained.image.shape[:2]),
                cmap="inferno",
                alpha=0.35,
                vmin=0,
                vmax=1,
                interpolation="bilinear",
            )
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_xlabel(f"{model.class_names[labels[image]]}\nc={features[image, row.index]:.2f}", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


# ---- the whole check --------------------------------------------------------------------------


def _timed(times: dict, label: str, work: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = work()
    times[label] = round(time.perf_counter() - start, 2)
    return result


def check_model(
    run: Run, loaded: tuple[QResNet, dict, ModelEntry], test, times: dict, echo: Callable[[str], None]
) -> Checked:
    """Export one finished model with class-based feature names and run it over the test set."""
    model, _, entry = loaded
    model_type = entry.model_type
    recipe = entry.load_recipe()
    head = read_head(model, entry.checkpoint, model_type)
    names_file = run.path / feature_names_file(model_type)
    write_json_atomic(names_file, class_based_names(head.weights.numpy(), run.info.class_names))
    options = make_options("onnx", out=run.path / f"{model_type}.onnx", model_type=model_type, feature_names=names_file)
    onnx_path = _timed(times, f"{model_type}: export", lambda: export(run.path, options, echo))
    reference = _timed(
        times,
        f"{model_type}: pytorch ({len(test)} test images)",
        lambda: torch_pass(model, head, test, run, recipe.img_size),
    )
    runtime = qsenn_runtime.load(onnx_path, "cpu", batch_size=BATCH)
    exported = _timed(times, f"{model_type}: runtime ({len(test)} test images)", lambda: runtime_pass(runtime, test))
    checked = agreement(reference, exported, runtime.metadata)
    echo(
        f"{MODEL_LABELS[model_type]} runtime vs PyTorch on {checked['images']} test images: argmax agreement "
        f"{100 * checked['argmax_agreement']:.2f}%, max|Δlogit| {checked['max_abs_logit_difference']:.1e}, "
        f"largest identity residual {checked['max_identity_residual']:.1e}"
    )
    return Checked(
        model_type, onnx_path, head, checked, exported["features"], exported["logits"].argmax(1), reference["labels"]
    )


def validate_run(
    run_dir: Path,
    *,
    results_dir: Path | None = None,
    sheet: Path | None = None,
    sheet_features: int = 12,
    top_images: int = 8,
    echo: Callable[[str], None] = print,
) -> dict:
    """Everything above; returns the result that it writes to results_dir (default: the run)."""
    run = Run(run_dir, echo=echo)
    if "qsenn" not in run.model_types:
        run.entry("qsenn")  # raises the line that says what to finish
    recipe = run.entry("qsenn").load_recipe()
    # Every model is read first: a damaged checkpoint is refused before the dataset is opened or
    # anything is written.
    loaded = {model_type: run.load_model(model_type) for model_type in run.model_types}
    test = test_split(recipe, run)
    times: dict[str, float] = {}
    checked = {model_type: check_model(run, loaded[model_type], test, times, echo) for model_type in loaded}

    qsenn = checked["qsenn"]
    runtime = qsenn_runtime.load(qsenn.onnx_path, "cpu", batch_size=BATCH)
    summaries = summarize_features(runtime.metadata, qsenn.features, qsenn.predicted, top_images)
    sheet = sheet or run.path / SHEET_FILE
    _timed(
        times,
        "contact sheet",
        lambda: save_contact_sheet(
            runtime,
            test,
            qsenn.labels,
            qsenn.features,
            summaries[:sheet_features],
            sheet,
            f"Q-SENN on {run.info.name}: the {min(sheet_features, len(summaries))} most used features "
            f"and the test images that activate them most",
        ),
    )
    echo(f"wrote {sheet}")

    result = _result(run, recipe, checked, summaries, times, sheet)
    out = Path(results_dir or run.path) / (
        result_name(
            f"{run.info.name}-validation",
            f"{recipe.arch}-{recipe.img_size}" + recipe.subset_tag,
            result["environment"],
        )
        + ".json"
    )
    write_json_atomic(out, result)
    echo(markdown_table(result))
    echo(f"wrote {out}")
    return result


def head_summary(head: FoldedHead) -> dict:
    """The exported head's non-zero weights: how many, their magnitudes, whether all are ±a."""
    weight = head.weights.double() * head.scale
    magnitudes = weight.abs()[weight != 0]
    return {
        "kind": head.kind,
        "nonzeros": int(magnitudes.numel()),
        "magnitude_min": float(magnitudes.min()),
        "magnitude_max": float(magnitudes.max()),
        "plus_minus_a": is_ternary(weight),
    }


def _result(
    run: Run, recipe: Recipe, checked: dict[str, Checked], summaries: list[FeatureSummary], times: dict, sheet: Path
) -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    entries = {t: run.entry(t) for t in checked}
    metrics = {DENSE: run.metrics(entries["qsenn"].dense_metrics) or {}}
    metrics.update({t: run.metrics(entry.metrics) or {} for t, entry in entries.items()})
    models = {label: {k: m[k] for k in METRIC_KEYS if k in m} for label, m in metrics.items()}
    dense = models[DENSE]["Accuracy"]
    checks = {
        t: {
            f"within_{ACCURACY_GAP_POINTS}_points_of_dense": 100 * (dense - models[t]["Accuracy"])
            <= ACCURACY_GAP_POINTS,
            f"at_most_{recipe.n_per_class}_weights_per_class": models[t]["PerClass"] <= recipe.n_per_class,
            "weights_plus_minus_a": head_summary(c.head)["plus_minus_a"],
            "exported_argmax_agreement_100%": c.agreement["argmax_agreement"] == 1.0,
        }
        for t, c in checked.items()
    }
    training = {"dense training": run.stage_seconds(f"dense-{entries['qsenn'].dense_key}")}
    training.update({t: run.stage_seconds(entry.folder) for t, entry in entries.items()})
    return {
        "dataset": run.info.name,
        "run": str(run.path),
        "recipe": recipe.name,
        "data_variant": recipe.data_variant(),
        "arch": recipe.arch,
        "img_size": recipe.img_size,
        "seed": run.seed,
        "environment": environment(gpu),
        "models": models,
        "heads": {t: head_summary(c.head) for t, c in checked.items()},
        "checks": checks,
        "exported_vs_pytorch": {t: c.agreement for t, c in checked.items()},
        "onnx": {t: {"path": str(c.onnx_path), "bytes": c.onnx_path.stat().st_size} for t, c in checked.items()},
        "wall_seconds": {
            "training": training,
            "validation": times,
            "total": round(sum(v["total"] for v in training.values()) + sum(times.values()), 1),
        },
        "features": [s.to_dict() for s in summaries],
        "contact_sheet": str(sheet),
    }


def markdown_table(result: dict) -> str:
    """The README's table: one row per model, then each exported model's check."""
    training = result["wall_seconds"]["training"]
    head = "| model | top-1 | NFfeatures | PerClass | diversity@5 | Dependence | training wall time |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for label, m in result["models"].items():
        seconds = training["dense training" if label == DENSE else label]["total"]
        lines.append(
            f"| {MODEL_LABELS[label]} | {100 * m['Accuracy']:.2f}% | {m['NFfeatures']} | {m['PerClass']:.2f} "
            f"| {m['diversity']:.3f} | {m['Dependence']:.3f} | {seconds / 60:.1f} min |"
        )
    lines.append("")
    for label, checked in result["exported_vs_pytorch"].items():
        lines.append(
            f"Exported {MODEL_LABELS[label]} ONNX vs PyTorch fp32 on {checked['images']} test images: argmax agreement "
            f"{100 * checked['argmax_agreement']:.2f}%, largest contribution-identity residual "
            f"{checked['max_identity_residual']:.1e}."
        )
    lines.append(
        f"Everything took {result['wall_seconds']['total'] / 60:.1f} min on {result['environment']['device']} "
        f"({result['environment']['cpus']} CPUs)."
    )
    return "\n".join(lines)
