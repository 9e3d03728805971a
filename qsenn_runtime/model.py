"""A loaded model: predictions with their exact explanations, checked on every call.

A Model holds no mutable state after construction, so one instance serves many threads
(the backends make their own runs thread-safe).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import overload

import numpy as np
from PIL import Image

from .backend_api import Backend
from .errors import IdentityCheckError, InputError, QsennRuntimeError
from .metadata import ModelMetadata
from .preprocess import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    ImageBudget,
    ImageSource,
    describe,
    load_rgb,
    resize_and_crop,
    to_chw,
)
from .prototypes import decode_prototypes
from .report import ClassRule, class_rules
from .results import Contribution, ExplainedImage, Explanation, Prediction, PredictionError

# Identity check |logit − (Σ contributions + bias)| ≤ RTOL·(Σ|contributions| + |bias|) + ATOL.
# Float32 summation of F terms errs by at most ~F·2⁻²⁴ of that scale (3e-6 for F = 50), so 1e-4
# leaves room for any summation order yet catches a wrong T or b entry that matters. The bound
# follows the precision of the head (c and W·c + b), not the backbone's: an fp16 or INT8 backbone
# under a float32 head keeps the identity at float32 rounding. A head computed in reduced
# precision (fp16, or TF32 matrix products) rounds c and the logits to ~1e-3 each, hence the
# looser bound for it.
FP32_RTOL = 1e-4
REDUCED_PRECISION_RTOL = 2e-2
REDUCED_PRECISIONS = ("fp16", "bf16", "tf32", "int8", "fp8")
ATOL = 1e-5
PREDICT_OUTPUTS = ("logits", "features")


def identity_rtol(head_precision: str) -> float:
    """The identity check's relative tolerance for a head computed in `head_precision`."""
    return REDUCED_PRECISION_RTOL if head_precision in REDUCED_PRECISIONS else FP32_RTOL


class Model:
    def __init__(
        self,
        metadata: ModelMetadata,
        backend: Backend,
        *,
        source: str,
        batch_size: int,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        max_image_bytes: int | None = MAX_IMAGE_BYTES,
    ):
        self.metadata = metadata
        self.backend = backend
        self.source = source
        self.batch_size = batch_size
        self.image_budget = ImageBudget(max_image_pixels, max_image_bytes)
        self._weights = metadata.weights.astype(np.float64)  # T or W, exact in float64
        self._abs_weights = np.abs(self._weights)
        self._bias = metadata.bias.astype(np.float64)
        self._class_features = [np.flatnonzero(row) for row in metadata.weights]
        self._rtol = identity_rtol(backend.head_precision)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.metadata.class_names

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        return (
            f"Model({self.source!r}, {self.metadata.num_classes} classes, "
            f"{self.metadata.num_features} features, {self.backend.name})"
        )

    # -- prediction -----------------------------------------------------------------------
    @overload
    def predict(
        self,
        images: list[ImageSource] | tuple[ImageSource, ...],
        *,
        classes: Iterable[int | str] = (),
        batch_size: int | None = None,
    ) -> list[Prediction | PredictionError]: ...

    @overload
    def predict(
        self, images: ImageSource, *, classes: Iterable[int | str] = (), batch_size: int | None = None
    ) -> Prediction: ...

    def predict(
        self,
        images: ImageSource | list[ImageSource] | tuple[ImageSource, ...],
        *,
        classes: Iterable[int | str] = (),
        batch_size: int | None = None,
    ) -> Prediction | list[Prediction | PredictionError]:
        """One image -> a Prediction (a bad image raises InputError). A list or tuple -> a list
        with, per input in order, a Prediction or a PredictionError; good images are predicted
        even when others fail. `classes`: explain these classes too (index or name)."""
        if isinstance(images, (list, tuple)):
            return self._predict_sources(list(images), classes, batch_size)
        (result,) = self._predict_sources([images], classes, batch_size)
        if isinstance(result, PredictionError):
            raise InputError(result.error)
        return result

    def _predict_sources(
        self, sources: list[ImageSource], classes: Iterable[int | str], batch_size: int | None
    ) -> list[Prediction | PredictionError]:
        class_ids = self._class_ids(classes)
        chunk = self._chunk_size(batch_size)
        results: dict[int, Prediction | PredictionError] = {}
        pending: list[tuple[int, str, Image.Image]] = []  # decoded, waiting for a full batch
        for index, source in enumerate(sources):
            name = describe(source, index)
            try:
                pending.append((index, name, self._crop(source, name)))
            except InputError as exc:
                results[index] = PredictionError(name, str(exc))
            if pending and (len(pending) == chunk or index == len(sources) - 1):
                size = self.metadata.input.size
                batch = np.empty((len(pending), 3, size, size), dtype=np.float32)
                for row, (_, _, crop) in enumerate(pending):
                    to_chw(crop, out=batch[row])
                names = [name for _, name, _ in pending]
                for (i, _, _), prediction in zip(pending, self._predict_batch(batch, names, class_ids)):
                    results[i] = prediction
                pending = []
        return [results[i] for i in range(len(sources))]

    def predict_tensor(
        self, batch: np.ndarray, *, sources: Sequence[str] | None = None, classes: Iterable[int | str] = ()
    ) -> list[Prediction | PredictionError]:
        """An already preprocessed float32 N×3×size×size batch in [0, 1] -> one result per row;
        rows holding NaN or infinity get a PredictionError."""
        size = self.metadata.input.size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
            raise InputError(f"tensor of shape {batch.shape}; expected N×3×{size}×{size}")
        names = list(sources) if sources is not None else [f"<row #{i}>" for i in range(len(batch))]
        # A row's sum is NaN or infinite iff the row holds NaN or infinity (or values near the
        # float32 limit, invalid too); one pass, half the cost of isfinite().all().
        finite = np.isfinite(batch.reshape(len(batch), -1).sum(axis=1, dtype=np.float32))
        results: dict[int, Prediction | PredictionError] = {}
        for i in np.flatnonzero(~finite):
            results[int(i)] = PredictionError(names[i], f"{names[i]}: tensor row contains NaN or infinity")
        class_ids = self._class_ids(classes)
        good, all_good = np.flatnonzero(finite), bool(finite.all())
        chunk = self._chunk_size(None)
        for start in range(0, len(good), chunk):
            rows = good[start : start + chunk]
            part = batch[start : start + chunk] if all_good else batch[rows]  # a slice copies nothing
            part = np.asarray(part, dtype=np.float32)
            for i, prediction in zip(rows, self._predict_batch(part, [names[i] for i in rows], class_ids)):
                results[int(i)] = prediction
        return [results[i] for i in range(len(batch))]

    def explain(self, image: ImageSource, class_: int | str | None = None) -> ExplainedImage:
        """Predict one image and keep what a picture of the explanation needs (the crop the model
        saw, the feature maps); `class_` picks the explained class (default: the predicted one)."""
        name = describe(image, 0)
        crop = self._crop(image, name)
        class_ids = self._class_ids(() if class_ is None else (class_,))
        logits, features, maps = self._run(to_chw(crop)[None], ("logits", "features", "feature_maps"))
        self._check_identity(logits, features, [name])
        prediction = self._prediction(name, logits[0], features[0], class_ids)
        explained = prediction.class_index if class_ is None else class_ids[0]
        return ExplainedImage(prediction, explained, np.asarray(crop), maps[0])

    def prototypes(self, feature: int) -> list[np.ndarray]:
        """Feature `feature`'s prototypes from training (`qsenn atlas`): H×W×3 uint8 crops of the
        images it fires on most, its heat map over them, strongest first; [] when the export
        carried none."""
        if not 0 <= feature < self.metadata.num_features:
            raise QsennRuntimeError(
                f"feature {feature} does not exist; the model has {self.metadata.num_features} features"
            )
        return decode_prototypes(self.metadata.features[feature])

    def global_explanation(self) -> tuple[ClassRule, ...]:
        """Every class with the features that raise (T = +1) and lower (T = −1) its logit."""
        return class_rules(self.metadata)

    # -- building blocks for servers that batch requests themselves ------------------------
    def preprocess(self, image: ImageSource, name: str | None = None) -> np.ndarray:
        """One image -> the float32 3×size×size tensor the model takes (InputError if unusable)."""
        name = describe(image, 0) if name is None else name
        return to_chw(self._crop(image, name))

    def run_backend(self, batch: np.ndarray, outputs: Sequence[str] = PREDICT_OUTPUTS) -> list[np.ndarray]:
        """The backend's raw outputs for a float32 N×3×size×size batch of at most the backend's
        largest batch; nothing is checked (`predictions` checks the identity)."""
        return self._run(batch, outputs)

    def predictions(
        self,
        logits: np.ndarray,
        features: np.ndarray,
        sources: Sequence[str] | None = None,
        classes: Iterable[int | str] = (),
    ) -> list[Prediction]:
        """Predictions with their explanations from outputs computed elsewhere (a server's
        batch, a remote model); raises IdentityCheckError unless every logit is its
        contributions plus bias."""
        names = list(sources) if sources is not None else [f"<row #{i}>" for i in range(len(logits))]
        class_ids = self._class_ids(classes)
        self._check_identity(logits, features, names)
        return [self._prediction(name, logits[i], features[i], class_ids) for i, name in enumerate(names)]

    def class_ids(self, classes: Iterable[int | str]) -> list[int]:
        """Class indices of names or indices (QsennRuntimeError for an unknown one)."""
        return self._class_ids(classes)

    # -- internals ------------------------------------------------------------------------
    def _crop(self, source: ImageSource, name: str) -> Image.Image:
        return resize_and_crop(load_rgb(source, name, self.image_budget, self.metadata.input), self.metadata.input)

    def _chunk_size(self, batch_size: int | None) -> int:
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size must be ≥ 1, not {size}")
        largest = self.backend.batch_range[1]
        return size if largest is None else min(size, largest)

    def _class_ids(self, classes: Iterable[int | str]) -> list[int]:
        ids = []
        for class_ in classes:
            if isinstance(class_, (int, np.integer)) and 0 <= class_ < self.metadata.num_classes:
                ids.append(int(class_))
            elif isinstance(class_, str) and class_ in self.class_names:
                ids.append(self.class_names.index(class_))
            elif isinstance(class_, str) and class_.isdigit() and int(class_) < self.metadata.num_classes:
                ids.append(int(class_))
            else:
                raise QsennRuntimeError(
                    f"unknown class {class_!r}: give a name or an index below "
                    f"{self.metadata.num_classes} (`qsenn inspect MODEL` lists them)"
                )
        return ids

    def _run(self, batch: np.ndarray, outputs: Sequence[str]) -> list[np.ndarray]:
        """Run the backend, padding the batch up to the smallest size it accepts."""
        smallest, n = self.backend.batch_range[0], len(batch)
        if n < smallest:
            batch = np.concatenate([batch, np.zeros((smallest - n, *batch.shape[1:]), batch.dtype)])
        return [result[:n] for result in self.backend.run(batch, outputs)]

    def _predict_batch(self, batch: np.ndarray, names: Sequence[str], class_ids: list[int]) -> list[Prediction]:
        logits, features = self._run(batch, PREDICT_OUTPUTS)
        return self.predictions(logits, features, names, class_ids)

    def _check_identity(self, logits: np.ndarray, features: np.ndarray, names: Sequence[str]) -> None:
        """Every logit must equal its contributions plus bias (all classes, every image)."""
        c = features.astype(np.float64)
        recomputed = c @ self._weights.T + self._bias
        scale = np.abs(c) @ self._abs_weights.T + np.abs(self._bias)
        error = np.abs(logits - recomputed)
        tolerance = self._rtol * scale + ATOL
        broken = ~(error <= tolerance)  # NaN fails too
        if not broken.any():
            return
        i, k = np.argwhere(broken)[0]
        if not (np.isfinite(logits[i]).all() and np.isfinite(features[i]).all()):
            raise IdentityCheckError(
                f"{self.source} produced NaN or infinite outputs for {names[i]}; "
                f"the model is broken (or overflows in {self.backend.head_precision})"
            )
        raise IdentityCheckError(
            f"{self.source} is broken: for {names[i]} the logit of class {k} "
            f"({self.class_names[k]}) is {logits[i, k]:.6g} but its contributions plus bias sum to "
            f"{recomputed[i, k]:.6g} (difference {error[i, k]:.3g} > tolerance {tolerance[i, k]:.3g}); "
            f"the graph's head does not match the metadata's weights and bias, export the model again"
        )

    def _prediction(self, name: str, logits: np.ndarray, features: np.ndarray, class_ids: list[int]) -> Prediction:
        shifted = np.exp(logits.astype(np.float64) - logits.max())
        predicted = int(np.argmax(logits))
        explained = [predicted] + [k for k in dict.fromkeys(class_ids) if k != predicted]
        calibration = self.metadata.evidence
        return Prediction(
            source=name,
            class_index=predicted,
            class_name=self.class_names[predicted],
            probability=float(shifted[predicted] / shifted.sum()),
            logits=tuple(logits.tolist()),
            features=tuple(features.tolist()),
            explanations=tuple(self._explanation(k, float(logits[k]), features) for k in explained),
            evidence=None if calibration is None else calibration.assess(self._weights, features, predicted),
        )

    def _explanation(self, k: int, logit: float, features: np.ndarray) -> Explanation:
        used = self._class_features[k]
        weights = self._weights[k, used]
        values = weights * features[used]
        order = sorted(range(len(used)), key=lambda n: (-abs(values[n]), used[n]))
        described = self.metadata.features
        return Explanation(
            class_index=k,
            class_name=self.class_names[k],
            logit=logit,
            bias=float(self._bias[k]),
            contributions=tuple(
                Contribution(
                    feature=int(used[n]),
                    channel=described[used[n]].channel,
                    name=described[used[n]].name,
                    weight=float(weights[n]),
                    activation=float(features[used[n]]),
                    value=float(values[n]),
                    description=described[used[n]].description,
                )
                for n in order
            ),
        )
