"""The repository extension (Triton's model repository API) for both v2 doors: the index of the
models with their state, load (a reload, or an unloaded model brought back) and unload.

Load and unload need the admin token as reload does (HTTP ``Authorization``, gRPC
``authorization`` metadata: ``Bearer <token>``) and are audited as reloads are, whatever their
outcome; the index is open, as ``GET /models`` is. A load's ``checkpoint`` parameter is
resolved under ``checkpoint_root`` exactly as a reload's body is. REST errors are the
protocol's ``{"error": "message"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from service.checkpoints.paths import resolve_checkpoint
from service.doors.admin import bearer_token, check_admin
from service.doors.intake import read_control_body
from service.doors.render import json_response, v2_error_response
from service.errors import BadRequest, ServeError
from service.ops.access import note_model
from service.ops.audit import audit, outcome_of
from service.pipeline.runtime import Runtime
from service.pipeline.served import ServedModel

router = APIRouter(prefix="/v2/repository", tags=["Open Inference Protocol (v2)"])

READY, UNAVAILABLE, LOADING = "READY", "UNAVAILABLE", "LOADING"


@dataclass(frozen=True)
class Asker:
    """Who asks for a load or unload: the token they sent (None: none) and their address."""

    token: str | None
    client: str | None


def index(runtime: Runtime, *, ready_only: bool = False) -> list[dict[str, str]]:
    """Every configured model's ``name``, ``version`` (empty while none serves), ``state``
    and ``reason``; only the READY ones with ``ready_only``."""
    entries = [_entry(runtime, served) for served in runtime.registry.models.values()]
    return [entry for entry in entries if entry["state"] == READY] if ready_only else entries


def _entry(runtime: Runtime, served: ServedModel) -> dict[str, str]:
    active = served.active
    if served.ready:
        state, reason = READY, ""
    elif served.unloaded:
        # an unloaded model's lock is held only by a load (every other action returns at once)
        loading = served.reload_lock.locked()
        state, reason = (LOADING, "loading") if loading else (UNAVAILABLE, "unloaded")
    elif active is None and runtime.startup_error is not None:
        state, reason = UNAVAILABLE, f"loading failed: {runtime.startup_error}"
    elif active is None:
        state, reason = LOADING, "loading and warming up"
    else:
        state, reason = UNAVAILABLE, "a replica is restarting"
    version = active.version if active else ""
    return {"name": served.name, "version": version, "state": state, "reason": reason}


async def load(
    runtime: Runtime, name: str, parameters: Callable[[], Mapping[str, object]], asker: Asker
) -> dict[str, Any]:
    """Loads ``name`` (its configured checkpoint, or the ``checkpoint`` parameter's) once the
    token passes; ``parameters`` is read only then. Audited whatever the outcome."""
    asked: str | None = None
    try:
        check_admin(runtime.admin_token, asker.token)
        served = runtime.registry.named(name)
        asked = _checkpoint(parameters())
        root = runtime.config.checkpoint_root
        path = served.spec.checkpoint if asked is None else resolve_checkpoint(root, asked)
        previous, version, changed = await runtime.registry.load(name, path)
    except Exception as error:
        _audit_refusal("load", name, error, asker, asked)
        raise
    outcome = "success" if changed else "unchanged"
    client = asker.client
    audit("load", name, outcome, client=client, checkpoint=asked, previous_version=previous, version=version)
    return {"model": name, "previous_version": previous, "version": version, "changed": changed}


async def unload(runtime: Runtime, name: str, asker: Asker) -> dict[str, Any]:
    """Unloads ``name`` once the token passes (an unloaded model stays so: ``changed`` false).
    Audited whatever the outcome."""
    try:
        check_admin(runtime.admin_token, asker.token)
        runtime.registry.named(name)
        gone = await runtime.registry.unload(name)
    except Exception as error:
        _audit_refusal("unload", name, error, asker)
        raise
    audit("unload", name, "success" if gone else "unchanged", client=asker.client, previous_version=gone)
    return {"model": name, "version": gone, "changed": gone is not None}


def _checkpoint(parameters: Mapping[str, object]) -> str | None:
    """The ``checkpoint`` parameter (None: the configured file); any other parameter is refused,
    Triton's ``config`` and ``file:`` overrides included (nothing here writes model files)."""
    others = sorted(key for key in parameters if key != "checkpoint")
    if others:
        raise BadRequest(
            f"unsupported load parameters {others}: model-serve loads checkpoints; name one under "
            "checkpoint_root with the 'checkpoint' parameter, or none for the configured file"
        )
    checkpoint = parameters.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise BadRequest("the 'checkpoint' parameter must be a string: a path under checkpoint_root")
    return checkpoint


def _audit_refusal(
    action: str, name: str, error: Exception, asker: Asker, checkpoint: str | None = None
) -> None:
    reason = error.message if isinstance(error, ServeError) else f"{type(error).__name__}: {error}"
    audit(action, name, outcome_of(error), client=asker.client, checkpoint=checkpoint, reason=reason)


# --- REST ------------------------------------------------------------------------------------


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional JSON request body, for the OpenAPI page (the handlers read it themselves)."""
    return {"required": False, "content": {"application/json": {"schema": {"type": "object", **schema}}}}


_ERROR = {"content": {"application/json": {"schema": {"properties": {"error": {"type": "string"}}}}}}
_INDEX_OPENAPI = {"requestBody": _json_body({"properties": {"ready": {"type": "boolean"}}})}
_ADMIN_OPENAPI: dict[str, Any] = {"security": [{"AdminToken": []}]}
_LOAD_OPENAPI: dict[str, Any] = {
    **_ADMIN_OPENAPI,
    "requestBody": _json_body(
        {
            "properties": {
                "parameters": {
                    "type": "object",
                    "properties": {"checkpoint": {"type": "string", "description": "under checkpoint_root"}},
                    "additionalProperties": False,
                }
            }
        }
    ),
}
_ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": what, **_ERROR}
    for status, what in (
        (400, "a bad body or load parameter"),
        (401, "missing or wrong admin token"),
        (403, "checkpoint path outside checkpoint_root"),
        (404, "unknown model or checkpoint file"),
        (413, "a body over 64 KiB"),
        (422, "the checkpoint does not load into the architecture"),
    )
}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _asker(request: Request) -> Asker:
    client = request.client
    address = f"{client.host}:{client.port}" if client else None
    return Asker(bearer_token(request.headers.get("authorization")), address)


@router.post(
    "/index",
    summary="Repository index: every model and its state",
    openapi_extra=_INDEX_OPENAPI,
    responses={
        400: {"description": "a bad body", **_ERROR},
        413: {"description": "a body over 64 KiB", **_ERROR},
    },
)
async def repository_index(request: Request) -> Response:
    try:
        ready = _parsed(await read_control_body(request)).get("ready", False)
        if not isinstance(ready, bool):
            raise BadRequest("'ready' must be true or false")
    except ServeError as error:
        return v2_error_response(error)
    return json_response(index(_runtime(request), ready_only=ready))


@router.post(
    "/models/{name}/load",
    summary="Load a model (admin): reload it, or bring an unloaded one back",
    openapi_extra=_LOAD_OPENAPI,
    responses=_ADMIN_RESPONSES,
)
async def repository_load(name: str, request: Request) -> Response:
    note_model(name)
    try:
        body = await read_control_body(request)
    except ServeError as error:
        return v2_error_response(error)

    def parameters() -> Mapping[str, object]:
        document = _parsed(body)
        given = document.get("parameters")
        if given is None:
            return {}
        if not isinstance(given, dict):
            raise BadRequest("'parameters' must be a JSON object")
        return given

    try:
        return json_response(await load(_runtime(request), name, parameters, _asker(request)))
    except ServeError as error:
        return v2_error_response(error)


def _parsed(body: bytes) -> dict[str, Any]:
    """The body's JSON object; an empty body is ``{}``."""
    if not body.strip():
        return {}
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest('the body must be a JSON object like {"parameters": {"checkpoint": "path"}}')
    return document


@router.post(
    "/models/{name}/unload",
    summary="Unload a model (admin): it stops serving until loaded",
    openapi_extra=_ADMIN_OPENAPI,
    responses={status: _ADMIN_RESPONSES[status] for status in (401, 404)},
)
async def repository_unload(name: str, request: Request) -> Response:
    note_model(name)
    try:
        return json_response(await unload(_runtime(request), name, _asker(request)))
    except ServeError as error:
        return v2_error_response(error)
