"""What a prediction returns: small frozen dataclasses with `to_dict()` for JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .evidence import Evidence


@dataclass(frozen=True)
class Contribution:
    """Feature j's share of one class's logit: `weight · activation`, weight W[k, j] (±1 for Q-SENN's
    ternary head, a real number for SLDD's sparse head)."""

    feature: int  # column j of T
    channel: int  # backbone channel the feature reads
    name: str
    weight: float  # W[k, j]
    activation: float  # c_j
    value: float  # W[k, j] · c_j
    description: str = ""  # what the feature means (`qsenn atlas`, edited in its names file)

    @property
    def weight_text(self) -> str:
        """ "+1"/"-1" for a ternary weight, "+0.834" for a real one."""
        return f"{self.weight:+.0f}" if abs(self.weight) == 1 else f"{self.weight:+.3g}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Explanation:
    """One class's logit as an exact sum: contributions (largest magnitude first) plus bias."""

    class_index: int
    class_name: str
    logit: float
    bias: float
    contributions: tuple[Contribution, ...]

    def top(self, k: int | None) -> tuple[Contribution, ...]:
        return self.contributions if k is None else self.contributions[:k]

    def to_dict(self, top_k: int | None = None) -> dict:
        return {
            "class_index": self.class_index,
            "class_name": self.class_name,
            "logit": self.logit,
            "bias": self.bias,
            "contributions": [c.to_dict() for c in self.top(top_k)],
        }


@dataclass(frozen=True)
class Prediction:
    source: str  # the input's path, or its kind and position
    class_index: int
    class_name: str
    probability: float  # softmax of the logits
    logits: tuple[float, ...]
    features: tuple[float, ...]  # c, the values every contribution is built from
    explanations: tuple[Explanation, ...]  # the predicted class first, then the requested ones
    # How the predicted class's positive evidence compares with the training images' (None: the
    # model's metadata holds no evidence calibration).
    evidence: Evidence | None = None

    ok = True

    @property
    def explanation(self) -> Explanation:
        return self.explanations[0]

    def explanation_for(self, class_: int | str) -> Explanation:
        for explanation in self.explanations:
            if class_ in (explanation.class_index, explanation.class_name):
                return explanation
        raise KeyError(f"{class_!r} was not explained; pass it in predict(..., classes=[...])")

    def to_dict(self, top_k: int | None = None) -> dict:
        return {
            "source": self.source,
            "class_index": self.class_index,
            "class_name": self.class_name,
            "probability": self.probability,
            "logits": list(self.logits),
            "features": list(self.features),
            "explanations": [e.to_dict(top_k) for e in self.explanations],
            "evidence": None if self.evidence is None else self.evidence.to_dict(),
        }


@dataclass(frozen=True)
class PredictionError:
    """The entry of an input that could not be used; the other inputs of the batch still run."""

    source: str
    error: str  # one line: what is wrong and what to do

    ok = False

    def to_dict(self, top_k: int | None = None) -> dict:
        return {"source": self.source, "error": self.error}


@dataclass(frozen=True, eq=False)
class ExplainedImage:
    """A prediction with what its heat maps need: the crop the model saw and the feature maps."""

    prediction: Prediction
    class_index: int  # the class whose contributions are shown
    image: np.ndarray  # size×size×3 uint8
    feature_maps: np.ndarray  # F×h×w float32, one map per feature (column of T)

    @property
    def explanation(self) -> Explanation:
        return self.prediction.explanation_for(self.class_index)
