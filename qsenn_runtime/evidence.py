"""How much evidence a prediction rests on, relative to the model's own training images.

A logit of a Q-SENN or SLDD model is a handful of contributions W[k, j]·c_j plus a bias, so the
evidence for the predicted class is measurable: its *positive evidence* is the sum of the
contributions that raise its logit. A class can win with almost none — every other class being
more negative — which is what an image unlike anything in training tends to produce.

The export calibrates the score on training images (`qsenn export`, the metadata's `evidence`
section): the quantiles of the positive evidence among the images predicted as each class (all
of them pooled for classes with few such images). The runtime places every prediction's score
among them (its percentile) and flags it as weak evidence below the calibrated level (5 %: by
construction about one training image in twenty is flagged; docs/reliability.md measures the rate
on test images and how well the score separates another dataset's images).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SCORE = "positive_evidence"  # Σ_j max(0, W[k, j]·c_j) of the predicted class k
# Quantile levels stored per class: dense in the low tail, where the flag is decided.
LEVELS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)
WEAK_BELOW = 0.05  # the flag's level: one of LEVELS
MIN_PER_CLASS = 20  # fewer calibration predictions of a class: it uses the pooled quantiles


class EvidenceCalibrationError(ValueError):
    """The metadata's evidence section is malformed (the metadata reader names it)."""


def positive_evidence(weights: np.ndarray, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per row i: the sum of the positive contributions W[classes[i], j]·features[i, j]."""
    contributions = np.asarray(weights, dtype=np.float64)[classes] * np.asarray(features, dtype=np.float64)
    return np.clip(contributions, 0, None).sum(axis=1)


@dataclass(frozen=True)
class Evidence:
    """One prediction's evidence: its score, where it falls among the calibration images
    predicted as the same class (percentile 0–100), and whether that is below the flag's level."""

    score: float
    percentile: float
    weak: bool
    basis: str  # "class": that class's quantiles; "pooled": all classes' (the class had few images)
    weak_below: float  # the flag's level (a fraction of the calibration images)

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "percentile": self.percentile,
            "weak": self.weak,
            "basis": self.basis,
            "weak_below_percentile": 100 * self.weak_below,
        }

    @property
    def rank(self) -> str:
        """ "62nd percentile" """
        return f"{_ordinal(self.percentile)} percentile"

    @property
    def text(self) -> str:
        """ "weak (3rd percentile)" or "62nd percentile" for tables."""
        return f"weak ({self.rank})" if self.weak else self.rank


@dataclass(frozen=True)
class EvidenceCalibration:
    """Quantiles (at LEVELS) of the score on calibration images, per predicted class and pooled."""

    pooled: tuple[float, ...]
    per_class: Mapping[int, tuple[float, ...]]  # only classes with ≥ MIN_PER_CLASS predictions
    images: int
    source: str  # what the calibration images were, e.g. "1000 training images of synth"
    score: str = SCORE
    levels: tuple[float, ...] = LEVELS
    weak_below: float = WEAK_BELOW

    @classmethod
    def fit(cls, weights: np.ndarray, features: np.ndarray, logits: np.ndarray, source: str) -> EvidenceCalibration:
        """From a model's head (K×F W) and its features c and logits on calibration images."""
        if len(features) == 0:
            raise ValueError("calibrating the evidence needs at least one image")
        predicted = np.argmax(logits, axis=1)
        scores = positive_evidence(weights, features, predicted)
        per_class = {
            int(k): _quantiles(scores[predicted == k])
            for k in np.unique(predicted)
            if (predicted == k).sum() >= MIN_PER_CLASS
        }
        return cls(_quantiles(scores), per_class, len(features), source)

    def assess(self, weights: np.ndarray, features: np.ndarray, class_index: int) -> Evidence:
        """The evidence of one prediction of `class_index` with features c."""
        score = float(positive_evidence(weights, features[None], np.array([class_index]))[0])
        basis = "class" if class_index in self.per_class else "pooled"
        quantiles = self.per_class.get(class_index, self.pooled)
        percentile = 100 * float(np.interp(score, quantiles, self.levels))
        weak = score < quantiles[self.levels.index(self.weak_below)]
        return Evidence(score, percentile, bool(weak), basis, self.weak_below)

    # -- (de)serialisation: the metadata's "evidence" section ----------------------------------
    def to_json(self) -> dict:
        return {
            "score": self.score,
            "levels": list(self.levels),
            "weak_below": self.weak_below,
            "pooled": list(self.pooled),
            "per_class": {str(k): list(q) for k, q in sorted(self.per_class.items())},
            "images": self.images,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: Any, num_classes: int) -> EvidenceCalibration:
        if not isinstance(d, dict):
            raise EvidenceCalibrationError("the evidence section must be an object")
        if d.get("score") != SCORE:
            raise EvidenceCalibrationError(
                f"unknown evidence score {d.get('score')!r} (this runtime computes {SCORE!r}); export the model again"
            )
        levels = _increasing(d.get("levels"), "levels")
        if levels[0] != 0 or levels[-1] != 1:
            raise EvidenceCalibrationError("the evidence levels must run from 0 to 1")
        weak_below = float(d["weak_below"])
        if weak_below not in levels:
            raise EvidenceCalibrationError(f"the evidence flag's level {weak_below} is not one of its levels")
        per_class = {}
        for key, values in dict(d.get("per_class", {})).items():
            k = int(key)
            if not 0 <= k < num_classes:
                raise EvidenceCalibrationError(f"evidence quantiles for class {k}, outside 0..{num_classes - 1}")
            per_class[k] = _increasing(values, f"class {k}'s quantiles", len(levels))
        return cls(
            pooled=_increasing(d.get("pooled"), "pooled quantiles", len(levels)),
            per_class=per_class,
            images=int(d["images"]),
            source=str(d.get("source", "")),
            score=SCORE,
            levels=levels,
            weak_below=weak_below,
        )


def _quantiles(scores: np.ndarray) -> tuple[float, ...]:
    return tuple(float(q) for q in np.quantile(scores, LEVELS))


def _increasing(values: Any, what: str, length: int | None = None) -> tuple[float, ...]:
    """A non-decreasing tuple of finite floats (of `length` entries where given)."""
    if not isinstance(values, list) or not values:
        raise EvidenceCalibrationError(f"the evidence {what} must be a list of numbers")
    out = tuple(float(v) for v in values)
    if length is not None and len(out) != length:
        raise EvidenceCalibrationError(f"the evidence {what} hold {len(out)} values, not {length}")
    if not all(math.isfinite(v) for v in out) or any(b < a for a, b in itertools.pairwise(out)):
        raise EvidenceCalibrationError(f"the evidence {what} must be finite and non-decreasing")
    return out


def _ordinal(percentile: float) -> str:
    n = round(percentile)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
