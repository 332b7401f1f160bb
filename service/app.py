"""``create_app(config)``: the FastAPI app, its lifespan, error mapping and request ids.

Models load in the background after the socket opens, so ``/healthz`` answers at once and
``/readyz`` turns 200 when every replica has run its warm-up batch. A load failure makes
``/healthz`` fail too (an orchestrator restarts the process) and calls ``on_fatal``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from service import __version__
from service.config import ServeConfig
from service.doors.predict import predict, router
from service.doors.render import error_response, v2_error_response
from service.doors.ui import install_ui
from service.doors.v2.repository import router as repository_router
from service.doors.v2.rest import infer_route, infer_target
from service.doors.v2.rest import router as v2_router
from service.errors import InvalidParameter, NotFound, ServeError
from service.lifecycle import Lifecycle
from service.ops.access import Access, RequestIds
from service.ops.metrics import Metrics
from service.pipeline.decode_pool import DecodePool
from service.pipeline.devices import available_cores
from service.pipeline.registry import Registry
from service.pipeline.runtime import Runtime

log = logging.getLogger(__name__)


def create_app(
    config: ServeConfig,
    *,
    metrics: Metrics | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    grpc_host: str = "127.0.0.1",
) -> FastAPI:
    """A ready-to-run app for ``config``; nothing loads or listens until its lifespan starts
    (then gRPC listens on ``grpc_host`` and ``server.grpc_port``, unless that is null).

    ``on_ready`` is called once every model is warm; ``on_fatal`` with the error if loading
    fails (the caller then reports it: without ``on_fatal`` it is logged here)."""
    metrics = metrics or Metrics()
    token = config.server.admin_token or secrets.token_urlsafe(24)
    if config.server.admin_token is None:
        log.warning("no MODEL_SERVE_ADMIN_TOKEN set; this run's admin token is %s", token)
    threads = max(2, available_cores())
    workers = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    decode_pool = DecodePool(workers, threads, config.server.max_decode_seconds_per_request, metrics)
    runtime = Runtime(
        config=config,
        registry=Registry(config, metrics, decode_pool),
        metrics=metrics,
        workers=workers,
        admin_token=token,
    )

    lifecycle = Lifecycle(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await lifecycle.start(grpc_host=grpc_host, on_ready=on_ready, on_fatal=on_fatal)
        try:
            yield
        finally:
            await lifecycle.stop()

    app = ServeApp(
        title="model-serve",
        version=__version__,
        lifespan=lifespan,
        description="Serve PyTorch checkpoints with dynamic batching on every device.",
        docs_url=None,  # service.ui serves /docs and /redoc without a CDN
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.lifecycle = lifecycle
    app.request_ids = RequestIds()
    app.include_router(router)
    app.include_router(repository_router)  # before v2_router: its routes stay its own
    app.include_router(v2_router)
    install_ui(app)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def serve_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServeError)
        return _error_for(request, exc)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error_for(request, InvalidParameter(details))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error_for(request, _routing_error(request, exc))

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        return _unexpected(request, exc)

    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def _routing_error(request: Request, exc: HTTPException) -> ServeError:
    """Starlette's routing refusal (404, 405 with its ``Allow`` header) as a ``ServeError``."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        return NotFound(f"no route {where}")
    headers = dict(exc.headers or {})
    allowed = headers.get("Allow")
    message = f"{where} is not allowed; this path takes {allowed}" if allowed else str(exc.detail)
    error = ServeError(message, headers=headers)
    error.status = exc.status_code
    error.code = "http_error"
    return error


def _error_for(request: Request, error: ServeError) -> Response:
    """The error in the body of the request's protocol: the Open Inference Protocol's under
    ``/v2`` (``{"error": message}``: tritonclient reads a string), the HTTP API's elsewhere."""
    path = request.url.path
    if path == "/v2" or path.startswith("/v2/"):
        return v2_error_response(error)
    return error_response(error)


class ServeApp(FastAPI):
    """FastAPI, except that ``POST /predict`` and v2 ``POST .../infer`` go straight to their handlers.

    Measured here under load, the generic layers (error and telemetry middleware, body-limit
    wrapper, router matching, exit stacks) took about a fifth of the event loop's time per
    predict request: as much as decoding the image. The route stays registered, so the
    OpenAPI page documents it; errors are answered in the same JSON form.
    """

    request_ids: RequestIds  # set by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        access = _access(scope, self.request_ids)
        access.begin()
        try:
            handler = _fast_path(scope)
            if handler is None:
                await super().__call__(scope, receive, _answering(send, access))
            else:
                await self._answer(handler, scope, receive, send, access)
        finally:
            access.finish()

    async def _answer(
        self,
        handler: Callable[[Request], Awaitable[Response]],
        scope: Scope,
        receive: Receive,
        send: Send,
        access: Access,
    ) -> None:
        """A fast-path request: its handler's response, with the request id, sent as is."""
        scope["app"] = self
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except Exception as exc:
            response = _unexpected(request, exc)
        response.raw_headers.append((b"x-request-id", access.request_id.encode()))
        access.status = response.status_code
        await response(scope, receive, send)


def _access(scope: Scope, ids: RequestIds) -> Access:
    """The request's access line, with its id: the client's ``X-Request-ID`` when sane."""
    given = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            break
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else None
    return Access("http", scope["method"], scope["path"], address, ids.choose(given))


def _answering(send: Send, access: Access) -> Send:
    """``send`` that adds the request id to the answer and notes its status for the access line."""
    header = (b"x-request-id", access.request_id.encode())

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), header]
            access.status = message["status"]
        await send(message)

    return send_with_id


def _fast_path(scope: Scope) -> Callable[[Request], Awaitable[Response]] | None:
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path: str = scope["path"]
    if path == "/predict":
        return predict
    if path.startswith("/v2/models/") and infer_target(path) is not None:
        return infer_route
    return None


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_for(request, ServeError(f"internal error: {type(exc).__name__}; see the server log"))
