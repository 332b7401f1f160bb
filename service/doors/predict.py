"""HTTP routes: each handler looks its objects up on the runtime and hands work down the line
route -> decode (decode threads) -> batcher -> replica -> postprocess -> response.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.responses import Response

from service.checkpoints.paths import resolve_checkpoint
from service.doors import schemas
from service.doors.admin import check_admin
from service.doors.intake import (
    departure_of,
    image_blobs,
    parse_top_k,
    query_values,
    read_body,
    read_control_body,
)
from service.doors.render import error_response, json_response
from service.errors import (
    InvalidParameter,
    NotReady,
    ServeError,
    Unauthorized,
)
from service.ops.access import note_model
from service.ops.audit import audit, outcome_of
from service.pipeline.call import Call, accounted
from service.pipeline.runtime import Runtime
from service.pipeline.served import ServedModel
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
    call = Call(runtime, served, departure=departure_of(request))
    wants = Wants(top_k=parse_top_k(query.get("top_k")))
    async with call:
        body = await read_body(request, call.limits.max_body_bytes, call.hold_body)
        call.uploaded()
        blobs = await image_blobs(request, body, max_images=call.limits.max_images_per_request)
        outputs = await call.run(await served.prepare(blobs, wants))
    return _render(served, call.pinned.version, outputs, request)


def _render(served: ServedModel, version: str, outputs: list[Any], request: Request) -> Response:
    """The task's PNG where the client accepts one and the task has it, else its JSON body."""
    png = served.task.png_answer(outputs) if "image/png" in request.headers.get("accept", "") else None
    if png is not None:
        return Response(
            png, media_type="image/png", headers={"X-Model": served.name, "X-Model-Version": version}
        )
    predictions = served.task.predict_body(outputs, served.spec.labels)
    return json_response(
        {"model": served.name, "version": version, "task": served.task.name, "predictions": predictions}
    )


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
    try:
        check_admin(runtime.admin_token, bearer.credentials if bearer is not None else None)
    except Unauthorized as error:
        _audit_refusal(request, error)
        raise


# What every admin route shares: the token check, the answer's schema and its refusals.
_ADMIN_ROUTE: dict[str, Any] = {
    "response_model": schemas.ReloadAnswer,
    "dependencies": [Depends(require_admin)],
    "responses": schemas.ADMIN_RESPONSES,
}


@router.post(
    "/models/{name}/reload",
    summary="Hot-reload a model's checkpoint",
    openapi_extra=schemas.RELOAD_OPENAPI,
    **_ADMIN_ROUTE,
)
async def reload_model(name: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    note_model(name)
    asked: str | None = None
    try:
        served = runtime.registry.get(name)
        asked = (await _reload_request(request)).checkpoint
        path = (
            served.spec.checkpoint
            if asked is None
            else resolve_checkpoint(runtime.config.checkpoint_root, asked)
        )
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
    body = await read_control_body(request)
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


@router.post("/models/{name}/rollback", summary="Restore the previous version", **_ADMIN_ROUTE)
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
