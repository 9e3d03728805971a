"""How much evidence a prediction rests on, relative to the model's own training images.

A logit of a Q-SENN or SLDD model is a handful of contributions W[k, j]·c_j plus a bias, so the
evidence for the predicted class is measurable: its *positive evidence* is the sum of the
contributions that raise its logit. A class can win with almost none — every other class being
more negative — which is what an image unlike anything in training tends to produce.

The export calibrates the score on training images (`qsenn export`, the metadata's `evidence`
section): the percentiles of the positive evidence of the model's predictions on them. The
runtime places every prediction's score among them and flags it as weak evidence below the 5th
percentile (so about one training image in twenty is flagged). One distribution for all classes:
per-class ones, from the few dozen images a class gets, flagged more test images and fewer images
of another dataset (docs/reliability.md has both measurements).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SCORE = "positive_evidence"  # Σ_j max(0, W[k, j]·c_j) of the predicted class k
LEVELS = 101  # the calibration stores the 0th, 1st, …, 100th percentiles
WEAK_BELOW = 5  # percentile under which a prediction is flagged


class EvidenceCalibrationError(ValueError):
    """The metadata's evidence section is malformed (the metadata reader names it)."""


def positive_evidence(weights: np.ndarray, features: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Per row i: the sum of the positive contributions W[classes[i], j]·features[i, j]."""
    contributions = np.asarray(weights, dtype=np.float64)[classes] * np.asarray(features, dtype=np.float64)
    return np.clip(contributions, 0, None).sum(axis=1)


@dataclass(frozen=True)
class Evidence:
    """One prediction's evidence: its score, where it falls among the calibration images'
    (percentile 0–100), and whether that is below the flag's percentile."""

    score: float
    percentile: float
    weak: bool
    weak_below: float  # the flag's percentile

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "percentile": self.percentile,
            "weak": self.weak,
            "weak_below_percentile": self.weak_below,
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
    """The 0th…100th percentiles of the score on the calibration images."""

    percentiles: tuple[float, ...]
    images: int
    source: str  # what the calibration images were, e.g. "1000 training images of synth"
    score: str = SCORE
    weak_below: float = WEAK_BELOW

    @classmethod
    def fit(cls, weights: np.ndarray, features: np.ndarray, logits: np.ndarray, source: str) -> EvidenceCalibration:
        """From a model's head (K×F W) and its features c and logits on calibration images."""
        if len(features) == 0:
            raise ValueError("calibrating the evidence needs at least one image")
        scores = positive_evidence(weights, features, np.argmax(logits, axis=1))
        percentiles = np.percentile(scores, np.linspace(0, 100, LEVELS))
        return cls(tuple(float(q) for q in percentiles), len(features), source)

    @property
    def threshold(self) -> float:
        """The score below which a prediction is weak evidence."""
        return float(np.interp(self.weak_below, np.linspace(0, 100, LEVELS), self.percentiles))

    def assess(self, weights: np.ndarray, features: np.ndarray, class_index: int) -> Evidence:
        """The evidence of one prediction of `class_index` with features c."""
        score = float(positive_evidence(weights, features[None], np.array([class_index]))[0])
        percentile = float(np.interp(score, self.percentiles, np.linspace(0, 100, LEVELS)))
        return Evidence(score, percentile, score < self.threshold, self.weak_below)

    # -- (de)serialisation: the metadata's "evidence" section ----------------------------------
    def to_json(self) -> dict:
        return {
            "score": self.score,
            "percentiles": list(self.percentiles),
            "weak_below_percentile": self.weak_below,
            "images": self.images,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: Any) -> EvidenceCalibration:
        if not isinstance(d, dict):
            raise EvidenceCalibrationError("the evidence section must be an object")
        if d.get("score") != SCORE:
            raise EvidenceCalibrationError(
                f"unknown evidence score {d.get('score')!r} (this runtime computes {SCORE!r}); export the model again"
            )
        weak_below = float(d["weak_below_percentile"])
        if not 0 <= weak_below <= 100:
            raise EvidenceCalibrationError(f"the evidence flag's percentile {weak_below} is not in 0..100")
        return cls(_percentiles(d.get("percentiles")), int(d["images"]), str(d.get("source", "")), SCORE, weak_below)


def _percentiles(values: Any) -> tuple[float, ...]:
    """LEVELS finite, non-decreasing floats."""
    if not isinstance(values, list):
        raise EvidenceCalibrationError("the evidence percentiles must be a list of numbers")
    out = tuple(float(v) for v in values)
    if len(out) != LEVELS:
        raise EvidenceCalibrationError(f"the evidence percentiles hold {len(out)} values, not {LEVELS}")
    if not all(math.isfinite(v) for v in out) or any(b < a for a, b in itertools.pairwise(out)):
        raise EvidenceCalibrationError("the evidence percentiles must be finite and non-decreasing")
    return out


def _ordinal(percentile: float) -> str:
    n = round(percentile)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
