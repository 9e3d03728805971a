"""The ASGI application (starlette): the Open Inference Protocol v2 REST endpoints.

  GET  /v2/health/live, /v2/health/ready              (open: probes carry no token)
  GET  /v2                                            server metadata
  GET  /v2/models/{name}[/versions/1]                 model metadata (+ parameters.qsenn)
  GET  /v2/models/{name}[/versions/1]/ready
  GET  /v2/models/{name}[/versions/1]/config          the Triton model config
  GET  /v2/models/{name}[/versions/1]/stats           Triton's statistics extension (subset)
  POST /v2/models/{name}[/versions/1]/infer
  POST /v2/repository/index                           Triton's repository index

Every error is the protocol's JSON error body `{"error": "<one line>"}` with a 4xx status (5xx
only for the server's own faults); the server keeps serving after any of them.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .endpoint import MODEL_VERSION, ServedModel, ServingLimits
from .protocol import HEADER_LENGTH, ProtocolError, encode_infer_response, error_body, parse_infer_request

log = logging.getLogger("qsenn.serve")
SERVER_NAME = "qsenn"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics", "model_repository"]
Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
INLINE_JSON_BYTES = 64 << 10  # JSON parts larger than this are (de)coded in a worker thread
JSON_BYTES_PER_VALUE = 20  # a float32 written as JSON, roughly


def _version() -> str:
    try:
        return importlib.metadata.version("qsenn")
    except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
        return "source tree"


def error(message: str, status: int) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(error_body(message), status, headers=headers, media_type="application/json")


class InferenceService:
    """The endpoints' state: the models, the limits, the token, and a count of served requests."""

    def __init__(
        self,
        models: Mapping[str, ServedModel],
        limits: ServingLimits,
        token: str | None = None,
        on_started: Callable[[], None] | None = None,
    ):
        self.models = dict(models)
        self.limits = limits
        self._token = None if token is None else token.encode()
        self._on_started = on_started
        self.served = 0  # infer requests answered with 200
        self.refused = 0  # infer requests answered with an error

    def app(self) -> Starlette:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        routes = [
            Route("/v2/health/live", self._open(self.live)),
            Route("/v2/health/ready", self._open(self.ready)),
            Route("/v2", self._guarded(self.server_metadata)),
            Route("/v2/repository/index", self._guarded(self.repository_index), methods=["POST"]),
        ]
        for prefix in (model, versioned):
            routes += [
                Route(prefix, self._guarded(self.model_metadata)),
                Route(f"{prefix}/ready", self._guarded(self.model_ready)),
                Route(f"{prefix}/config", self._guarded(self.model_config)),
                Route(f"{prefix}/stats", self._guarded(self.model_stats)),
                Route(f"{prefix}/infer", self._guarded(self.infer), methods=["POST"]),
            ]
        return Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._http_error},
            lifespan=self._lifespan,
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        for served in self.models.values():
            await served.batcher.start()
        if self._on_started is not None:
            self._on_started()
        try:
            yield
        finally:  # uvicorn gets here after the in-flight requests are answered
            for served in self.models.values():
                await served.batcher.stop()

    # -- wrappers: authorisation and errors --------------------------------------------------
    def _open(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ProtocolError as exc:
                return error(str(exc), exc.status)
            except Exception as exc:  # a bug: say so without internals, keep the details in the log
                log.exception("internal error on %s %s", request.method, request.url.path)
                return error(f"internal server error ({type(exc).__name__}); the server log has the details", 500)

        return endpoint

    def _guarded(self, handler: Handler) -> Handler:
        async def authorised(request: Request) -> Response:
            self._authorise(request)
            return await handler(request)

        return self._open(authorised) if self._token is not None else self._open(handler)

    def _authorise(self, request: Request) -> None:
        assert self._token is not None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ProtocolError(
                "this server needs a bearer token: send the header 'Authorization: Bearer <token>'", 401
            )
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise ProtocolError("the bearer token is not valid for this server", 401)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error(f"no endpoint {request.url.path} (the protocol's live under /v2)", 404)
        if exc.status_code == 405:
            return error(f"{request.method} is not allowed on {request.url.path}", 405)
        return error(str(exc.detail), exc.status_code)

    def _model(self, request: Request) -> ServedModel:
        name = request.path_params["name"]
        served = self.models.get(name)
        if served is None:
            raise ProtocolError(f"unknown model {name!r}; this server serves {', '.join(sorted(self.models))}", 404)
        version = request.path_params.get("version")
        if version is not None and version != MODEL_VERSION:
            raise ProtocolError(f"model {name!r} has no version {version!r}; it serves version {MODEL_VERSION}", 404)
        return served

    # -- endpoints ------------------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS})

    async def repository_index(self, request: Request) -> Response:
        return JSONResponse(
            [{"name": name, "version": MODEL_VERSION, "state": "READY"} for name in sorted(self.models)]
        )

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(self._model(request).metadata_response())

    async def model_ready(self, request: Request) -> Response:
        return JSONResponse({"name": self._model(request).name, "ready": True})

    async def model_config(self, request: Request) -> Response:
        return JSONResponse(self._model(request).config())

    async def model_stats(self, request: Request) -> Response:
        return JSONResponse({"model_stats": [self._model(request).statistics()]})

    async def infer(self, request: Request) -> Response:
        try:
            served = self._model(request)
            response = await asyncio.wait_for(self._infer(request, served), self.limits.timeout_s)
        except TimeoutError:
            self.refused += 1
            return error(
                f"the request took longer than the server's limit of {self.limits.timeout_s:g} s "
                f"(qsenn serve --timeout); retry, or send fewer images per request",
                503,
            )
        except ProtocolError:
            self.refused += 1
            raise
        self.served += 1
        return response

    async def _infer(self, request: Request, served: ServedModel) -> Response:
        body = await self._body(request)
        header = request.headers.get(HEADER_LENGTH)
        json_bytes = int(header) if header is not None and header.isdigit() else len(body)
        parsed = await _off_the_loop_if(json_bytes > INLINE_JSON_BYTES, parse_infer_request, body, header)
        del body
        result, binary = await served.infer(parsed)
        json_values = sum(np.size(t.data) for t, b in zip(result.outputs, binary) if not b)
        content, header_length = await _off_the_loop_if(
            json_values * JSON_BYTES_PER_VALUE > INLINE_JSON_BYTES, encode_infer_response, result, binary
        )
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})

    async def _body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        too_large = f"the request body exceeds the server's limit of {limit:,} bytes (qsenn serve --max-body-bytes)"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(too_large, 413)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(too_large, 413)
                chunks.append(chunk)
        except ClientDisconnect:
            raise ProtocolError("the client went away before sending the whole body", 400) from None
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            return _decompress(body, encoding, limit)
        if encoding != "identity":
            raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or none", 415)
        return body


async def _off_the_loop_if(slow: bool, function: Callable[..., T], *args: Any) -> T:
    """(De)coding a large JSON tensor takes milliseconds: a worker thread does it then, keeping the
    event loop free; a small body is quicker inline than a thread hop."""
    if slow:
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)
    return function(*args)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip or zlib ("deflate") data, refused once it inflates past the body limit (zip bombs)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding} body cannot be decompressed ({exc})") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise ProtocolError(
            f"the decompressed body exceeds the server's limit of {limit:,} bytes (qsenn serve --max-body-bytes)", 413
        )
    if not inflater.eof:
        raise ProtocolError(f"the {encoding} body is truncated")
    return data
