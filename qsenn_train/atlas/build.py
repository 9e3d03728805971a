"""`qsenn atlas RUN`: what each feature of a run's final model means, written to
RUN/atlas/<type>/ (docs/atlas.md).

For every selected feature: its most-activating images of a split (by pooled value) as
heat-mapped crops around the peak of its map; the classes it raises and lowers with their
weights; its importance (its share of |contribution| to the predicted classes' logits over the
test set); its pooled activation per class (mean and quartiles); where the dataset has
attribute annotations, its 3 best attributes by A_{j,a} of spec §10.3; optionally its best
phrases by a CLIP model (concepts.py); and a suggested name. The names file a person edits is
kept across reruns (feature_names.py).

Resumable: the two passes over the images are cached (keyed by the checkpoint's sha256), and
thumbnails already written are not drawn again. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import spread_subset
from ..data.base import DatasetInfo, ImageListDataset
from ..data.layouts import load_splits
from ..data.transforms import unnormalised_test_transform
from ..errors import QsennError
from ..metrics import attribute_alignment, read_attribute_labels, used_features
from ..model import QResNet
from ..progress import progress
from ..run import Run
from ..rundir import atomic_write, remove_stale_temporaries, sha256_file, write_json_atomic
from .concepts import score_concepts
from .encoders import ImageTextEncoder, load_clip
from .feature_names import FeatureText, class_based_names, merge_edits, read_feature_names, write_feature_names
from .thumbnails import prototype_thumbnail
from .vocabulary import BIRD_DATASETS, SYNTH_DATASET, attribute_vocabulary, read_concepts

ATLAS_DIR = "atlas"
ATLAS_FILE = "atlas.json"
NAMES_FILE = "feature_names.json"
THUMBNAIL_DIR = "thumbnails"
CACHE_DIR = "cache"
ATLAS_FORMAT, ATLAS_VERSION = "qsenn-atlas", 1
SPLITS = ("train", "test")
DEFAULT_TOP = 16
TOP_ATTRIBUTES = 3
# A feature is named after its best attribute when A_{j,a} ≥ 1: the attribute's presence moves
# the feature's mean by at least the feature's own mean level above its floor. Below that the
# attribute explains less of the feature than its typical firing, and the class-based name is
# the more honest one.
NAME_THRESHOLD = 1.0
# A CLIP phrase names a feature when it is at least twice as likely among the feature's top
# images as among all images (score = a pointwise mutual information, concepts.py).
CONCEPT_THRESHOLD = math.log(2)
BATCH = 64


def atlas_folder(run_path: Path, model_type: str) -> Path:
    return Path(run_path) / ATLAS_DIR / model_type


@dataclass(frozen=True)
class Pass:
    """One pass of the model over a split, in dataset order."""

    pooled: np.ndarray  # N×F raw pooled features f
    contributions: np.ndarray  # N×F W[ŷ, j]·(f − μ)/σ for the predicted class ŷ
    labels: np.ndarray  # N true classes


def build_atlas(
    run_path: Path,
    *,
    model_type: str | None = None,
    top: int = DEFAULT_TOP,
    split: str = "train",
    clip: Path | None = None,
    concepts: Path | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Write RUN/atlas/<type>/ and return its atlas.json."""
    started = time.perf_counter()
    if split not in SPLITS:
        raise QsennError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if top < 1:
        raise QsennError(f"--top must be at least 1, got {top}")
    if concepts is not None and clip is None:
        raise QsennError("--concepts names features with a CLIP model; add --clip PATH (a CLIP model folder)")
    run = Run(run_path, echo=echo)
    model, record, entry = run.load_model(model_type)
    model.eval()
    info, img_size = run.info, int(record["img_size"])
    weights = model.head_weight.detach().double().numpy()
    n_features = weights.shape[1]
    folder = atlas_folder(run.path, entry.model_type)
    fingerprint = sha256_file(run.files.file(entry.checkpoint))
    # Everything that can be refused is checked before the first pass writes anything.
    phrases = _phrases(info, concepts) if clip is not None else None
    encoder = load_clip(clip) if clip is not None else None
    _forget_other_model(folder, fingerprint, echo)
    names_file = folder / NAMES_FILE
    if names_file.exists():
        read_feature_names(names_file, n_features)
    if folder.exists():
        remove_stale_temporaries(folder)

    recipe = entry.load_recipe()
    train_raw, test_raw, _ = load_splits(info.name, info.root, crop_gt=info.crop_gt)
    splits = {"train": spread_subset(train_raw, recipe.limit_train), "test": spread_subset(test_raw, recipe.limit_test)}
    images = splits[split]
    seen = _cached_pass(folder, fingerprint, split, model, images, info, img_size)
    tested = (
        seen if split == "test" else _cached_pass(folder, fingerprint, "test", model, splits["test"], info, img_size)
    )

    top_images = [np.argsort(-seen.pooled[:, j], kind="stable")[:top] for j in range(n_features)]
    thumbnails = _draw_thumbnails(folder, model, images, info, img_size, top_images)
    attributes = _attributes(info, images, seen.pooled)
    language = _language(encoder, phrases, images, seen.pooled) if encoder is not None and phrases else None

    share = np.abs(tested.contributions.astype(np.float64)).sum(axis=0)
    importance = share / max(share.sum(), np.finfo(float).tiny)
    class_names = class_based_names(weights, info.class_names)
    wording = _attribute_wording(info)
    features, suggested = [], []
    for j in range(n_features):
        column = weights[:, j]
        best_attributes = attributes[j] if attributes is not None else []
        best_phrases = language[j] if language is not None else []
        text, source = _suggestion(class_names[j], column, info.class_names, best_attributes, best_phrases, wording)
        suggested.append(text)
        features.append(
            {
                "index": j,
                "channel": int(model.sparse_head.selection[j]),
                "used": bool(column.any()),
                "raises": [{"class": info.class_names[k], "weight": column[k]} for k in np.flatnonzero(column > 0)],
                "lowers": [{"class": info.class_names[k], "weight": column[k]} for k in np.flatnonzero(column < 0)],
                "importance": float(importance[j]),
                "per_class": _per_class(seen.pooled[:, j], seen.labels, info.class_names),
                "attributes": [{"attribute": a, "score": s} for a, s in best_attributes],
                "concepts": [{"phrase": p, "score": s} for p, s in best_phrases],
                "suggested_name": text.name,
                "name_source": source,
                "top_images": [
                    {
                        "image": int(i),
                        "file": _image_file(images, int(i)),
                        "label": info.class_names[int(seen.labels[i])],
                        "activation": float(seen.pooled[i, j]),
                        "thumbnail": thumbnails[j][rank],
                    }
                    for rank, i in enumerate(top_images[j])
                ],
            }
        )

    texts, kept = merge_edits(names_file, suggested)
    write_feature_names(names_file, texts, suggested)
    if kept:
        listed = ", ".join(f"{j} {texts[j].name!r}" for j in kept)
        echo(f"kept {len(kept)} edited name{'s' if len(kept) != 1 else ''} of {names_file}: {listed}")
    atlas = {
        "format": ATLAS_FORMAT,
        "version": ATLAS_VERSION,
        "run": str(run.path),
        "model_type": entry.model_type,
        "checkpoint": entry.checkpoint,
        "checkpoint_sha256": fingerprint,
        "dataset": info.name,
        "classes": list(info.class_names),
        "split": split,
        "images": len(images),
        "top": top,
        "name_threshold": NAME_THRESHOLD,
        "attributes_file": info.attributes_file if attributes is not None else None,
        "clip": None if clip is None else {"model": str(clip), "phrases": len(phrases or ())},
        "concept_threshold": CONCEPT_THRESHOLD if clip is not None else None,
        "used_features": len(used_features(torch.from_numpy(weights))),
        "features": features,
    }
    path = folder / ATLAS_FILE
    write_json_atomic(path, _plain(atlas))
    _remove_unlisted_thumbnails(folder, thumbnails)
    named = sum(f["name_source"] != "classes" for f in features if f["used"])
    echo(
        f"wrote {folder}: {n_features} features ({atlas['used_features']} used, {named} named after an attribute or "
        f"phrase), {top} images each from {len(images)} {split} images, in {time.perf_counter() - started:.1f} s; "
        f"edit {names_file} to rename features"
    )
    return path


def read_atlas(folder: Path) -> dict:
    """A written atlas.json (a one-line error when absent or not an atlas)."""
    path = Path(folder) / ATLAS_FILE
    if not path.is_file():
        raise QsennError(f"{folder} holds no {ATLAS_FILE}; write one with `qsenn atlas RUN`")
    try:
        atlas = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QsennError(f"cannot read {path} ({exc}); write it again with `qsenn atlas RUN`") from None
    if not isinstance(atlas, dict) or atlas.get("format") != ATLAS_FORMAT or atlas.get("version") != ATLAS_VERSION:
        raise QsennError(
            f"{path} is not a qsenn atlas (version {ATLAS_VERSION}); write it again with `qsenn atlas RUN`"
        )
    return atlas


# ---- the passes over the images -------------------------------------------------------------


def _cached_pass(
    folder: Path, fingerprint: str, split: str, model: QResNet, images, info: DatasetInfo, img_size: int
) -> Pass:
    cache = folder / CACHE_DIR / f"{split}-{len(images)}-{fingerprint[:16]}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as stored:
                return Pass(stored["pooled"], stored["contributions"], stored["labels"])
        except (OSError, ValueError, KeyError):
            cache.unlink()  # a damaged cache is recomputed
    result = _model_pass(model, images, info, img_size, f"atlas: {split} images")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, pooled=result.pooled, contributions=result.contributions, labels=result.labels)

    atomic_write(cache, write)
    return result


@torch.no_grad()
def _model_pass(model: QResNet, images, info: DatasetInfo, img_size: int, desc: str) -> Pass:
    weight = model.head_weight.detach().float()
    pooled, contributions, labels = [], [], []
    for pixels, y in _batches(images, info, img_size, desc):
        out = model(_normalised(pixels, info))
        predicted = out.logits.argmax(dim=1)
        contributions.append((weight[predicted] * model.sparse_head.standardise(out.pooled)).numpy())
        pooled.append(out.pooled.float().numpy())
        labels.append(y.numpy())
    return Pass(np.concatenate(pooled), np.concatenate(contributions), np.concatenate(labels))


def _batches(images, info: DatasetInfo, img_size: int, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(images.with_transform(unnormalised_test_transform(info, img_size)), batch_size=BATCH)
    return progress(loader, desc=desc, unit="batch")


def _normalised(pixels: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    if info.mean is None or info.std is None:
        return pixels
    return (pixels - torch.tensor(info.mean)[:, None, None]) / torch.tensor(info.std)[:, None, None]


# ---- thumbnails -----------------------------------------------------------------------------


def _thumbnail_name(feature: int, rank: int, image: int) -> str:
    return f"{THUMBNAIL_DIR}/f{feature:03d}-{rank:02d}-i{image:06d}.jpg"


@torch.no_grad()
def _draw_thumbnails(
    folder: Path, model: QResNet, images, info: DatasetInfo, img_size: int, top_images: list[np.ndarray]
) -> list[list[str]]:
    """Per feature the run-relative names of its thumbnails, best first; only missing ones are drawn."""
    names = [[_thumbnail_name(j, rank, int(i)) for rank, i in enumerate(rows)] for j, rows in enumerate(top_images)]
    wanted: dict[int, list[tuple[int, str]]] = {}
    for j, rows in enumerate(top_images):
        for rank, i in enumerate(rows):
            if not (folder / names[j][rank]).is_file():
                wanted.setdefault(int(i), []).append((j, names[j][rank]))
    if not wanted:
        return names
    order = sorted(wanted)
    subset = images.subset(order)
    (folder / THUMBNAIL_DIR).mkdir(parents=True, exist_ok=True)
    position = 0
    for pixels, _ in _batches(subset, info, img_size, "atlas: thumbnails"):
        maps = model(_normalised(pixels, info)).feature_maps.float().numpy()
        rgb = (pixels.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        for b in range(len(pixels)):
            for j, name in wanted[order[position + b]]:
                atomic_write(folder / name, partial(_write_bytes, data=prototype_thumbnail(rgb[b], maps[b, j])))
        position += len(pixels)
    return names


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _remove_unlisted_thumbnails(folder: Path, listed: list[list[str]]) -> None:
    """Thumbnails of an earlier, larger --top are no longer part of the atlas."""
    keep = {name for names in listed for name in names}
    for path in (folder / THUMBNAIL_DIR).glob("*.jpg"):
        if f"{THUMBNAIL_DIR}/{path.name}" not in keep:
            path.unlink()


def _forget_other_model(folder: Path, fingerprint: str, echo: Callable[[str], None]) -> None:
    """An atlas of an earlier model in this folder (the run was retrained) is moved aside whole:
    its thumbnails and caches are of other features, and so are its names."""
    atlas_file = folder / ATLAS_FILE
    if not atlas_file.is_file():
        return
    try:
        previous = read_atlas(folder).get("checkpoint_sha256")
    except QsennError:
        previous = None
    if previous == fingerprint:
        return
    aside = folder.with_name(f"{folder.name}.previous")
    shutil.rmtree(aside, ignore_errors=True)
    folder.rename(aside)
    echo(f"the atlas in {folder} described another model; moved it (and its names) to {aside}")


# ---- attributes, phrases, names -------------------------------------------------------------


def _attributes(info: DatasetInfo, images, pooled: np.ndarray) -> list[list[tuple[str, float]]] | None:
    """Per feature its TOP_ATTRIBUTES best attributes by A_{j,a}; None without annotations."""
    if info.attributes_file is None or not isinstance(images, ImageListDataset) or images.image_ids is None:
        return None
    positions, attributes, present = read_attribute_labels(info.attributes_file, images.image_ids)
    n_attributes = len(info.attribute_names) or int(attributes.max()) + 1
    scores = attribute_alignment(torch.from_numpy(pooled), positions, attributes, present, n_attributes).numpy()
    names = info.attribute_names or tuple(f"attribute {a + 1}" for a in range(n_attributes))
    best = []
    for j in range(pooled.shape[1]):
        column = np.nan_to_num(scores[:, j], nan=-np.inf)
        order = [a for a in np.argsort(-column, kind="stable")[:TOP_ATTRIBUTES] if np.isfinite(column[a])]
        best.append([(names[a], float(column[a])) for a in order])
    return best


def _phrases(info: DatasetInfo, concepts: Path | None) -> list[str]:
    if concepts is not None:
        return read_concepts(concepts)
    return list(attribute_vocabulary(info.name, info.attribute_names).values())


def _attribute_wording(info: DatasetInfo) -> dict[str, str]:
    """{attribute name: phrase} where the dataset has a default vocabulary, else {}."""
    if info.name not in (*BIRD_DATASETS, SYNTH_DATASET) or not info.attribute_names:
        return {}
    return attribute_vocabulary(info.name, info.attribute_names)


def _language(
    encoder: ImageTextEncoder, phrases: list[str], images, pooled: np.ndarray
) -> list[list[tuple[str, float]]]:
    pictures = (images.load_image(i) for i in range(len(images)))
    return score_concepts(pooled, pictures, encoder, phrases).best(TOP_ATTRIBUTES)


def _suggestion(
    class_name: str,
    column: np.ndarray,
    classes: tuple[str, ...],
    attributes: list[tuple[str, float]],
    phrases: list[tuple[str, float]],
    wording: dict[str, str],
) -> tuple[FeatureText, str]:
    """(name and description, where the name came from: "attribute", "concept" or "classes").
    An attribute names the feature in words where the dataset has a vocabulary ("a red shape"
    for has_primary_color::red), else by its own name."""
    raised = ", ".join(classes[k] for k in np.flatnonzero(column > 0)) or "no class"
    lowered = ", ".join(classes[k] for k in np.flatnonzero(column < 0)) or "no class"
    about = [f"raises {raised}; lowers {lowered}"]
    if attributes:
        about.append("best attributes " + ", ".join(f"{a} (A = {s:.2f})" for a, s in attributes))
    if phrases:
        about.append("best phrases " + ", ".join(f"“{p}” ({s:.2f})" for p, s in phrases))
    description = "; ".join(about)
    if not column.any():
        return FeatureText(class_name, description), "classes"
    if attributes and attributes[0][1] >= NAME_THRESHOLD:
        return FeatureText(wording.get(attributes[0][0], attributes[0][0]), description), "attribute"
    if phrases and phrases[0][1] >= CONCEPT_THRESHOLD:
        return FeatureText(phrases[0][0], description), "concept"
    return FeatureText(class_name, description), "classes"


def _per_class(values: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> list[dict]:
    rows = []
    for k, name in enumerate(classes):
        own = values[labels == k]
        if len(own) == 0:
            continue
        q25, median, q75 = np.quantile(own, (0.25, 0.5, 0.75))
        rows.append({"class": name, "images": len(own), "mean": own.mean(), "q25": q25, "median": median, "q75": q75})
    return rows


def _image_file(images, index: int) -> str | None:
    return images.samples[index][0] if isinstance(images, ImageListDataset) else None


def _plain(value):
    """numpy scalars as Python numbers, for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
