"""Language names without labels: which phrases a feature's most-activating images share,
judged by an image–text model (CLIP), after CLIP-Dissect (Oikarinen & Weng, ICLR 2023).

The score of feature j and phrase m is a pointwise mutual information, the lift of the
phrase among the feature's top images over the phrase among all N images:

    s_im    = cos(image embedding i, text embedding m)
    p(m|i)  = softmax_m(a · s_im)                  what the image shows, as a distribution over the vocabulary
    p(m)    = (1/N) Σ_i p(m|i)                     the phrase over all N training images
    T_j     = the k images with the highest activation of feature j, ranks r = 0…k−1
    w_r     = 1 − (1 − w_last) · r / (k − 1)       soft membership: the top image 1, the k-th w_last
    E_j(m)  = Σ_r w_r p(m|i_r) / Σ_r w_r           the phrase among the feature's top images
    score   = log E_j(m) − λ log p(m)

With λ = 1 a score of 0 means the phrase is no more likely among the feature's top images than
among all images, and log 2 that it is twice as likely. The parameters (k, a, λ, w_last) live
in `ConceptScoring`.

Why this form. It is CLIP-Dissect's soft-WPMI with the expectation over the top images taken
as the rank-weighted mean of p(m|i). CLIP-Dissect combines the top images by a noisy-OR,
1 − Π_r (1 − w_r p(m|i_r)), which saturates at 1 as soon as a few top images show a phrase
clearly, so that every phrase the top images show ties and only the prior separates them; the
mean keeps them apart. The softmax over the vocabulary removes what a raw cosine carries for
every phrase alike (how "CLIP-like" an image is), and dividing by p(m) removes what a phrase
carries for every image alike (generic phrases match everything). A rank correlation over all N
images was rejected: Q-SENN features are sparse and near-binary, so over most images a
feature is ~0 while CLIP's similarities vary for reasons of their own, and a correlation would
rank phrases by that noise; what names a feature is what its top images share. The score
also streams: one pass over the images keeps a running Σ_i p(m|i) and the embeddings of the
top images only (at most k·F of them), never the N×P similarity matrix or the images.

Top images: only images whose activation exceeds the feature's minimum over the N images take
part (an image at the floor says nothing about the feature), ties go to the lower image index;
a feature that is constant over the images (dead) gets no names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QsennError
from ..progress import progress
from .encoders import ImageInput, ImageTextEncoder, load_clip

ACTIVATION_CHUNK_BYTES = 16 * 2**20  # activation rows read at a time when finding top images
_MIN_NORM = 1e-12  # an all-zero embedding stays zero instead of dividing by 0


@dataclass(frozen=True)
class ConceptScoring:
    """The parameters of the concept score (module docstring)."""

    # k: below one CUB class (~30 training images), so a one-class feature is named from its class.
    top_images: int = 20
    # a: softer than CLIP's trained logit scale (100), so that p(m|i) keeps the runner-up phrases of
    # an image (a bird with blue wings often has a blue back too) instead of one zero-shot label.
    softmax_scale: float = 10.0
    # λ: 1 is the pointwise mutual information; below 1 favours phrases that are common overall.
    prior_weight: float = 1.0
    # w_last: the k-th image counts half as much as the top one (it lies nearer the feature's boundary).
    last_image_weight: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.top_images, int) or self.top_images < 1:
            raise QsennError(f"concept scoring top_images must be a positive integer, got {self.top_images!r}")
        if not (math.isfinite(self.softmax_scale) and self.softmax_scale > 0):
            raise QsennError(f"concept scoring softmax_scale must be > 0, got {self.softmax_scale!r}")
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0):
            raise QsennError(f"concept scoring prior_weight must be >= 0, got {self.prior_weight!r}")
        if not 0 < self.last_image_weight <= 1:
            raise QsennError(f"concept scoring last_image_weight must be in (0, 1], got {self.last_image_weight!r}")

    def rank_weights(self, n: int) -> np.ndarray:
        """w_r for the first n ranks (n ≤ k)."""
        if self.top_images == 1:
            return np.ones(n)
        return 1 - (1 - self.last_image_weight) * np.arange(n) / (self.top_images - 1)


@dataclass(frozen=True)
class ConceptScores:
    """The score of every (feature, phrase) pair and the images each feature was named from."""

    scores: np.ndarray  # F×P; a row of NaN for a feature constant over the images
    phrases: tuple[str, ...]
    top_images: tuple[np.ndarray, ...]  # per feature: its top image indices, best first

    def best(self, top: int = 3) -> list[list[tuple[str, float]]]:
        """Per feature its `top` phrases with their scores, best first; [] for a dead feature.
        Ties go to the phrase listed first."""
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        named: list[list[tuple[str, float]]] = []
        for row in self.scores:
            if np.isnan(row).all():
                named.append([])
                continue
            order = np.argsort(-row, kind="stable")[:top]
            named.append([(self.phrases[m], float(row[m])) for m in order])
        return named


def top_activating_images(activations: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Per feature (column) the indices of its ≤ k highest rows above its minimum, best first,
    ties to the lower index. Reads the N×F array in row chunks, so a memory map stays on disk."""
    n, f = activations.shape
    chunk_rows = max(1, ACTIVATION_CHUNK_BYTES // (8 * f))
    best_values = np.empty((0, f))
    best_rows = np.empty((0, f), dtype=np.int64)
    minimum = np.full(f, np.inf)
    for start in range(0, n, chunk_rows):
        chunk = np.asarray(activations[start : start + chunk_rows], dtype=np.float64)
        if not np.isfinite(chunk).all():
            bad = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
            raise QsennError(f"feature activations of image {bad} are not finite; re-extract the features")
        minimum = np.minimum(minimum, chunk.min(axis=0))
        values = np.concatenate([best_values, chunk])
        rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + len(chunk))[:, None], chunk.shape)])
        # Stable on −value: equal values keep their order, which is ascending index (the kept
        # best rows precede the chunk and are themselves ordered so).
        order = np.argsort(-values, axis=0, kind="stable")[:k]
        best_values = np.take_along_axis(values, order, axis=0)
        best_rows = np.take_along_axis(rows, order, axis=0)
    return tuple(best_rows[best_values[:, j] > minimum[j], j] for j in range(f))


def score_concepts(
    activations: np.ndarray,
    images: Iterable[ImageInput],
    encoder: ImageTextEncoder,
    phrases: Sequence[str],
    *,
    scoring: ConceptScoring | None = None,
    batch_size: int = 64,
) -> ConceptScores:
    """Score every (feature, phrase) pair (module docstring).

    activations: N×F pooled feature values over N images (a memory map is fine);
    images: those N images in the same order, streamed in batches of `batch_size`.
    """
    scoring = scoring or ConceptScoring()
    if activations.ndim != 2 or activations.shape[0] == 0 or activations.shape[1] == 0:
        raise ValueError(f"activations must be a non-empty N×F array, got shape {activations.shape}")
    if not phrases:
        raise QsennError("no phrases to score; pass a vocabulary with at least one phrase")
    if len(set(phrases)) != len(phrases):
        raise ValueError("phrases must be distinct")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_images = activations.shape[0]
    top = top_activating_images(activations, scoring.top_images)
    texts = _unit_rows(
        np.concatenate([encoder.encode_texts(phrases[i : i + batch_size]) for i in range(0, len(phrases), batch_size)]),
        "text",
        len(phrases),
    )

    needed = np.unique(np.concatenate(top))
    slot = np.full(n_images, -1)
    slot[needed] = np.arange(len(needed))
    needed_embeddings = np.zeros((len(needed), texts.shape[1]))
    prior_sum = np.zeros(len(phrases))
    seen = 0
    with progress(total=n_images, desc="CLIP image embeddings", unit="img") as bar:
        for batch in _batches(images, batch_size):
            if seen + len(batch) > n_images:
                raise QsennError(
                    f"more images than the {n_images} rows of the activations; pass the images the "
                    "activations were computed from, in the same order"
                )
            embeddings = _unit_rows(encoder.encode_images(batch), "image", len(batch), width=texts.shape[1])
            prior_sum += _phrase_probabilities(embeddings, texts, scoring.softmax_scale).sum(axis=0)
            batch_slots = slot[seen : seen + len(batch)]
            needed_embeddings[batch_slots[batch_slots >= 0]] = embeddings[batch_slots >= 0]
            seen += len(batch)
            bar.update(len(batch))
    if seen != n_images:
        raise QsennError(
            f"{seen} images for the {n_images} rows of the activations; pass the images the activations "
            "were computed from, in the same order"
        )

    log_prior = np.log(prior_sum / n_images)
    scores = np.full((len(top), len(phrases)), np.nan)
    for j, rows in enumerate(top):
        if len(rows) == 0:
            continue
        weights = scoring.rank_weights(len(rows))
        probabilities = _phrase_probabilities(needed_embeddings[slot[rows]], texts, scoring.softmax_scale)
        scores[j] = np.log(weights @ probabilities / weights.sum()) - scoring.prior_weight * log_prior
    return ConceptScores(scores, tuple(phrases), top)


def name_features_with_clip(
    activations: np.ndarray,
    images: Iterable[ImageInput],
    clip_folder: str | Path,
    phrases: Sequence[str],
    top: int = 3,
    *,
    scoring: ConceptScoring | None = None,
    device: str = "cpu",
    batch_size: int = 64,
) -> list[list[tuple[str, float]]]:
    """Per feature (column of the N×F activations) its `top` phrases with scores, best first,
    scored with the CLIP model in `clip_folder` over `images` (the N images, in row order)."""
    encoder = load_clip(clip_folder, device=device)
    return score_concepts(activations, images, encoder, phrases, scoring=scoring, batch_size=batch_size).best(top)


def _batches(images: Iterable[ImageInput], size: int) -> Iterable[list[ImageInput]]:
    batch: list[ImageInput] = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _unit_rows(embeddings: np.ndarray, kind: str, n: int, width: int | None = None) -> np.ndarray:
    """Embeddings scaled to unit length (float64), after checking what the encoder returned."""
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n or (width is not None and array.shape[1] != width):
        expected = f"{n}×{width if width is not None else 'E'}"
        raise QsennError(f"the {kind} encoder returned an array of shape {array.shape}, not {expected}")
    if not np.isfinite(array).all():
        raise QsennError(f"the {kind} encoder returned non-finite embeddings; its weights may be corrupt")
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), _MIN_NORM)


def _phrase_probabilities(images: np.ndarray, texts: np.ndarray, scale: float) -> np.ndarray:
    """p(m|i): a softmax over the phrases of the scaled cosines (rows: images)."""
    logits = scale * (images @ texts.T)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)
