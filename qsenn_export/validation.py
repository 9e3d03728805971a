"""`qsenn validate-run RUN`: a trained run checked end to end on its whole test set.

It collects the metrics of the dense, Q-SENN and SLDD models the run directory holds (they
share the dense model) and the wall time of every stage; names each Q-SENN feature after the
classes it raises and lowers (the global explanation, T); exports the Q-SENN model to ONNX with
those names; runs qsenn_runtime over every test image (decoding and preprocessing them itself)
and compares it with the PyTorch model under the training test transform; draws a contact sheet
of the top features with the test images that activate them most; and writes one JSON result.

It lives in qsenn_export because it exports and runs the runtime (qsenn_train imports neither).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import qsenn_runtime
from qsenn_train.checkpoint import load_checkpoint
from qsenn_train.data import spread_subset
from qsenn_train.data.base import ArrayImageDataset, DatasetInfo
from qsenn_train.data.layouts import load_splits
from qsenn_train.data.transforms import build_transform
from qsenn_train.errors import QsennError
from qsenn_train.model import QResNet
from qsenn_train.pipeline import METRIC_KEYS
from qsenn_train.recipes import Recipe
from qsenn_train.rundir import CONFIG, FINAL_LINK, write_json_atomic
from qsenn_train.training import make_loader

from . import export
from .fold import MAGNITUDE_RTOL, ternary_head
from .formats import make_options
from .timing import environment, result_name

FEATURE_NAMES_FILE = "feature_names.json"
SHEET_FILE = "features.png"
MODEL_LABELS = {"dense": "dense", "qsenn": "Q-SENN", "sldd": "SLDD"}
BATCH = 256
# The goals: sparse models within this many points of dense top-1, ≤ r weights per class.
ACCURACY_GAP_POINTS = 1.5


@dataclass(frozen=True)
class RunFiles:
    """What training left in the run directory."""

    path: Path
    recipe: Recipe
    seed: int
    info: DatasetInfo
    metrics: dict[str, dict]  # dense, qsenn, sldd (those present)
    timings: dict[str, float]

    @classmethod
    def read(cls, run_dir: Path) -> RunFiles:
        run_dir = Path(run_dir)
        config = _json(run_dir / CONFIG, "is this a run directory of `qsenn train`?")
        metrics = {
            label: _json(run_dir / f"metrics_{label}.json")
            for label in MODEL_LABELS
            if (run_dir / f"metrics_{label}.json").is_file()
        }
        for label in ("dense", "qsenn"):
            if label not in metrics:
                raise QsennError(
                    f"{run_dir} has no metrics_{label}.json; train Q-SENN to the end first "
                    f"(`qsenn train ... --model-type qsenn --resume`)"
                )
        timings = _json(run_dir / "timings.json") if (run_dir / "timings.json").is_file() else {}
        return cls(
            run_dir,
            Recipe.from_json(config["recipe"]),
            int(config["seed"]),
            DatasetInfo.from_json(config["dataset"]),
            metrics,
            timings,
        )

    def stage_times(self) -> dict:
        """Seconds per stage: dense training, metrics, and each sparse model's steps summed over
        its rounds. Sparse steps are timed as "<folder>[/iterN]: <step>"; only the folder the
        metrics describe counts (a run directory may hold older variants)."""
        times: dict = {k: v for k, v in self.timings.items() if ": " not in k}
        for label in ("qsenn", "sldd"):
            if label not in self.metrics:
                continue
            folder = self.metrics[label]["model"]
            steps: dict[str, float] = {}
            for key, seconds in self.timings.items():
                where, _, step = key.partition(": ")
                if step and (where == folder or where.startswith(folder + "/")):
                    steps[step] = round(steps.get(step, 0.0) + seconds, 2)
            times[label] = {**steps, "total": round(sum(steps.values()), 2)}
        return times


def _json(path: Path, hint: str = "the run directory is damaged") -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QsennError(f"cannot read {path} ({exc}); {hint}") from None


# ---- feature names from the global explanation ---------------------------------------------


def feature_names(ternary: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """'+Trouser/+Dress −Bag': the classes a feature raises (T = +1) and lowers (T = −1);
    'unused' where no class reads it."""
    names = []
    for column in np.asarray(ternary).T:
        raised = "/".join(f"+{class_names[k]}" for k in np.flatnonzero(column > 0))
        lowered = "/".join(f"−{class_names[k]}" for k in np.flatnonzero(column < 0))
        names.append(" ".join(part for part in (raised, lowered) if part) or "unused")
    return names


# ---- the two sides over the test set -------------------------------------------------------


def test_split(files: RunFiles):
    """The run's test images (its subset for a smoke run), without a transform."""
    _, test, _ = load_splits(files.info.name, files.info.root, crop_gt=files.info.crop_gt)
    return spread_subset(test, files.recipe.limit_test)


def runtime_input(dataset, index: int):
    """An image as a deployment would pass it: the raw array, or the file path."""
    return dataset.images[index] if isinstance(dataset, ArrayImageDataset) else dataset.samples[index][0]


@torch.no_grad()
def torch_pass(model: QResNet, magnitude: float, test, info: DatasetInfo, img_size: int) -> dict[str, np.ndarray]:
    """Logits and features c = a·(f − μ)/max(σ, 1e-6) of the trained model, training test transform."""
    model.eval()
    loader = make_loader(
        test.with_transform(build_transform(info, img_size, train=False)), BATCH, shuffle=False, workers=0
    )
    logits, features, labels = [], [], []
    for images, y in loader:
        out = model(images)
        logits.append(out.logits)
        features.append(magnitude * model.linear.standardise(out.pooled))
        labels.append(y)
    return {
        "logits": torch.cat(logits).numpy(),
        "features": torch.cat(features).numpy(),
        "labels": torch.cat(labels).numpy(),
    }


def runtime_pass(model: qsenn_runtime.Model, test) -> dict[str, np.ndarray]:
    """Logits and features c of the exported model, qsenn_runtime decoding every image itself."""
    logits, features = [], []
    for start in range(0, len(test), BATCH):
        batch = [runtime_input(test, i) for i in range(start, min(start + BATCH, len(test)))]
        for prediction in model.predict(batch):
            if not prediction.ok:
                raise QsennError(f"the runtime could not read test image {prediction.source}: {prediction.error}")
            logits.append(prediction.logits)
            features.append(prediction.features)
    return {"logits": np.asarray(logits, dtype=np.float32), "features": np.asarray(features, dtype=np.float32)}


def agreement(reference: dict, exported: dict, metadata) -> dict:
    """Argmax agreement (exact), the disagreements with PyTorch's top-2 margin, the largest logit
    difference and the largest identity residual |logit − (Σ_j T[k, j]·c_j + b_k)| over all
    images and classes (float64, so the residual measures the artifact)."""
    ref, got = reference["logits"], exported["logits"]
    ref_class, got_class = ref.argmax(1), got.argmax(1)
    differ = np.flatnonzero(ref_class != got_class)
    top2 = np.sort(ref, axis=1)[:, -2:]
    recomputed = exported["features"].astype(np.float64) @ metadata.ternary.T.astype(np.float64) + metadata.bias
    return {
        "images": len(ref),
        "argmax_agreement": float(np.mean(ref_class == got_class)),
        "disagreements": [
            {
                "image": int(i),
                "pytorch": int(ref_class[i]),
                "onnx": int(got_class[i]),
                "pytorch_top2_margin": float(top2[i, 1] - top2[i, 0]),
            }
            for i in differ[:20]
        ],
        "max_abs_logit_difference": float(np.abs(got.astype(np.float64) - ref).max()),
        "max_abs_feature_difference": float(
            np.abs(exported["features"].astype(np.float64) - reference["features"]).max()
        ),
        "max_identity_residual": float(np.abs(got - recomputed).max()),
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
    importance: float  # mean |T[ŷ, j]·c_j| over the test images (ŷ: predicted class)
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


def summarize_features(metadata, features: np.ndarray, predicted: np.ndarray, top_k: int) -> list[FeatureSummary]:
    """Every used feature, most important first."""
    ternary = metadata.ternary.astype(np.float64)
    importance = np.abs(ternary[predicted] * features).mean(axis=0)
    summaries = []
    for j in np.argsort(-importance, kind="stable"):
        column = metadata.ternary[:, j]
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

    from qsenn_runtime.explain_plot import heat_map  # needs matplotlib (qsenn[plot]); says so if missing

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


def _timed(times: dict, label: str, work: Callable):
    start = time.perf_counter()
    result = work()
    times[label] = round(time.perf_counter() - start, 2)
    return result


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
    files = RunFiles.read(run_dir)
    checkpoint = files.path / FINAL_LINK
    times: dict[str, float] = {}

    model, _ = load_checkpoint(checkpoint)
    head = ternary_head(model, str(checkpoint))
    names = feature_names(head.ternary.numpy(), files.info.class_names)
    names_file = files.path / FEATURE_NAMES_FILE
    write_json_atomic(names_file, names)
    onnx_path = _timed(
        times,
        "export",
        lambda: export(files.path, make_options("onnx", out=files.path / "model.onnx", feature_names=names_file), echo),
    )

    test = test_split(files)
    reference = _timed(
        times,
        f"pytorch ({len(test)} test images)",
        lambda: torch_pass(model, head.magnitude, test, files.info, files.recipe.img_size),
    )
    runtime = qsenn_runtime.load(onnx_path, "cpu", batch_size=BATCH)
    exported = _timed(times, f"runtime ({len(test)} test images)", lambda: runtime_pass(runtime, test))
    checked = agreement(reference, exported, runtime.metadata)
    echo(
        f"runtime vs PyTorch on {checked['images']} test images: argmax agreement "
        f"{100 * checked['argmax_agreement']:.2f}%, max|Δlogit| {checked['max_abs_logit_difference']:.1e}, "
        f"largest identity residual {checked['max_identity_residual']:.1e}"
    )

    summaries = summarize_features(runtime.metadata, exported["features"], exported["logits"].argmax(1), top_images)
    sheet = sheet or files.path / SHEET_FILE
    _timed(
        times,
        "contact sheet",
        lambda: save_contact_sheet(
            runtime,
            test,
            reference["labels"],
            exported["features"],
            summaries[:sheet_features],
            sheet,
            f"Q-SENN on {files.info.name}: the {min(sheet_features, len(summaries))} most used features "
            f"and the test images that activate them most",
        ),
    )
    echo(f"wrote {sheet} and {names_file}")

    result = _result(files, model, checked, summaries, times, onnx_path, sheet)
    out = Path(results_dir or files.path) / (
        result_name(
            f"{files.info.name}-validation",
            f"{files.recipe.arch}-{files.recipe.img_size}" + files.recipe.subset_tag,
            result["environment"],
        )
        + ".json"
    )
    write_json_atomic(out, result)
    echo(markdown_table(result))
    echo(f"wrote {out}")
    return result


def head_weights(model: QResNet) -> dict:
    """The sparse head's non-zero weights: how many, and whether they all are ±a."""
    weight = model.head_weight.detach().double()
    magnitudes = weight.abs()[weight != 0]
    low, high = float(magnitudes.min()), float(magnitudes.max())
    return {
        "nonzeros": int(magnitudes.numel()),
        "magnitude_min": low,
        "magnitude_max": high,
        "plus_minus_a": high - low <= MAGNITUDE_RTOL * high,
    }


def _result(
    files: RunFiles,
    qsenn_model: QResNet,
    checked: dict,
    summaries: list[FeatureSummary],
    times: dict,
    onnx_path: Path,
    sheet: Path,
) -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    models = {label: {k: metrics[k] for k in METRIC_KEYS if k in metrics} for label, metrics in files.metrics.items()}
    heads = {"qsenn": head_weights(qsenn_model)}
    sldd_checkpoint = files.path / files.metrics.get("sldd", {}).get("model", "") / "model.pt"
    if "sldd" in models and sldd_checkpoint.is_file():
        heads["sldd"] = head_weights(load_checkpoint(sldd_checkpoint)[0])
    dense = models["dense"]["Accuracy"]
    goals = {
        label: {
            "within_1.5_points_of_dense": 100 * (dense - models[label]["Accuracy"]) <= ACCURACY_GAP_POINTS,
            f"at_most_{files.recipe.n_per_class}_weights_per_class": models[label]["PerClass"]
            <= files.recipe.n_per_class,
            **({"weights_plus_minus_a": heads[label]["plus_minus_a"]} if label in heads else {}),
        }
        for label in ("qsenn", "sldd")
        if label in models
    }
    goals["exported_argmax_agreement_100%"] = checked["argmax_agreement"] == 1.0
    stage_times = files.stage_times()
    return {
        "dataset": files.info.name,
        "run": str(files.path),
        "recipe": files.recipe.name,
        "data_variant": files.recipe.data_variant(),
        "arch": files.recipe.arch,
        "img_size": files.recipe.img_size,
        "seed": files.seed,
        "environment": environment(gpu),
        "models": models,
        "heads": heads,
        "goals": goals,
        "exported_vs_pytorch": checked,
        "onnx": {"path": str(onnx_path), "bytes": onnx_path.stat().st_size},
        "wall_seconds": {
            "training": stage_times,
            "validation": times,
            "total": round(_total(stage_times) + sum(times.values()), 1),
        },
        "features": [s.to_dict() for s in summaries],
        "contact_sheet": str(sheet),
    }


def _total(times: dict) -> float:
    return sum(v["total"] if isinstance(v, dict) else v for v in times.values())


def markdown_table(result: dict) -> str:
    """The README's table: one row per model, then the exported model's check."""
    training = result["wall_seconds"]["training"]
    head = "| model | top-1 | NFfeatures | PerClass | diversity@5 | Dependence | training wall time |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for label, m in result["models"].items():
        seconds = training.get("dense training", 0.0) if label == "dense" else training.get(label, {}).get("total", 0.0)
        lines.append(
            f"| {MODEL_LABELS[label]} | {100 * m['Accuracy']:.2f}% | {m['NFfeatures']} | {m['PerClass']:.2f} "
            f"| {m['diversity']:.3f} | {m['Dependence']:.3f} | {seconds / 60:.1f} min |"
        )
    checked = result["exported_vs_pytorch"]
    lines.append("")
    lines.append(
        f"Exported ONNX vs PyTorch fp32 on {checked['images']} test images: argmax agreement "
        f"{100 * checked['argmax_agreement']:.2f}%, largest contribution-identity residual "
        f"{checked['max_identity_residual']:.1e}; everything took {result['wall_seconds']['total'] / 60:.1f} min "
        f"on {result['environment']['device']} ({result['environment']['cpus']} CPUs)."
    )
    return "\n".join(lines)
