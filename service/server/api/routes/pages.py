"""Pages for people: a landing page that computes a loss from a form, and the API reference
(Swagger UI at /docs, ReDoc at /redoc) with their scripts served from here, never a CDN, so they
work where the service cannot reach the internet. The assets come from the pinned
`fastapi-offline` package; the landing page is plain HTML and one script, no build step.
A model's page (/models/{model}) is plain HTML too: its script reads the history API and draws
SVG charts itself (chart.js), so it needs no chart library and no inline script or style."""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from service import __version__
from service.server.api.policy import OPEN
from service.server.api.routing import Routes
from service.server.api.schemas import MODEL_LABEL_PATTERN

routes = Routes(include_in_schema=False)
ASSETS_PATH = "/assets"
PAGES = Path(str(files("service.server.api") / "pages"))
# Swagger UI's and ReDoc's scripts and styles, as the fastapi-offline wheel ships them.
VENDORED = Path(str(files("fastapi_offline") / "static"))


class _Assets:
    """Static files that name their route for the access log and metrics (a mount sets none)."""

    def __init__(self, directory: Path, path: str) -> None:
        self.files = StaticFiles(directory=directory)
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await self.files(scope, receive, send)


def mount_assets(app: FastAPI) -> None:
    """Serve the vendored assets and the landing page's script and style under /assets."""
    app.mount(f"{ASSETS_PATH}/vendor", _Assets(VENDORED, f"{ASSETS_PATH}/vendor/{{file}}"), name="vendor")
    app.mount(ASSETS_PATH, _Assets(PAGES, f"{ASSETS_PATH}/{{file}}"), name="assets")


# Everything from this service, nothing from elsewhere: ReDoc's sidebar links a logo on its
# vendor's CDN, and a browser without internet access would wait on it. Inline scripts and styles
# are how Swagger UI and ReDoc start; ReDoc's search runs in a worker made from a blob.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# A model's page runs only its own files: no inline script or style, no eval, nothing elsewhere.
MODEL_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
HIDE_VENDOR_LOGO = '<style>a[href*="redocly.com"], a[href*="redoc.ly"] { display: none; }</style>'


def _page(response: Response, policy: str = CONTENT_SECURITY_POLICY) -> Response:
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@functools.cache
def _landing_page() -> str:
    return (PAGES / "index.html").read_text().replace("{{version}}", __version__)


@routes.get("/", policy=OPEN)
async def landing_page() -> Response:
    return _page(HTMLResponse(_landing_page()))


@functools.cache
def _model_page() -> str:
    return (PAGES / "model.html").read_text().replace("{{version}}", __version__)


# Open, as the landing page is: the HTML holds nothing of the model (not even whether it exists);
# its script asks the history API, whose own policy needs the key's read scope on the model.
@routes.get("/models/{model}", policy=OPEN)
async def model_page(model: Annotated[str, PathParam(pattern=MODEL_LABEL_PATTERN)]) -> Response:
    return _page(HTMLResponse(_model_page()), MODEL_PAGE_POLICY)


@routes.get("/docs", policy=OPEN)
async def swagger_ui(request: Request) -> Response:
    return _page(
        get_swagger_ui_html(
            openapi_url=str(request.app.openapi_url),
            title="loss-service API",
            swagger_js_url=f"{ASSETS_PATH}/vendor/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/vendor/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/vendor/favicon.png",
        )
    )


@routes.get("/redoc", policy=OPEN)
async def redoc(request: Request) -> Response:
    page = get_redoc_html(
        openapi_url=str(request.app.openapi_url),
        title="loss-service API",
        redoc_js_url=f"{ASSETS_PATH}/vendor/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS_PATH}/vendor/favicon.png",
        with_google_fonts=False,
    )
    html = bytes(page.body).decode().replace("</head>", f"{HIDE_VENDOR_LOGO}</head>", 1)
    return _page(HTMLResponse(html))
