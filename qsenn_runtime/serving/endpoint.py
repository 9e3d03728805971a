"""One served model: what the protocol says about it (metadata, config) and its infer requests.

Inputs (a request gives one of them):
  images       FP32  N×3×size×size in [0, 1], already resized and cropped
  image_bytes  BYTES N (or N×1) encoded images, decoded and preprocessed here as the runtime does
Outputs: the graph's `logits`, `features`, `feature_maps`, and the prediction's `class_index`,
`class_name`, `probability` and `explanations` (one JSON list per image: the predicted class's
sorted signed contributions, then those of the classes named in `explain_classes`). Without
an `outputs` list a response holds DEFAULT_OUTPUTS, plus `explanations` when the request
parameter `explain` is true or `explain_classes` names classes.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import IdentityCheckError, InputError, QsennRuntimeError
from ..metadata import INPUT_NAME, METADATA_KEY
from ..model import Model
from ..results import Prediction
from . import triton_config
from .batcher import DynamicBatcher
from .protocol import BYTES, InferRequest, InferResponse, ProtocolError, RequestedOutput, Tensor

MODEL_VERSION = "1"
BYTES_INPUT = "image_bytes"
BACKEND_OUTPUTS = ("logits", "features", "feature_maps")
DEFAULT_OUTPUTS = ("logits", "features", "class_index", "class_name", "probability")
EXPLAIN, EXPLAIN_CLASSES, CLASSIFICATION = "explain", "explain_classes", "classification"


@dataclass(frozen=True)
class ServingLimits:
    max_batch: int = 32  # images per request and per backend call (capped by the model's own)
    batch_window_ms: float = 2.0  # 0: no dynamic batching
    max_body_bytes: int = 128 << 20
    timeout_s: float = 60.0  # per request, from its arrival to its response
    instances: int = 1  # backend calls running at once per model

    def validate(self) -> None:
        problems = [
            f"{name} must be {rule}, not {value}"
            for name, value, ok, rule in (
                ("--max-batch", self.max_batch, self.max_batch >= 1, "≥ 1"),
                ("--batch-window-ms", self.batch_window_ms, self.batch_window_ms >= 0, "≥ 0"),
                ("--max-body-bytes", self.max_body_bytes, self.max_body_bytes >= 1024, "≥ 1024"),
                ("--timeout", self.timeout_s, self.timeout_s > 0, "> 0"),
                ("--instances", self.instances, self.instances >= 1, "≥ 1"),
            )
            if not ok
        ]
        if problems:
            raise QsennRuntimeError("; ".join(problems))


class ServedModel:
    """`model` serves the protocol; `replicas` are the other instances' copies of it, each with a
    backend session of its own (Triton's model instances). Without replicas the instances share
    `model`'s session, whose run is thread-safe but splits the same threads between the calls."""

    def __init__(self, name: str, model: Model, limits: ServingLimits, replicas: Sequence[Model] = ()):
        self.name = name
        self.model = model
        self.sessions = 1 + len(replicas)
        self._idle: queue.SimpleQueue[Model] = queue.SimpleQueue()  # at most `instances` calls take one
        for instance in (model, *replicas):
            self._idle.put(instance)
        largest = model.backend.batch_range[1]
        self.max_batch = limits.max_batch if largest is None else min(limits.max_batch, largest)
        self.batcher = DynamicBatcher(
            self._run_rows,
            max_batch=self.max_batch,
            window_s=limits.batch_window_ms / 1000,
            instances=limits.instances,
            name=name,
        )
        metadata = model.metadata
        maps = model.backend.output_shapes.get("feature_maps", (None, None, None, None))
        self.feature_map_size = None if None in maps[2:] else (int(maps[2]), int(maps[3]))
        h, w = self.feature_map_size or (-1, -1)
        size, K, F = metadata.input.size, metadata.num_classes, metadata.num_features
        self.inputs = {INPUT_NAME: ("FP32", [-1, 3, size, size]), BYTES_INPUT: (BYTES, [-1])}
        self.outputs = {
            "logits": ("FP32", [-1, K]),
            "features": ("FP32", [-1, F]),
            "feature_maps": ("FP32", [-1, F, h, w]),
            "class_index": ("INT64", [-1]),
            "class_name": (BYTES, [-1]),
            "probability": ("FP32", [-1]),
            "explanations": (BYTES, [-1]),
        }
        self.platform = triton_config.PLATFORM_TENSORRT if metadata.engine else triton_config.PLATFORM_ONNX

    def _run_rows(self, rows: np.ndarray) -> list[np.ndarray]:
        if self.sessions == 1:
            return self.model.run_backend(rows, BACKEND_OUTPUTS)
        instance = self._idle.get()  # never waits: the batcher runs at most `instances` calls at once
        try:
            return instance.run_backend(rows, BACKEND_OUTPUTS)
        finally:
            self._idle.put(instance)

    # -- what the model is ------------------------------------------------------------------
    def metadata_response(self) -> dict[str, Any]:
        """`GET /v2/models/{name}`; `parameters.qsenn` holds the qsenn metadata JSON."""

        def tensors(specs: dict[str, tuple[str, list[int]]]) -> list[dict]:
            return [{"name": n, "datatype": d, "shape": s} for n, (d, s) in specs.items()]

        return {
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": self.platform,
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
            "parameters": {
                METADATA_KEY: self.model.metadata.to_json(),
                "max_batch_size": self.max_batch,
                "precision": self.model.backend.precision,
                "head_precision": self.model.backend.head_precision,
                "backend": self.model.backend_name,
            },
        }

    def config(self) -> dict[str, Any]:
        """`GET /v2/models/{name}/config`: the config a Triton repository of this model holds."""
        return triton_config.model_config(
            self.name,
            self.model.metadata,
            platform=self.platform,
            max_batch_size=self.max_batch,
            feature_map_size=self.feature_map_size,
            instance_kind="KIND_GPU" if self.platform == triton_config.PLATFORM_TENSORRT else "KIND_CPU",
            instances=self.batcher.instances,
            queue_delay_us=round(self.batcher.window_s * 1e6),
        )

    def statistics(self) -> dict[str, Any]:
        """`GET /v2/models/{name}/stats` in the shape of Triton's statistics extension (a subset)."""
        stats = self.batcher.statistics
        return {
            "name": self.name,
            "version": MODEL_VERSION,
            "inference_count": stats.rows,
            "execution_count": stats.executions,
            "batch_stats": [
                {"batch_size": size, "compute_infer": {"count": stats.calls[size], "ns": stats.nanoseconds[size]}}
                for size in sorted(stats.calls)
            ],
        }

    # -- inference ----------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> tuple[InferResponse, list[bool]]:
        """The response and, per output, whether it goes in binary; ProtocolError for a bad request."""
        requested = self._requested_outputs(request)
        class_ids = self._explained_classes(request.parameters)
        if len(request.inputs) != 1 or request.inputs[0].name not in self.inputs:
            given = ", ".join(repr(t.name) for t in request.inputs)
            raise ProtocolError(
                f"model {self.name!r} takes one input, {INPUT_NAME!r} (FP32 N×3×{self.model.metadata.input.size}×"
                f"{self.model.metadata.input.size} in [0, 1]) or {BYTES_INPUT!r} (BYTES, N encoded images); got {given}"
            )
        tensor = request.inputs[0]
        rows, sources = self._image_rows(tensor) if tensor.name == INPUT_NAME else await self._decoded_rows(tensor)
        logits, features, maps = await self.batcher.submit(rows)
        try:
            predictions = self.model.predictions(logits, features, sources, class_ids)
        except IdentityCheckError as exc:
            raise ProtocolError(str(exc), 500) from None
        values = {"logits": logits, "features": features, "feature_maps": maps}
        outputs = [self._output(o, predictions, values) for o in requested]
        binary = [request.binary_output if o.binary is None else o.binary for o in requested]
        return InferResponse(self.name, tuple(outputs), MODEL_VERSION, request.id), binary

    def _requested_outputs(self, request: InferRequest) -> list[RequestedOutput]:
        if request.outputs is None:
            explain = bool(request.parameters.get(EXPLAIN)) or bool(request.parameters.get(EXPLAIN_CLASSES))
            names = (*DEFAULT_OUTPUTS, "explanations") if explain else DEFAULT_OUTPUTS
            return [RequestedOutput(name) for name in names]
        for output in request.outputs:
            if output.name not in self.outputs:
                raise ProtocolError(
                    f"model {self.name!r} has no output {output.name!r}; its outputs: {', '.join(self.outputs)}"
                )
            k = output.parameters.get(CLASSIFICATION)
            if k is not None and (output.name != "logits" or not isinstance(k, int) or isinstance(k, bool) or k < 1):
                raise ProtocolError(
                    f"classification takes a positive class count on the logits output, not {k!r} on {output.name!r}"
                )
        return list(request.outputs)

    def _explained_classes(self, parameters: dict[str, Any]) -> list[int]:
        explain = parameters.get(EXPLAIN)
        if explain is not None and not isinstance(explain, bool):
            raise ProtocolError(f"parameter {EXPLAIN!r} must be true or false, not {explain!r}")
        named = parameters.get(EXPLAIN_CLASSES)
        if named is None:
            return []
        if isinstance(named, bool) or not isinstance(named, (str, int)):
            raise ProtocolError(
                f"parameter {EXPLAIN_CLASSES!r} must be class names or indices separated by commas, not {named!r}"
            )
        classes = [part.strip() for part in named.split(",") if part.strip()] if isinstance(named, str) else [named]
        try:
            return self.model.class_ids(classes)
        except QsennRuntimeError as exc:
            raise ProtocolError(f"{EXPLAIN_CLASSES}: {exc}") from None

    def _check_batch(self, n: int, what: str) -> None:
        if not 1 <= n <= self.max_batch:
            raise ProtocolError(
                f"{what} holds {n} images; model {self.name!r} takes 1 to {self.max_batch} per request"
                + (" (split the request)" if n else "")
            )

    def _image_rows(self, tensor: Tensor) -> tuple[np.ndarray, list[str]]:
        size = self.model.metadata.input.size
        if tensor.datatype != "FP32":
            raise ProtocolError(f"{INPUT_NAME!r} has datatype {tensor.datatype}; it must be FP32 (values in [0, 1])")
        shape = tensor.shape
        if len(shape) != 4 or tuple(shape[1:]) != (3, size, size):
            raise ProtocolError(
                f"{INPUT_NAME!r} has shape [{', '.join(map(str, shape))}]; model {self.name!r} takes [N, 3, {size}, {size}]"
            )
        self._check_batch(shape[0], repr(INPUT_NAME))
        rows = np.asarray(tensor.data, dtype=np.float32)
        finite = np.isfinite(rows.reshape(len(rows), -1).sum(axis=1, dtype=np.float32))  # as Model.predict_tensor
        if not finite.all():
            raise ProtocolError(f"{INPUT_NAME!r} row {int(np.flatnonzero(~finite)[0])} contains NaN or infinity")
        return rows, [f"{INPUT_NAME}[{i}]" for i in range(len(rows))]

    async def _decoded_rows(self, tensor: Tensor) -> tuple[np.ndarray, list[str]]:
        if tensor.datatype != BYTES:
            raise ProtocolError(f"{BYTES_INPUT!r} has datatype {tensor.datatype}; it must be BYTES (encoded images)")
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise ProtocolError(f"{BYTES_INPUT!r} has shape {list(tensor.shape)}; it must be [N] or [N, 1]")
        self._check_batch(tensor.shape[0], repr(BYTES_INPUT))
        sources = [f"{BYTES_INPUT}[{i}]" for i in range(tensor.shape[0])]
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(
            *(loop.run_in_executor(None, self._preprocess, data, name) for data, name in zip(tensor.data, sources))
        )
        for result in decoded:
            if isinstance(result, str):
                raise ProtocolError(result)
        return np.stack(decoded), sources

    def _preprocess(self, data: bytes, name: str) -> np.ndarray | str:
        """The image's tensor, or the one-line reason it cannot be used."""
        try:
            return self.model.preprocess(data, name)
        except InputError as exc:
            return str(exc)

    def _output(self, output: RequestedOutput, predictions: Sequence[Prediction], values: dict) -> Tensor:
        name = output.name
        if name in values:
            k = output.parameters.get(CLASSIFICATION)
            return self._classification(predictions, k) if k else Tensor.of(name, np.ascontiguousarray(values[name]))
        if name == "class_index":
            return Tensor.of(name, np.array([p.class_index for p in predictions], dtype=np.int64))
        if name == "probability":
            return Tensor.of(name, np.array([p.probability for p in predictions], dtype=np.float32))
        if name == "class_name":
            return Tensor.of_bytes(name, [p.class_name.encode() for p in predictions])
        return Tensor.of_bytes(name, [json.dumps([e.to_dict() for e in p.explanations]).encode() for p in predictions])

    def _classification(self, predictions: Sequence[Prediction], k: int) -> Tensor:
        """Triton's classification extension: the top k classes as "logit:index:label"."""
        k = min(k, self.model.metadata.num_classes)
        names = self.model.class_names
        rows = []
        for p in predictions:
            top = sorted(range(len(p.logits)), key=lambda j: -p.logits[j])[:k]
            rows += [f"{p.logits[j]:f}:{j}:{names[j]}".encode() for j in top]
        return Tensor.of_bytes("logits", rows, (len(predictions), k))
