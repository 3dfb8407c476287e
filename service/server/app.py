"""The application factory: it only assembles settings, routes, error handling and lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from service import __version__
from service.config import Settings
from service.engine import available_cores, set_threads
from service.server.api.access import KeyRing
from service.server.api.calibration_schemas import CalibrationRequest
from service.server.api.config_schemas import model_config_request_model
from service.server.api.errors import install_error_handlers
from service.server.api.guards import KEY_REFUSALS, ApiKeys, BodyLimit, HeavyRequests
from service.server.api.model_schemas import LabelsLog, PredictionsLog
from service.server.api.policy import RequestContext
from service.server.api.routes import (
    calibration,
    comparisons,
    health,
    inference,
    losses,
    metrics,
    model_logs,
    model_reads,
    models,
    pages,
)
from service.server.api.routes.inference import HEADER_LENGTH
from service.server.api.routing import (
    ROUTES_STATE,
    Dispatch,
    Matching,
    Route,
    Routes,
    RouteTable,
    policy_of,
    route_once,
)
from service.server.api.schemas import Problem, evaluate_request_model, loss_request_adapter
from service.server.grpc.server import GrpcServer, serve_grpc
from service.server.monitoring import (
    BatchedStderr,
    Monitor,
    RequestMonitor,
    access_log,
    forget_killed_workers,
    mark_worker_dead,
    start_otlp_export,
)
from service.store import Store, redacted
from service.usecases.upkeep import compare_forever, estimate_forever, store_threads, sweep_forever

log = logging.getLogger("service.app")

DESCRIPTION = """Per-sample and mean losses for batches of predictions and labels, computed exactly as
Keras (`convention: keras`) or PyTorch (`convention: torch`) compute them, in float64 or float32.
Errors are RFC 9457 problem details naming the field, index and reason."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    forget_killed_workers()
    settings: Settings = app.state.settings
    _log_authentication(app.state.keys, settings)
    app.state.store = await anyio.to_thread.run_sync(_open_store, settings)
    health = app.state.store.database.health
    health.listeners.append(app.state.monitor.set_store_status)
    app.state.monitor.set_store_status(health.status)  # a store may start full (space.py)
    background = _start_background_tasks(app, settings)
    # The loss requests' validator (a union of every loss's model, ~0.1 s of CPU to build) is built
    # before the worker is ready, not by its first /v1/loss or inference request.
    await anyio.to_thread.run_sync(loss_request_adapter)
    # Everything alive at this point (modules, the app, its schemas) lives as long as the worker:
    # frozen out of the collector's generations, its ~110,000 objects are never walked by a full collection.
    gc.freeze()
    grpc_server = await serve_grpc(app)  # None unless LOSS_SERVICE_GRPC_PORT
    app.state.otlp = otlp = await anyio.to_thread.run_sync(start_otlp_export, app.state.monitor)  # None: no endpoint
    app.state.lifecycle = "ready"
    restore_signals = _drain_on_stop_signal(app, grpc_server)
    try:
        # Lifespan state, which uvicorn hands its connections' protocol too (protocol.py).
        yield {ROUTES_STATE: app.state.routes}
    finally:
        app.state.lifecycle = "draining"
        restore_signals()
        if grpc_server is not None:
            await grpc_server.stopped()  # RPCs under way finish, up to LOSS_SERVICE_SHUTDOWN_TIMEOUT
        for task in background:
            task.cancel()
        app.state.store.close()
        if otlp is not None:  # the last export, after the last request was counted
            await anyio.to_thread.run_sync(otlp.shutdown, settings.otlp_shutdown_timeout)
        mark_worker_dead(os.getpid())
        _flush_access_log()  # the requests are drained: their access lines are the last


def _start_background_tasks(app: FastAPI, settings: Settings) -> list[asyncio.Task[None]]:
    """The worker's upkeep on its event loop (sweeping expired rows, comparing, estimating,
    watching the keys file), started in that order; the lifespan cancels them when it ends."""
    state = app.state
    return [
        asyncio.create_task(
            sweep_forever(
                state.store, state.monitor, settings.sweep_interval, store_threads(state), state.keys, settings
            )
        ),
        asyncio.create_task(
            compare_forever(state.store, state.monitor, settings.compare_interval, store_threads(state))
        ),
        asyncio.create_task(
            estimate_forever(
                state.store, state.monitor, settings.estimate_interval, store_threads(state), settings.estimate_cohort
            )
        ),
        asyncio.create_task(_watch_keys(state.keys, state.monitor)),
    ]


def _flush_access_log() -> None:
    """Write out the batched access lines: a worker under --workers exits without running atexit,
    so logging's own flush at exit never comes."""
    for handler in access_log.handlers:
        handler.flush()


def _log_authentication(keys: KeyRing, settings: Settings) -> None:
    """Say at start whether /v1 and /v2 need a key, so that a service open to anyone is never a surprise."""
    if keys.enabled:
        metrics = ", and /metrics" if settings.metrics_auth else ""
        log.warning("authentication is on: /v1 and /v2%s need one of %d API keys", metrics, len(keys.names()))
    else:
        log.warning("authentication is off: anyone who reaches this service may call /v1 and /v2")


async def _watch_keys(keys: KeyRing, monitor: Monitor, interval: float = 1.0) -> None:
    """Reload the keys file on SIGHUP and whenever it changes on disk (checked every `interval`).

    A file that cannot be used keeps the keys in force; `loss_service_api_keys_reload_failed`
    says so until a reload succeeds. The reload reads the file in a thread of its own (a
    limiter of one), never waiting for a thread behind requests, whatever they wait on.
    """
    if keys.file is None:
        return
    reloading = anyio.CapacityLimiter(1)
    hangup = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
    try:
        while True:
            monitor.set_keys(len(keys.names()), keys.reload_failed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hangup.wait(), interval)
            if hangup.is_set() or keys.changed_on_disk():
                hangup.clear()
                await anyio.to_thread.run_sync(keys.reload, limiter=reloading)
    finally:
        if threading.current_thread() is threading.main_thread():
            loop.remove_signal_handler(signal.SIGHUP)


def _open_store(settings: Settings) -> Store:
    try:
        return Store.open(
            settings.store_url, settings.store_connections, settings.store_timeout, settings.store_reserve_bytes
        )
    except Exception as exc:
        # The URL may hold a password: the log names it without.
        log.error("cannot open the store at %s: %s", redacted(settings.store_url), exc)
        raise


def _drain_on_stop_signal(app: FastAPI, grpc_server: GrpcServer | None = None) -> Callable[[], None]:
    """Turn /readyz to 503 the moment SIGTERM or SIGINT arrives, then let the server shut down;
    the gRPC server, if any, stops taking RPCs then too and drains those under way.

    uvicorn installs its own handlers before the lifespan starts and drains in-flight requests
    (up to LOSS_SERVICE_SHUTDOWN_TIMEOUT) before the lifespan ends; chaining onto its handlers
    lets load balancers see the worker leave before its listening socket closes.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_stop(sig: int, frame: FrameType | None) -> None:
        app.state.lifecycle = "draining"
        if grpc_server is not None:
            grpc_server.stop_soon()
        handler = previous[signal.Signals(sig)]
        if callable(handler):
            handler(sig, frame)

    for sig in previous:
        signal.signal(sig, on_stop)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for `settings`; without them, for the `LOSS_SERVICE_*` environment, read now (uvicorn
    calls it so in each worker: `service.server.app:create_app` with `factory=True`)."""
    settings = settings or Settings()
    app = FastAPI(
        title="loss-service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # A redirect to the slash-less path is built from the request's Host header: a client
        # could be sent anywhere. A path with a trailing slash is a 404 instead.
        redirect_slashes=False,
        # Served by routes/pages.py from bundled assets: FastAPI's own pages load theirs from a CDN.
        docs_url=None,
        redoc_url=None,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.lifecycle = "starting"
    app.state.monitor = Monitor(settings)
    set_threads(settings.engine_threads or max(1, available_cores() // settings.workers))
    install_error_handlers(app)
    groups = _add_routes(app)
    _add_guards(app, settings, groups)
    _log_to_stderr(settings)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _add_routes(app: FastAPI) -> tuple[Routes, ...]:
    """Every group's routes into the app's own list, in the order they are tried; the groups, whose
    unmatched paths `Matching` needs."""
    # The routes join the app's own list instead of `include_router`: FastAPI 0.165 keeps an
    # included router as one nested route and walks its routes twice per request (to match, then
    # to dispatch). Routes are tried in order: the computations (POSTs called directly) first.
    groups = (
        inference.routes,
        losses.routes,
        calibration.routes,
        models.routes,
        model_logs.routes,
        model_reads.routes,
        comparisons.routes,
        health.routes,
        metrics.routes,
        pages.routes,
    )
    for group in groups:
        app.router.routes.extend(group.routes)
    app.router.routes.sort(key=lambda route: not (_direct(route) and "POST" in getattr(route, "methods", ())))
    pages.mount_assets(app)
    route_once(app.router)  # the router takes the route `Matching` found
    return groups


def _add_guards(app: FastAPI, settings: Settings, groups: tuple[Routes, ...]) -> None:
    """The middleware around the routes, innermost first, and the API keys the key guard reads:
    each request is matched once, checked by the guards, and counted by the request monitor."""
    # Outermost last: the request monitor sees everything, the guards' refusals included.
    app.add_middleware(Dispatch, exception_handlers=app.exception_handlers)
    app.add_middleware(
        HeavyRequests,
        limit=settings.max_concurrent,
        timeout=settings.request_timeout,
        memory_budget=settings.memory_budget,
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.state.keys = KeyRing(settings.api_keys or [], settings.api_keys_file)
    app.state.monitor.set_keys(len(app.state.keys.names()), False)  # their number splits the model labels
    app.add_middleware(ApiKeys, keys=app.state.keys, protect_metrics=settings.metrics_auth)
    app.state.routes = RouteTable(app.router, groups)
    app.add_middleware(Matching, table=app.state.routes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            # A browser asks before it sends a key or a body type of ours; without these, it never does.
            allow_headers=["Authorization", "Content-Type", "Content-Encoding", "X-Request-ID", HEADER_LENGTH],
            expose_headers=["X-Request-ID", "Retry-After", HEADER_LENGTH],
        )
    app.add_middleware(RequestMonitor, monitor=app.state.monitor, context=RequestContext)


def _direct(route: Any) -> bool:
    return isinstance(route, Route) and route.call is not None


def _log_to_stderr(settings: Settings) -> None:
    """Access lines go to stderr as JSON, one per request, in batches (uvicorn's own access log is off)."""
    if not access_log.handlers:
        handler = BatchedStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.propagate = False
    access_log.setLevel(logging.INFO if settings.log_level in ("info", "debug") else logging.WARNING)


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
        ("CalibrationRequest", CalibrationRequest.model_json_schema(ref_template=template)),
        ("ModelConfigRequest", model_config_request_model().model_json_schema(ref_template=template)),
        ("PredictionsLog", PredictionsLog.model_json_schema(ref_template=template)),
        ("LabelsLog", LabelsLog.model_json_schema(ref_template=template)),
        ("Problem", Problem.model_json_schema(ref_template=template)),
    ):
        components.update(body.pop("$defs", {}))
        components[name] = body
    _document_key_refusals(schema, app.routes)
    app.openapi_schema = schema
    return schema


def _document_key_refusals(schema: dict[str, Any], routes: list[Any]) -> None:
    """Every route whose policy may need an API key may answer 401, 403 and 429 (the ApiKeys
    guard), in its policy's dialect: problem details, or `{"error"}` on the OIP routes."""
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    oip_error = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
    paths = schema.get("paths", {})
    for route in routes:
        policy = policy_of(route)
        operations = paths.get(getattr(route, "path_format", None), {})
        if not policy.needs_key(protect_metrics=True):
            continue
        content = oip_error if policy.dialect == "oip" else problem
        for method in sorted(getattr(route, "methods", None) or ()):
            operation = operations.get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for status, description in KEY_REFUSALS.items():
                responses.setdefault(str(status), {"description": description, "content": content})
