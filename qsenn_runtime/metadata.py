"""The exported-model contract: the `qsenn` metadata JSON carried by every ONNX model and engine.

Both sides use this module: qsenn_export writes it, qsenn_runtime reads and checks it.
Nothing here imports torch.

The graph computes `c = a·(f − μ)/σ` (the per-feature affine, folded) and `logits = W·c + b`,
where the head matrix W is one of two kinds:
- "ternary" (Q-SENN): W = T ∈ {−1, 0, +1}, stored as int8, with the shared magnitude a folded
  into c;
- "sparse" (SLDD): W holds the model's real weights (about r per class) and a = 1.
The contribution of feature j to class k is `W[k, j]·c[j]`, and a logit is the sum of its
class's contributions plus `b[k]`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import QsennRuntimeError
from .evidence import EvidenceCalibration

METADATA_KEY = "qsenn"
FORMAT_VERSION = 3
# Version 1 (ternary heads only, T under "ternary") and 2 (features without descriptions,
# attributes or prototypes) are still read.
READABLE_VERSIONS = (1, 2, FORMAT_VERSION)
HEAD_TERNARY, HEAD_SPARSE = "ternary", "sparse"
HEAD_KINDS = (HEAD_TERNARY, HEAD_SPARSE)
RESIZE_MODES = ("shorter", "square", "imagenet")
OUTPUT_NAMES = ("logits", "features", "feature_maps")
INPUT_NAME = "images"
# Keys of the `engine` section: a TensorRT plan runs only with the TensorRT version (and major) and
# on the GPU model it was built with; `precision` (fp32, fp16, int8) is the backbone's, and
# `head_precision` the head's, which sets the runtime's identity-check tolerance (engines without
# it ran their head in `precision`).
ENGINE_TENSORRT_KEY, ENGINE_GPU_KEY, ENGINE_PRECISION_KEY = "tensorrt", "gpu", "precision"
ENGINE_TENSORRT_MAJOR_KEY, ENGINE_HEAD_PRECISION_KEY = "tensorrt_major", "head_precision"


class MetadataError(QsennRuntimeError, ValueError):
    """The metadata is missing or does not describe a valid qsenn model (one-line message)."""


@dataclass(frozen=True)
class InputSpec:
    size: int  # square side the graph expects (H = W = size)
    resize_mode: str  # how the test transform resizes (see RESIZE_MODES)
    mean: tuple[float, float, float] | None  # normalisation applied inside the graph
    std: tuple[float, float, float] | None


@dataclass(frozen=True)
class Feature:
    index: int  # column j of T
    channel: int  # backbone channel it reads (the model's selection)
    name: str
    description: str = ""
    # The best-aligned annotated attributes (`qsenn atlas`), best first: (attribute, A_{j,a}).
    attributes: tuple[tuple[str, float], ...] = ()
    # Training crops where the feature fires most, heat map over them: base64 JPEGs, strongest
    # first (qsenn_runtime.prototypes decodes them to arrays).
    prototypes: tuple[str, ...] = ()
    # Its share of |contribution| to the predicted classes' logits over the test set (`qsenn atlas`).
    importance: float | None = None

    @classmethod
    def from_json(cls, d: dict) -> Feature:
        return cls(
            int(d["index"]),
            int(d["channel"]),
            str(d["name"]),
            str(d.get("description", "")),
            tuple((str(name), float(score)) for name, score in d.get("attributes", ())),
            tuple(str(p) for p in d.get("prototypes", ())),
            None if d.get("importance") is None else float(d["importance"]),
        )


@dataclass(frozen=True)
class ModelMetadata:
    class_names: tuple[str, ...]
    features: tuple[Feature, ...]
    head_kind: str  # HEAD_TERNARY or HEAD_SPARSE
    weights: np.ndarray  # K×F head matrix W: int8 T in {−1, 0, +1} (ternary) or float32 (sparse)
    bias: np.ndarray  # K float32 (b)
    scale: float  # a, already folded into the features c (1 for a sparse head)
    input: InputSpec
    model_type: str = "qsenn"
    provenance: dict = field(default_factory=dict)  # dataset, crop_gt, arch, recipe, seed, metrics
    exporter: dict = field(default_factory=dict)  # qsenn / torch / onnx versions, opset
    engine: dict | None = None  # TensorRT version, GPU, precision (engines only)
    # INT8 ONNX only: how the backbone was quantised (precision, format, calibration); the head
    # (c, T, b) stays float, so contributions and the identity keep fp32 exactness.
    quantization: dict | None = None
    # How strong a prediction's evidence is, calibrated on training images (see evidence.py);
    # None where the export had no images to calibrate on. Written only when set.
    evidence: EvidenceCalibration | None = None
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return len(self.features)

    @property
    def is_ternary(self) -> bool:
        return self.head_kind == HEAD_TERNARY

    # -- (de)serialisation ----------------------------------------------------------------
    def to_json(self) -> str:
        d = asdict(self)
        del d["head_kind"], d["weights"]
        d["head"] = _head_to_json(self.head_kind, self.weights)
        d["bias"] = [float(x) for x in self.bias]
        if self.evidence is None:
            del d["evidence"]
        else:
            d["evidence"] = self.evidence.to_json()
        d["format"] = METADATA_KEY
        d["format_version"] = FORMAT_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MetadataError(f"qsenn metadata is not valid JSON ({exc})") from None
        except RecursionError:
            raise MetadataError("qsenn metadata is nested too deeply to be qsenn metadata") from None
        if not isinstance(d, dict) or d.get("format") != METADATA_KEY:
            raise MetadataError('metadata is not qsenn metadata (no "format": "qsenn" entry)')
        version = d.get("format_version")
        if version not in READABLE_VERSIONS:
            raise MetadataError(
                f"qsenn metadata format version {version!r} is not supported by this "
                f"runtime (it reads versions {', '.join(map(str, READABLE_VERSIONS))}); export the model "
                f"again or install the matching qsenn"
            )
        try:
            head_kind, weights = (
                _head_from_json(d["head"]) if version >= 2 else (HEAD_TERNARY, _int_matrix(d["ternary"]))
            )
            meta = cls(
                class_names=tuple(str(n) for n in d["class_names"]),
                features=tuple(Feature.from_json(f) for f in d["features"]),
                head_kind=head_kind,
                weights=weights,
                bias=np.asarray(d["bias"], dtype=np.float32),
                scale=float(d["scale"]),
                input=InputSpec(
                    int(d["input"]["size"]),
                    str(d["input"]["resize_mode"]),
                    _triple(d["input"].get("mean")),
                    _triple(d["input"].get("std")),
                ),
                model_type=str(d.get("model_type", "qsenn")),
                provenance=dict(d.get("provenance", {})),
                exporter=dict(d.get("exporter", {})),
                engine=None if d.get("engine") is None else dict(d["engine"]),
                quantization=None if d.get("quantization") is None else dict(d["quantization"]),
                evidence=None if d.get("evidence") is None else EvidenceCalibration.from_json(d["evidence"]),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:  # int(Infinity)…
            raise MetadataError(f"qsenn metadata is malformed: {type(exc).__name__} {exc}") from None
        meta.validate()
        return meta

    def validate(self) -> None:
        """Every invariant the runtime relies on; a violation is one clear line."""
        K, F = self.num_classes, self.num_features
        if K < 1 or F < 1:
            raise MetadataError(f"qsenn metadata describes {K} classes and {F} features; both must be ≥ 1")
        if self.head_kind not in HEAD_KINDS:
            raise MetadataError(
                f"qsenn metadata: unknown head kind {self.head_kind!r}; expected {', '.join(HEAD_KINDS)}"
            )
        if self.weights.shape != (K, F):
            raise MetadataError(
                f"qsenn metadata: the head matrix has shape {self.weights.shape}, expected {K} classes × {F} features"
            )
        if self.is_ternary and (self.weights.dtype != np.int8 or not np.isin(self.weights, (-1, 0, 1)).all()):
            raise MetadataError("qsenn metadata: T holds values outside {-1, 0, +1}")
        if not self.is_ternary and (self.weights.dtype != np.float32 or not np.isfinite(self.weights).all()):
            raise MetadataError("qsenn metadata: the sparse head's weights must be finite float32 numbers")
        if not self.weights.any():
            raise MetadataError("qsenn metadata: every weight of the head is zero; the model cannot be explained")
        if self.bias.shape != (K,) or not np.isfinite(self.bias).all():
            raise MetadataError(f"qsenn metadata: bias must be {K} finite numbers")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise MetadataError(f"qsenn metadata: scale {self.scale} must be a positive number")
        if [f.index for f in self.features] != list(range(F)):
            raise MetadataError("qsenn metadata: feature indices must be 0..F-1 in order")
        if self.input.resize_mode not in RESIZE_MODES:
            raise MetadataError(f"qsenn metadata: unknown resize mode {self.input.resize_mode!r}")
        if self.input.size < 1:
            raise MetadataError(f"qsenn metadata: input size {self.input.size} must be positive")
        for name, values in (("mean", self.input.mean), ("std", self.input.std)):
            if values is not None and not all(math.isfinite(v) and (name == "mean" or v > 0) for v in values):
                raise MetadataError(
                    f"qsenn metadata: normalisation {name} {list(values)} must be finite"
                    f"{' and positive' if name == 'std' else ''}"
                )

    def with_engine(self, engine: dict) -> ModelMetadata:
        return ModelMetadata(**{**self.__dict__, "engine": dict(engine)})

    def with_quantization(self, quantization: dict) -> ModelMetadata:
        return ModelMetadata(**{**self.__dict__, "quantization": dict(quantization)})


def _head_to_json(kind: str, weights: np.ndarray) -> dict:
    """A ternary T as rows of integers; a sparse W as its non-zero entries [k, j, w]."""
    if kind == HEAD_TERNARY:
        return {"kind": kind, "T": weights.astype(int).tolist()}
    rows, cols = np.nonzero(weights)
    return {
        "kind": kind,
        "shape": list(weights.shape),
        "entries": [[int(k), int(j), float(weights[k, j])] for k, j in zip(rows, cols)],
    }


def _head_from_json(head: Any) -> tuple[str, np.ndarray]:
    kind = head["kind"]
    if kind == HEAD_TERNARY:
        return kind, _int_matrix(head["T"])
    if kind != HEAD_SPARSE:
        raise ValueError(f"unknown head kind {kind!r}")
    shape = tuple(int(n) for n in head["shape"])
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"head shape {list(shape)} is not K×F")
    weights = np.zeros(shape, dtype=np.float32)
    for k, j, w in head["entries"]:
        if not (0 <= int(k) < shape[0] and 0 <= int(j) < shape[1]):
            raise ValueError(f"head entry ({k}, {j}) lies outside {shape[0]}×{shape[1]}")
        weights[int(k), int(j)] = float(w)
    return kind, weights


def _int_matrix(rows: Any) -> np.ndarray:
    array = np.asarray(rows)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError("T must be a matrix of integers")
    if not np.isin(array, (-1, 0, 1)).all():  # checked before the int8 cast, which would wrap
        raise ValueError("T must hold only -1, 0 and +1")
    return array.astype(np.int8)


def _triple(values: Any) -> tuple[float, float, float] | None:
    if values is None:
        return None
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError("mean and std need 3 values (RGB)")
    return (out[0], out[1], out[2])
