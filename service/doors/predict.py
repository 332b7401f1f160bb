"""HTTP routes: each handler looks its objects up on the runtime and hands work down the line
route -> decode (worker pool) -> batcher -> replica -> postprocess -> response.
"""

from __future__ import annotations

import asyncio
import hmac
from contextlib import ExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.responses import Response

from service.checkpoints.paths import resolve_checkpoint
from service.doors import schemas
from service.doors.http_protocol import CONNECTION_WATCH
from service.doors.intake import image_blobs, parse_top_k, query_values, read_body
from service.doors.render import classification_body, error_response, json_response, segmentation_body
from service.errors import (
    ClientGone,
    InvalidParameter,
    NotReady,
    ServeError,
    Unauthorized,
)
from service.lifecycle import Runtime
from service.ops.access import note_model
from service.ops.audit import audit, outcome_of
from service.pipeline.served import ServedModel, accounted, deadline
from service.pipeline.tasks import Wants

router = APIRouter()


def get_runtime(request: Request) -> Runtime:
    """The app's runtime (set by ``create_app``): handlers never touch module globals."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def predict(request: Request) -> Response:
    """Images in (raw body or multipart ``file`` parts), predictions out, in order."""
    runtime = get_runtime(request)
    query = query_values(request)
    name = query.get("model") or runtime.config.default_model_name
    note_model(name)
    served = runtime.registry.models.get(name)
    with accounted(served.metrics if served is not None else runtime.unknown_model_metrics) as answer:
        try:
            response = await _predict(runtime, request, query, served or runtime.registry.get(name))
        except ServeError as error:
            answer.failed(error)
            response = error_response(error)
        answer.status = response.status_code
    return response


router.add_api_route(
    "/predict",
    predict,
    methods=["POST"],
    response_class=Response,
    summary="Predict on one or more images",
    responses=schemas.PREDICT_RESPONSES,
    openapi_extra=schemas.PREDICT_OPENAPI,
)


async def _predict(
    runtime: Runtime, request: Request, query: dict[str, str], served: ServedModel
) -> Response:
    version = runtime.admit(served)
    wants = Wants(top_k=parse_top_k(query.get("top_k")))
    server = runtime.config.server
    async with deadline(server) as timer:
        with ExitStack() as held:  # the body's bytes stay reserved until the answer
            body = await read_body(request, server.max_body_bytes, runtime.body_budget, held)
            timer.uploaded()
            blobs = await image_blobs(request, body, max_images=server.max_images_per_request)
            jobs = await served.prepare(blobs, wants)
            outputs = await _await_outputs(served.submit(jobs, version), request)
    return _render(served, version.version, outputs, request)


def _render(served: ServedModel, version: str, outputs: list[Any], request: Request) -> Response:
    if served.spec.task == "classification":
        return _prediction_response(served, version, classification_body(outputs, served.spec.labels))
    if len(outputs) == 1 and "image/png" in request.headers.get("accept", ""):
        return Response(
            outputs[0].png,
            media_type="image/png",
            headers={"X-Model": served.name, "X-Model-Version": version},
        )
    return _prediction_response(served, version, segmentation_body(outputs))


def _prediction_response(served: ServedModel, version: str, predictions: list[Any]) -> Response:
    return json_response(
        {"model": served.name, "version": version, "task": served.spec.task, "predictions": predictions}
    )


async def _await_outputs(future: asyncio.Future[list[Any]], request: Request) -> list[Any]:
    """The batch outputs, or ``ClientGone`` if the client hung up (its images are then skipped:
    the batcher drops items whose future is done). The connection's watch tells, where the
    server has one (model-serve's own protocol); elsewhere a task waits on ``receive()``."""
    watch = (request.scope.get("extensions") or {}).get(CONNECTION_WATCH)
    if watch is None:
        return await _await_watching_receive(future, request)
    if watch.lost:
        future.cancel()
        raise ClientGone("the client disconnected")

    def gone() -> None:
        if not future.done():
            future.set_exception(ClientGone("the client disconnected"))

    watch.add(gone)
    try:
        return await future
    finally:
        watch.discard(gone)


async def _await_watching_receive(future: asyncio.Future[list[Any]], request: Request) -> list[Any]:
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(request, future))
    try:
        return await future
    finally:
        watcher.cancel()


async def _watch_disconnect(request: Request, future: asyncio.Future[list[Any]]) -> None:
    message = await request.receive()
    if message["type"] == "http.disconnect" and not future.done():
        future.set_exception(ClientGone("the client disconnected"))


@router.get("/models", summary="Loaded models", response_model=schemas.ModelList)
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    return {"models": [served.describe() for served in runtime.registry.models.values()]}


@router.get(
    "/models/{name}",
    summary="One loaded model",
    response_model=schemas.ModelInfo,
    responses={404: {"model": schemas.ErrorBody}},
)
async def get_model(name: str, runtime: RuntimeDep) -> dict[str, Any]:
    return runtime.registry.get(name).describe()


async def require_admin(
    request: Request,
    runtime: RuntimeDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(schemas.ADMIN_BEARER)],
) -> None:
    """``Authorization: Bearer <token>``, compared in constant time; a refusal is audited.
    Async: a check this cheap needs no thread-pool hop, so admin calls keep their arrival order."""
    if bearer is None or not bearer.credentials.strip():
        error = Unauthorized("admin routes need 'Authorization: Bearer <MODEL_SERVE_ADMIN_TOKEN>'")
    elif not hmac.compare_digest(bearer.credentials.strip().encode(), runtime.admin_token.encode()):
        error = Unauthorized("the admin token is wrong")
    else:
        return
    _audit_refusal(request, error)
    raise error


@router.post(
    "/models/{name}/reload",
    summary="Hot-reload a model's checkpoint",
    response_model=schemas.ReloadAnswer,
    dependencies=[Depends(require_admin)],
    responses=schemas.ADMIN_RESPONSES,
    openapi_extra=schemas.RELOAD_OPENAPI,
)
async def reload_model(name: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    note_model(name)
    asked: str | None = None
    try:
        served = runtime.registry.get(name)
        asked = (await _reload_request(request)).checkpoint
        path = resolve_checkpoint(runtime.config.checkpoint_root, asked) if asked else served.spec.checkpoint
        previous, version, changed = await runtime.registry.reload(name, path)
    except Exception as error:
        _audit_refusal(request, error, asked)
        raise
    outcome = "success" if changed else "unchanged"
    audit(
        "reload",
        name,
        outcome,
        client=_client(request),
        checkpoint=asked,
        previous_version=previous,
        version=version,
    )
    return {"model": name, "previous_version": previous, "version": version, "changed": changed}


async def _reload_request(request: Request) -> schemas.ReloadRequest:
    body = await request.body()
    if not body.strip():
        return schemas.ReloadRequest()
    try:
        return schemas.ReloadRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f" at {'.'.join(map(str, first['loc']))!r}" if first["loc"] else ""
        raise InvalidParameter(
            f'the body must be JSON like {{"checkpoint": "path"}}: {first["msg"]}{where}'
        ) from None


@router.post(
    "/models/{name}/rollback",
    summary="Restore the previous version",
    response_model=schemas.ReloadAnswer,
    dependencies=[Depends(require_admin)],
    responses=schemas.ADMIN_RESPONSES,
)
async def rollback_model(name: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    note_model(name)
    try:
        previous, version = await runtime.registry.rollback(name)
    except Exception as error:
        _audit_refusal(request, error)
        raise
    audit("rollback", name, "success", client=_client(request), previous_version=previous, version=version)
    return {"model": name, "previous_version": previous, "version": version, "changed": True}


def _audit_refusal(request: Request, error: Exception, checkpoint: str | None = None) -> None:
    """Audits an admin action that did not happen; the action is the path's last segment."""
    reason = error.message if isinstance(error, ServeError) else f"{type(error).__name__}: {error}"
    action = request.url.path.rsplit("/", 1)[-1]
    name = str(request.path_params.get("name", "-"))
    audit(action, name, outcome_of(error), client=_client(request), checkpoint=checkpoint, reason=reason)


def _client(request: Request) -> str | None:
    client = request.client
    return f"{client.host}:{client.port}" if client else None


@router.get(
    "/healthz",
    summary="Liveness: 200 while the process is alive and can serve",
    responses={503: {"model": schemas.ErrorBody}},
)
async def healthz(runtime: RuntimeDep) -> Response:
    if runtime.startup_error is not None:
        return error_response(NotReady(f"model loading failed: {runtime.startup_error}"))
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness: 200 once every model is loaded and warm",
    responses={503: {"model": schemas.ErrorBody}},
)
async def readyz(runtime: RuntimeDep) -> Response:
    if runtime.draining:
        return error_response(NotReady("the server is draining before shutdown"))
    if not runtime.registry.ready:
        return error_response(NotReady("models are still loading and warming up"))
    return json_response({"status": "ready", "models": sorted(runtime.registry.models)})


@router.get("/metrics", summary="Prometheus text exposition", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
