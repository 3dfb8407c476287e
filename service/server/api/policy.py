"""What each route declares it needs (`RoutePolicy`), and what one request carries on its way
through the guards to its route (`RequestContext`).

A route states its policy beside its path (`routing.Routes`); the guards read the policy of the
route the request matched, never the request's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from starlette.routing import BaseRoute
from starlette.types import Scope as AsgiScope

from service.server.api.access import Principal, Scope
from service.server.monitoring import CONTEXT

Dialect = Literal["problem", "oip"]  # RFC 9457 problem details, or the Open Inference Protocol's {"error"}
KeyNeed = Literal["required", "none", "metrics_auth"]  # "metrics_auth": as LOSS_SERVICE_METRICS_AUTH says


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What a route needs before its endpoint runs.

    `key`: whether an API key is needed ("none": the route is open, as health probes and pages
    are). `scope`: the key's scope the route needs (None: any valid key). `heavy`: the request
    claims one of the worker's slots once its body is in, and holds its memory estimate from the
    worker's budget (`guards.HeavyRequests`). `dialect`: the shape of its refusals and errors.
    `model_param`: the path parameter that names a model the key must be allowed to use.
    """

    scope: Scope | None = None
    heavy: bool = False
    dialect: Dialect = "problem"
    key: KeyNeed = "required"
    model_param: str | None = None

    def needs_key(self, protect_metrics: bool) -> bool:
        return self.key == "required" or (self.key == "metrics_auth" and protect_metrics)


OPEN = RoutePolicy(key="none")  # what a path that no route and no group claims gets
KEYED = RoutePolicy()  # any valid key; what a route declared without a policy gets


class Slot(Protocol):
    """A heavy request's claim on the worker's bounds (`guards.slots.Slot`)."""

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def reserve(self, nbytes: int, purpose: str) -> None: ...


@dataclass(slots=True)
class RequestContext:
    """One request's way through the guards: the route it matched (once, by `routing.Match`) and
    its policy, then what the guards and the route found: the key, the slot, and the model, loss
    and batch size the access log reports, and why it was refused (for the metrics)."""

    route: BaseRoute | None = None
    policy: RoutePolicy = OPEN
    matched: bool = False  # a full match; a route that matched the path only answers 405
    child: AsgiScope | None = None  # what the match adds to the scope (endpoint, path parameters)
    principal: Principal | None = None
    key: str | None = None
    slot: Slot | None = None
    model: str | None = None
    loss: str | None = None
    batch_size: int | None = None
    refusal: str | None = None

    def path_params(self) -> dict[str, Any]:
        params: dict[str, Any] = (self.child or {}).get("path_params", {})
        return params

    def path_model(self) -> str | None:
        """The model the route's path names (its policy's `model_param`), if any."""
        name = self.policy.model_param
        return None if name is None or not self.matched else self.path_params().get(name)


def context_of(scope: AsgiScope) -> RequestContext:
    """The request's context (made by `RequestMonitor`; made here for a guard called alone)."""
    context = scope.get(CONTEXT)
    if not isinstance(context, RequestContext):
        context = scope[CONTEXT] = RequestContext()
    return context
