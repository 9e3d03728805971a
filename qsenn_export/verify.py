"""Checks an exported model against its source on test images, with explicit tolerances.

Compared: logits, features c and feature maps (max |Δ| and max |Δ| / max(1, max|reference|)),
the predicted class, the top contributing features, and the contract's identity
logit_k = Σ_j W[k, j]·c_j + b_k computed from the metadata read back from the artifact, so a
graph or metadata that disagrees with the model fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

import qsenn_runtime
from qsenn_runtime.metadata import OUTPUT_NAMES, ModelMetadata
from qsenn_train.data import spread_subset
from qsenn_train.data.base import DatasetInfo, open_rgb
from qsenn_train.data.layouts import image_files, load_splits
from qsenn_train.data.transforms import unnormalised_test_transform
from qsenn_train.errors import QsennError
from qsenn_train.model import QResNet

from .errors import ExportError
from .fold import input_normalisation
from .formats import TOP_FEATURES, Tolerance
from .int8 import quantised_head_nodes

Outputs = dict[str, np.ndarray]  # OUTPUT_NAMES → N×… arrays
CHUNK = 16  # images per forward pass while verifying
RANDOM_IMAGES_SEED = 0


# ---- images -------------------------------------------------------------------------------


def folder_images(
    folder: Path, info: DatasetInfo, img_size: int, limit: int | None = None, spread: bool = False
) -> torch.Tensor:
    """Image files below `folder` (sorted; the first `limit`, or with `spread` `limit` of them
    evenly spaced over the folder like spread_subset, so that calibration sees every class of a
    class-ordered folder), preprocessed like the test set."""
    if not Path(folder).is_dir():
        raise ExportError(f"image folder {folder} does not exist")
    files = image_files(Path(folder))
    if spread and limit is not None and limit < len(files):
        files = [files[i * len(files) // limit] for i in range(limit)]
    files = files[:limit]
    if not files:
        raise ExportError(f"no image files in {folder}; put .jpg/.png images there")
    transform = unnormalised_test_transform(info, img_size)
    return torch.stack([transform(open_rgb(f)) for f in files])


def verification_images(
    info: DatasetInfo, img_size: int, count: int, folder: Path | None = None, echo: Callable[[str], None] = print
) -> tuple[torch.Tensor, str]:
    """(N×3×H×W images in [0, 1], what they are): `folder`'s images, else the first `count`
    test images of the checkpoint's dataset, else (dataset not on this machine) random ones."""
    if folder is not None:
        images = folder_images(folder, info, img_size, count)
        return images, f"{len(images)} images of {folder}"
    try:
        _, test_set, _ = load_splits(info.name, info.root, crop_gt=info.crop_gt)
    except QsennError as exc:
        echo(
            f"the {info.name} test images are not available ({str(exc).split(';')[0]}); verifying on "
            f"random images instead, pass --verify-images DIR for real ones"
        )
        generator = torch.Generator().manual_seed(RANDOM_IMAGES_SEED)
        return torch.rand(count, 3, img_size, img_size, generator=generator), f"{count} random images"
    test_set = test_set.with_transform(unnormalised_test_transform(info, img_size))
    n = min(count, len(test_set))
    return torch.stack([test_set[i][0] for i in range(n)]), f"{n} test images of {info.name}"


def training_images(info: DatasetInfo, img_size: int, count: int) -> torch.Tensor:
    """`count` training images of the checkpoint's dataset, evenly spaced over the split
    (unnormalised test transform): calibration data when no folder is given."""
    train_set, _, _ = load_splits(info.name, info.root, crop_gt=info.crop_gt)
    train_set = spread_subset(train_set, count).with_transform(unnormalised_test_transform(info, img_size))
    return torch.stack([train_set[i][0] for i in range(len(train_set))])


# ---- running the two sides ------------------------------------------------------------------


class SourceForward(torch.nn.Module):
    """The trained model as training evaluates it: Normalize, forward, c = a·(f − μ)/σ (a = 1 for a
    sparse head);
    images in [0, 1] → (logits, features c, selected feature maps)."""

    input_mean: torch.Tensor  # buffers
    input_std: torch.Tensor

    def __init__(self, model: QResNet, scale: float, info: DatasetInfo):
        super().__init__()
        self.model = model.eval()
        self.scale = scale
        mean, std = input_normalisation(info.mean, info.std)
        self.register_buffer("input_mean", mean)
        self.register_buffer("input_std", std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model((images - self.input_mean) / self.input_std)
        return out.logits, self.scale * self.model.sparse_head.standardise(out.pooled), out.feature_maps


def torch_outputs(model: QResNet, scale: float, info: DatasetInfo, images: torch.Tensor) -> Outputs:
    forward = SourceForward(model.cpu(), scale, info)
    with torch.no_grad():
        chunks = [forward(batch) for batch in images.split(CHUNK)]
    return {name: torch.cat(parts).numpy() for name, parts in zip(OUTPUT_NAMES, zip(*chunks))}


def run_in_batches(
    run: Callable[[np.ndarray], Outputs], images: np.ndarray, batch_size: int, pad: bool = False
) -> Outputs:
    """Feed `run` `batch_size` images at a time; with `pad` (a static batch) the last batch is
    filled up with zeros whose outputs are dropped."""
    parts = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        n = len(batch)
        if pad and n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        parts.append({k: v[:n] for k, v in run(batch).items()})
    return {name: np.concatenate([p[name] for p in parts]) for name in OUTPUT_NAMES}


def load_artifact(path: Path, provider: str | None = "cpu") -> qsenn_runtime.Model:
    """The written artifact as a deployment opens it: qsenn_runtime's loader, with every check it
    runs (metadata, the head matrix in the graph, input and output shapes)."""
    try:
        return qsenn_runtime.load(path, provider)
    except qsenn_runtime.QsennRuntimeError as exc:
        raise ExportError(f"the exported model does not load in qsenn_runtime: {exc}") from None


def runtime_outputs(model: qsenn_runtime.Model, images: np.ndarray) -> Outputs:
    """Logits, features and feature maps of the artifact's backend, in batches it accepts."""
    smallest, largest = model.backend.batch_range
    static = smallest == largest

    def run(batch: np.ndarray) -> Outputs:
        return dict(zip(OUTPUT_NAMES, model.backend.run(np.ascontiguousarray(batch, np.float32), OUTPUT_NAMES)))

    return run_in_batches(run, images, largest if static else min(CHUNK, largest or CHUNK), pad=static)


# ---- comparison --------------------------------------------------------------------------------


def _relative(delta: float, reference: np.ndarray) -> float:
    return delta / max(1.0, float(np.abs(reference).max()))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max())


def identity_residual(logits: np.ndarray, features: np.ndarray, metadata: ModelMetadata) -> float:
    """max |logit − (W·c + b)| over every image and class, in float64 so that the residual
    measures the artifact, not this sum."""
    recomputed = features.astype(np.float64) @ metadata.weights.T.astype(np.float64) + metadata.bias
    return max_abs_diff(logits, recomputed)


@dataclass(frozen=True)
class Report:
    images: str  # what was compared, e.g. "64 test images of synth"
    tolerance: Tolerance
    logit: float  # max |Δ logit|
    logit_rel: float
    feature: float
    feature_rel: float
    feature_map: float
    feature_map_rel: float
    argmax_agreement: float  # fraction
    top_feature_agreement: float  # fraction, see top_feature_agreement()
    identity: float  # max |logit − (T·c + b)| of the candidate
    identity_rel: float

    @property
    def failures(self) -> list[str]:
        tol = self.tolerance
        checks = [
            ("rel Δlogit", self.logit_rel, tol.rel),
            ("rel Δfeature", self.feature_rel, tol.rel),
            ("rel Δfeature map", self.feature_map_rel, tol.rel),
            ("rel identity residual", self.identity_rel, tol.identity_rel),
        ]
        failed = [f"{name} {value:.1e} > {bound:.0e}" for name, value, bound in checks if not value <= bound]
        if self.argmax_agreement < tol.argmax:
            failed.append(f"argmax agreement {100 * self.argmax_agreement:.2f}% < {100 * tol.argmax:.0f}%")
        if self.top_feature_agreement < tol.top_features:
            failed.append(
                f"top-{TOP_FEATURES} feature agreement {100 * self.top_feature_agreement:.2f}% < "
                f"{100 * tol.top_features:.0f}%"
            )
        return failed

    @property
    def ok(self) -> bool:
        return not self.failures

    def line(self) -> str:
        verdict = "OK" if self.ok else "FAILED (" + "; ".join(self.failures) + ")"
        return (
            f"verified on {self.images}: max|Δlogit| {self.logit:.1e} (rel {self.logit_rel:.1e}), "
            f"max|Δfeature| {self.feature:.1e}, max|Δmap| {self.feature_map:.1e}, "
            f"argmax agreement {100 * self.argmax_agreement:.2f}%, "
            f"top-{TOP_FEATURES} features {100 * self.top_feature_agreement:.2f}%, "
            f"identity residual {self.identity:.1e} — {verdict}"
        )


def argmax_agreement(reference: np.ndarray, candidate: np.ndarray, tie: float) -> float:
    """Share of rows whose candidate class is the reference's best class, or tied with it
    within `tie` (absolute), so that float noise between equal logits is no disagreement."""
    picked = reference[np.arange(len(reference)), candidate.argmax(axis=1)]
    return float(np.mean(reference.max(axis=1) - picked <= tie))


def top_features(
    features: np.ndarray, weights: np.ndarray, classes: np.ndarray, k: int = TOP_FEATURES
) -> list[frozenset[int]]:
    """Per image, the (at most) k features with the largest |W[class, j]·c_j| among the class's
    features (W ≠ 0); equal magnitudes are ordered by feature index."""
    contributions = np.abs(weights[classes].astype(np.float64) * features)
    used = weights[classes] != 0
    result = []
    for row, mask in zip(contributions, used):
        candidates = np.flatnonzero(mask)
        order = candidates[np.lexsort((candidates, -row[candidates]))]
        result.append(frozenset(order[:k].tolist()))
    return result


def top_feature_agreement(reference: Outputs, candidate: Outputs, weights: np.ndarray, k: int = TOP_FEATURES) -> float:
    """Share of images whose k largest |contributions| to the reference's predicted class come
    from the same features in both models. A class with at most k features agrees trivially."""
    classes = reference["logits"].argmax(axis=1)
    pairs = zip(
        top_features(reference["features"], weights, classes, k),
        top_features(candidate["features"], weights, classes, k),
    )
    return float(np.mean([a == b for a, b in pairs]))


def compare(
    reference: Outputs, candidate: Outputs, metadata: ModelMetadata, tolerance: Tolerance, images: str
) -> Report:
    ref_logits, logits, features = reference["logits"], candidate["logits"], candidate["features"]
    logit = max_abs_diff(logits, ref_logits)
    feature = max_abs_diff(features, reference["features"])
    feature_map = max_abs_diff(candidate["feature_maps"], reference["feature_maps"])
    identity = identity_residual(logits, features, metadata)
    tie = tolerance.tie_rel * max(1.0, float(np.abs(ref_logits).max()))
    return Report(
        images=images,
        tolerance=tolerance,
        logit=logit,
        logit_rel=_relative(logit, ref_logits),
        feature=feature,
        feature_rel=_relative(feature, reference["features"]),
        feature_map=feature_map,
        feature_map_rel=_relative(feature_map, reference["feature_maps"]),
        argmax_agreement=argmax_agreement(ref_logits, logits, tie),
        top_feature_agreement=top_feature_agreement(reference, candidate, metadata.weights),
        identity=identity,
        identity_rel=_relative(identity, logits),
    )


def verify_onnx(path: Path, reference: Outputs, images: torch.Tensor, description: str, tolerance: Tolerance) -> Report:
    """Open the written file as qsenn_runtime does (which checks its metadata and head matrix),
    check that only the backbone is quantised, and compare its outputs with `reference`."""
    quantised_head = quantised_head_nodes(onnx.load(str(path)))
    if quantised_head:
        raise ExportError(
            f"the exported graph quantises its head ({', '.join(quantised_head)}); "
            f"only the backbone may be INT8, c and W·c + b must stay float"
        )
    model = load_artifact(path)
    return compare(reference, runtime_outputs(model, images.numpy()), model.metadata, tolerance, description)
