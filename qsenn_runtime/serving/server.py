"""`qsenn serve`: load the models, bind the socket, run uvicorn until SIGINT or SIGTERM, drain."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import numpy as np

from ..errors import QsennRuntimeError
from ..model import Model
from ..results import PredictionError
from .endpoint import ServedModel, ServingLimits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def require_serving_stack() -> None:
    """starlette and uvicorn come with the `serve` extra; say how to get them."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise QsennRuntimeError(
            f"qsenn serve needs starlette and uvicorn ({exc.name} is missing): pip install 'qsenn[serve]'"
        ) from None


def describe(served: ServedModel) -> str:
    metadata = served.model.metadata
    batching = (
        f"dynamic batches of up to {served.max_batch} within {served.batcher.window_s * 1000:g} ms"
        if served.batcher.batching
        else f"no dynamic batching (up to {served.max_batch} images per request)"
    )
    return (
        f"model {served.name!r}: {served.model.source} ({metadata.num_classes} classes, "
        f"{metadata.num_features} features, {metadata.input.size} px) on {served.model.backend_name}"
        f"{f', {served.sessions} sessions' if served.sessions > 1 else ''}; {batching}"
    )


def warm_up(model: Model) -> None:
    """One inference before the first request: the backend allocates its buffers, and a broken
    model (its head disagreeing with the metadata) fails now instead of on every request."""
    size = model.metadata.input.size
    (result,) = model.predict_tensor(np.full((1, 3, size, size), 0.5, dtype=np.float32))
    if isinstance(result, PredictionError):
        raise QsennRuntimeError(f"{model.source}: the warm-up inference failed: {result.error}")


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on sockets that say TCP,
    # and with it on every keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise QsennRuntimeError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --host/--port"
        ) from None
    sock.listen(2048)
    return sock


def serve(
    models: Sequence[tuple[str, Sequence[Model]]],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    limits: ServingLimits | None = None,
    token: str | None = None,
    access_log: bool = False,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve `models` (name, its instances: one model, shared, or one per instance) until SIGINT or SIGTERM; then stop accepting connections,
    answer the requests in flight, and return."""
    require_serving_stack()
    import uvicorn

    from .app import InferenceService

    limits = limits or ServingLimits()
    limits.validate()
    served = {}
    for name, (model, *replicas) in models:
        for instance in (model, *replicas):
            warm_up(instance)
        served[name] = ServedModel(name, model, limits, replicas)
        echo(describe(served[name]))
    sock = listening_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host

    def started() -> None:
        echo(
            f"listening on http://{url_host}:{bound_port} (Open Inference Protocol v2"
            f"{'; bearer token required' if token else ''}); SIGINT or SIGTERM stops after the requests in flight"
        )

    service = InferenceService(served, limits, token, on_started=started)
    config = uvicorn.Config(
        service.app(),
        log_level="warning",
        access_log=access_log,
        lifespan="on",
        # Draining waits for the requests in flight, each bounded by the request timeout.
        timeout_graceful_shutdown=int(limits.timeout_s) + 5,
    )
    server = _draining_server(config, lambda: echo("stopping: no new connections; answering the requests in flight"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    echo(f"stopped: {service.served} requests answered, {service.refused} refused")


def _draining_server(config, on_stop: Callable[[], None]):
    """uvicorn's Server, except that a stop signal ends `run` normally instead of being re-raised
    after the shutdown (which would turn Ctrl-C into a KeyboardInterrupt and SIGTERM into exit
    status 143 after a clean drain)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig: int, frame: FrameType | None) -> None:
                if not self.should_exit:
                    with contextlib.suppress(RuntimeError):  # the signal interrupted a write to stdout
                        on_stop()
                self.handle_exit(sig, frame)

            previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DrainingServer(config)
