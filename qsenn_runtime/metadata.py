"""The exported-model contract: the `qsenn` metadata JSON carried by every ONNX model and engine.

Both sides use this module: qsenn_export writes it, qsenn_runtime reads and checks it.
Nothing here imports torch.

The graph computes `c = a·(f − μ)/σ` (the per-feature affine, folded) and
`logits = T·c + b`; the contribution of feature j to class k is `T[k, j]·c[j]`, and a logit
is the sum of its class's contributions plus `b[k]`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import QsennRuntimeError

METADATA_KEY = "qsenn"
FORMAT_VERSION = 1
RESIZE_MODES = ("shorter", "square", "imagenet")
OUTPUT_NAMES = ("logits", "features", "feature_maps")
INPUT_NAME = "images"
# Keys of the `engine` section: a TensorRT plan runs only with the TensorRT version and on the GPU
# model it was built with; `precision` (fp32, fp16, int8) sets the runtime's identity-check tolerance.
ENGINE_TENSORRT_KEY, ENGINE_GPU_KEY, ENGINE_PRECISION_KEY = "tensorrt", "gpu", "precision"


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


@dataclass(frozen=True)
class ModelMetadata:
    class_names: tuple[str, ...]
    features: tuple[Feature, ...]
    ternary: np.ndarray  # K×F int8 in {−1, 0, +1} (T)
    bias: np.ndarray  # K float32 (b)
    scale: float  # a, already folded into the features c
    input: InputSpec
    model_type: str = "qsenn"
    provenance: dict = field(default_factory=dict)  # dataset, crop_gt, arch, recipe, seed, metrics
    exporter: dict = field(default_factory=dict)  # qsenn / torch / onnx versions, opset
    engine: dict | None = None  # TensorRT version, GPU, precision (engines only)
    # INT8 ONNX only: how the backbone was quantised (precision, format, calibration); the head
    # (c, T, b) stays float, so contributions and the identity keep fp32 exactness.
    quantization: dict | None = None
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return len(self.features)

    # -- (de)serialisation ----------------------------------------------------------------
    def to_json(self) -> str:
        d = asdict(self)
        d["ternary"] = self.ternary.astype(int).tolist()
        d["bias"] = [float(x) for x in self.bias]
        d["format"] = METADATA_KEY
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
        if version != FORMAT_VERSION:
            raise MetadataError(
                f"qsenn metadata format version {version!r} is not supported by this "
                f"runtime (it reads version {FORMAT_VERSION}); export the model again "
                f"or install the matching qsenn"
            )
        try:
            meta = cls(
                class_names=tuple(str(n) for n in d["class_names"]),
                features=tuple(Feature(int(f["index"]), int(f["channel"]), str(f["name"])) for f in d["features"]),
                ternary=_int_matrix(d["ternary"]),
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
        if self.ternary.shape != (K, F):
            raise MetadataError(
                f"qsenn metadata: T has shape {self.ternary.shape}, expected {K} classes × {F} features"
            )
        if not np.isin(self.ternary, (-1, 0, 1)).all():
            raise MetadataError("qsenn metadata: T holds values outside {-1, 0, +1}")
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
    return out  # type: ignore[return-value]
