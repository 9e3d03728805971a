"""A model served by an Open Inference Protocol server (`qsenn serve`, Triton, KServe), behind the
local model's API:

    model = qsenn_runtime.connect("http://127.0.0.1:8000", model="birds")
    model.predict("bird.jpg").explanation.contributions

Images are decoded and preprocessed here, sent as the `images` tensor (binary tensor data), and
the server's `logits` and `features` come back; the contributions are built here from the
qsenn metadata, and the identity check runs on every result as for a local model. The metadata
comes from the server: `parameters.qsenn` of the model metadata (`qsenn serve`), else the
`parameters` of the model config (a Triton repository written by `qsenn export --format
triton`); a server that has neither needs `metadata=` (the exported model file).

Standard library only (http.client), one keep-alive connection per thread.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np

from .errors import BackendError
from .metadata import (
    ENGINE_HEAD_PRECISION_KEY,
    ENGINE_PRECISION_KEY,
    INPUT_NAME,
    METADATA_KEY,
    MetadataError,
    ModelMetadata,
)
from .model import Model
from .preprocess import MAX_IMAGE_PIXELS
from .serving.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    RequestedOutput,
    Tensor,
    encode_infer_request,
    parse_infer_response,
)
from .serving.triton_config import metadata_from_config

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_BATCH_SIZE = 16
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def connect(
    url: str,
    model: str,
    *,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    batch_size: int = DEFAULT_BATCH_SIZE,
    metadata: str | Path | ModelMetadata | None = None,
    max_image_pixels: int | None = MAX_IMAGE_PIXELS,
) -> Model:
    """The model `model` of the server at `url` ("http://host:port", "https://…" or "host:port",
    with an optional path prefix). token: sent as `Authorization: Bearer`. timeout: seconds per
    HTTP request. batch_size: images per request (capped by the server's max_batch_size).
    metadata: the qsenn metadata, when the server does not publish it (a path of the exported
    model, or a ModelMetadata)."""
    from .loader import check_io_shapes, read_metadata

    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, not {batch_size}")
    given = read_metadata(metadata) if isinstance(metadata, (str, Path)) else metadata
    backend = RemoteBackend(url, model, token=token, timeout=timeout, metadata=given)
    check_io_shapes(backend.metadata, backend.input_shapes, backend.output_shapes, backend.source)
    return Model(
        backend.metadata, backend, source=backend.source, batch_size=batch_size, max_image_pixels=max_image_pixels
    )


class RemoteBackend:
    """The backend surface of backends.py over HTTP: run(batch, output_names), the input and
    output shapes, batch_range, name and precision; plus the model's qsenn metadata."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        metadata: ModelMetadata | None = None,
    ):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"{url!r} is not a server URL; give http://HOST:PORT (or https://…)")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()
        self.base_url = f"{parts.scheme}://{parts.netloc}{self._prefix}"
        self.model = model
        self.source = f"{self.base_url}/v2/models/{model}"
        self._model_path = f"/v2/models/{quote(model, safe='')}"

        description = self._get_json(self._model_path)
        self.input_shapes = _shapes(description.get("inputs"), "inputs", self.source)
        self.output_shapes = _shapes(description.get("outputs"), "outputs", self.source)
        parameters = description.get("parameters") if isinstance(description.get("parameters"), dict) else {}
        config = None
        if metadata is None and isinstance(parameters.get(METADATA_KEY), str):
            metadata = _metadata(parameters[METADATA_KEY], self.source)
        if metadata is None or "max_batch_size" not in parameters:
            config = self._get_json(f"{self._model_path}/config", missing_ok=metadata is not None)
        if metadata is None:
            try:
                metadata = metadata_from_config(config or {}, self.source)
            except MetadataError as exc:
                raise MetadataError(
                    f"{exc}, or pass the exported model as metadata= (qsenn predict --metadata)"
                ) from None
        self.metadata = metadata
        largest = parameters.get("max_batch_size", (config or {}).get("max_batch_size"))
        # A server without batching (max_batch_size 0) takes the batch dimension the model states.
        batch = self.input_shapes.get(INPUT_NAME, (None,))[0]
        if isinstance(largest, int) and largest > 0:
            self.batch_range: tuple[int, int | None] = (1, largest)
        else:
            self.batch_range = (1, None) if batch is None else (batch, batch)
        engine_precision = (metadata.engine or {}).get(ENGINE_PRECISION_KEY)
        self.precision = str(parameters.get("precision") or engine_precision or "fp32")
        # The server's head runs in this precision (the identity check's tolerance follows it);
        # a server that does not say (Triton) is taken at the engine's record, else float32.
        engine_head = (metadata.engine or {}).get(ENGINE_HEAD_PRECISION_KEY)
        self.head_precision = str(parameters.get("head_precision") or engine_head or self.precision)
        platform = description.get("platform") or "unknown platform"
        self.name = f"remote {platform} at {self.base_url}"

    # -- the backend surface ------------------------------------------------------------------
    def run(self, batch: np.ndarray, output_names: Sequence[str]) -> list[np.ndarray]:
        images = Tensor.of(INPUT_NAME, np.ascontiguousarray(batch, dtype=np.float32))
        body, header_length = encode_infer_request(
            [images], [RequestedOutput(name, binary=True) for name in output_names]
        )
        headers = {"Content-Type": "application/octet-stream"}
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
        status, response_headers, content = self._request("POST", f"{self._model_path}/infer", body, headers)
        if status != 200:
            raise BackendError(f"{self.source}: {_error_line(status, content)}")
        try:
            response = parse_infer_response(content, response_headers.get(HEADER_LENGTH))
            arrays = [response.output(name).data for name in output_names]
        except (ProtocolError, KeyError) as exc:
            raise BackendError(f"{self.source} sent an infer response this client cannot read ({exc})") from None
        if not all(isinstance(a, np.ndarray) for a in arrays):
            raise BackendError(f"{self.source} sent BYTES where it should send tensors {', '.join(output_names)}")
        return [np.asarray(a, dtype=np.float32) for a in arrays]

    # -- HTTP ------------------------------------------------------------------------------------
    def _get_json(self, path: str, *, missing_ok: bool = False) -> Any:
        status, _, content = self._request("GET", path, None, {})
        if status == 404 and missing_ok:
            return None
        if status != 200:
            raise BackendError(f"{self.base_url}{path}: {_error_line(status, content)}")
        try:
            return json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BackendError(f"{self.base_url}{path} did not answer JSON; is this an inference server?") from None

    def _request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        headers = {**self._headers, **headers}
        for attempt in range(2):  # a kept-alive connection the server closed meanwhile: once more, fresh
            connection, fresh = self._connection()
            try:
                connection.request(method, self._prefix + path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.headers, response.read()
            except _STALE_CONNECTION as exc:
                self._drop_connection()
                if fresh or attempt:
                    raise BackendError(f"{self.base_url} closed the connection ({type(exc).__name__})") from None
            except TimeoutError:
                self._drop_connection()
                raise BackendError(f"{self.base_url} did not answer within {self._timeout:g} s") from None
            except OSError as exc:
                self._drop_connection()
                raise BackendError(
                    f"cannot reach {self.base_url}: {exc.strerror or exc}; is the server running (qsenn serve)?"
                ) from None
        raise AssertionError("unreachable")

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, False
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self._timeout)
        self._local.connection = connection
        return connection, True

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _shapes(entries: Any, what: str, source: str) -> dict[str, tuple]:
    if not isinstance(entries, list):
        raise BackendError(f"{source}: the model metadata lists no {what}; is this an Open Inference Protocol server?")
    shapes = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("shape"), list):
            shapes[entry["name"]] = tuple(d if isinstance(d, int) and d >= 0 else None for d in entry["shape"])
    return shapes


def _metadata(text: str, source: str) -> ModelMetadata:
    try:
        return ModelMetadata.from_json(text)
    except MetadataError as exc:
        raise MetadataError(f"{source}: {exc}") from None


def _error_line(status: int, content: bytes) -> str:
    """The server's error message (the protocol's {"error": …} body), on one line."""
    try:
        message = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        message = content[:200].decode("utf-8", "replace") or http.client.responses.get(status, "")
    return f"HTTP {status}: {' '.join(str(message).split())}"
