"""The pages model-serve serves itself, with no network: Swagger UI at ``/docs``, ReDoc at
``/redoc`` and the playground at ``/`` (also ``/ui``).

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on an offline
machine; here their assets come from the ``fastapi-offline`` wheel (it vendors Swagger UI 5
and ReDoc 2) and the playground's from ``service/doors/static``. The playground is plain HTML, CSS
and one JS module that use only the public HTTP API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, HTMLResponse

PLAYGROUND_DIR = Path(__file__).parent / "static"
DOCS_ASSETS_URL = "/static/docs"
# The playground loads only its own files and talks only to this server; images it shows are
# the person's own files (blob:) and the masks the server returned (data:).
_PLAYGROUND_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
# ReDoc's menu shows a logo it fetches from cdn.redoc.ly (and hides when that fails): refused
# here, so the page never reaches out, online or not.
_REDOC_POLICY = "img-src 'self' data:"
# No validator badge: Swagger UI would fetch it from validator.swagger.io.
_SWAGGER_PARAMETERS = {"validatorUrl": None}

router = APIRouter(include_in_schema=False)


def install_ui(app: FastAPI) -> None:
    """Adds ``/docs``, ``/redoc``, ``/``, ``/ui`` and their assets; ``app`` must have been made
    with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not registered first."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    app.mount("/static/ui", StaticFiles(directory=PLAYGROUND_DIR), name="ui-assets")
    app.include_router(router)


def _root(request: Request) -> str:
    """The prefix a proxy mounted the app under (``--root-path``), so asset URLs still resolve."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


@router.get("/docs")
async def swagger_page(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters=_SWAGGER_PARAMETERS,
    )


@router.get("/redoc")
async def redoc_page(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = _REDOC_POLICY
    return page


@router.get("/")
@router.get("/ui")
async def playground_page() -> FileResponse:
    """The playground; its links are relative, so it works at ``/``, ``/ui`` or under a prefix."""
    return FileResponse(
        PLAYGROUND_DIR / "index.html",
        media_type="text/html",
        headers={"Content-Security-Policy": _PLAYGROUND_POLICY, "Cache-Control": "no-cache"},
    )
