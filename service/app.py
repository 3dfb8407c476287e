"""The application factory: it only assembles settings, routes, error handling and lifecycle."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service import __version__
from service.api.errors import install_error_handlers
from service.api.routes import health, losses, metrics
from service.api.schemas import Problem, evaluate_request_model, loss_request_adapter
from service.config import Settings
from service.monitoring import MetricsMiddleware, Monitor, mark_worker_dead

DESCRIPTION = """Per-sample and mean losses for batches of predictions and labels, computed exactly as
Keras (`convention: keras`) or PyTorch (`convention: torch`) compute them, in float64 or float32.
Errors are RFC 9457 problem details naming the field, index and reason."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.lifecycle = "ready"
    yield
    app.state.lifecycle = "draining"
    mark_worker_dead(os.getpid())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="loss-service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.lifecycle = "starting"
    app.state.monitor = Monitor(settings)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(losses.router)
    app.include_router(metrics.router)
    app.add_middleware(MetricsMiddleware, monitor=app.state.monitor)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies, which routes read as raw bytes (never json.loads)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    template = "#/components/schemas/{model}"
    for name, body in (
        ("LossRequest", loss_request_adapter().json_schema(ref_template=template)),
        ("EvaluateRequest", evaluate_request_model().model_json_schema(ref_template=template)),
        ("Problem", Problem.model_json_schema(ref_template=template)),
    ):
        components.update(body.pop("$defs", {}))
        components[name] = body
    app.openapi_schema = schema
    return schema


app = create_app()
