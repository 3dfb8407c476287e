"""Prometheus exposition, scoped to the models of the API key that scrapes."""

from __future__ import annotations

from collections.abc import Callable

import anyio.to_thread
from fastapi import Request
from fastapi.responses import Response

from service.server.api.access import KeyRing, Principal
from service.server.api.policy import RoutePolicy, context_of
from service.server.api.routing import Routes
from service.server.monitoring import OTHER_MODEL, OTHER_MODEL_OF_KEY, UNLABELLED_MODEL, Monitor

routes = Routes(tags=["monitoring"])
# A key with the metrics scope when LOSS_SERVICE_METRICS_AUTH is on; open otherwise.
METRICS = RoutePolicy(scope="metrics", key="metrics_auth")


@routes.get(
    "/metrics",
    policy=METRICS,
    summary="Prometheus metrics: request health and per-model loss distributions",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format 0.0.4"}},
)
async def metrics(request: Request) -> Response:
    principal = context_of(request.scope).principal
    monitor: Monitor = request.app.state.monitor
    visible, scope = None, None  # every series: no keys, or a key for every model
    if principal is not None and principal.models is not None:
        # Scrapes share a rendering only with scrapes of the same key and patterns (a reload may change them).
        visible, scope = model_filter(principal, request.app.state.keys), (principal.name, principal.models)

    # Rendered in a worker thread, once for all the scrapes (of one key) that arrive meanwhile: with
    # many models it takes long enough (10 MB, ~1 s) to hold liveness probes past their timeout on
    # the event loop.
    body, media_type = await anyio.to_thread.run_sync(monitor.exposition_shared, visible, scope)
    return Response(body, media_type=media_type)


def model_filter(viewer: Principal, keys: KeyRing) -> Callable[[str], bool]:
    """Which `model` label values a key restricted to model patterns may see in /metrics.

    A model's label: when the key may use the model. A key's overflow label `other:<key name>`:
    when every pattern of that key is one of the viewer's (so every model counted there is one the
    viewer may use). `other` and `unlabelled`, which may hold any key's batches: never.
    """
    held = set(viewer.models or ())

    def visible(label: str) -> bool:
        if label in (OTHER_MODEL, UNLABELLED_MODEL):
            return False
        if label.startswith(OTHER_MODEL_OF_KEY):
            owner = keys.principal(label.removeprefix(OTHER_MODEL_OF_KEY))
            return owner is not None and owner.models is not None and held.issuperset(owner.models)
        return viewer.may_use(label)

    return visible
