"""The API key guard: who may call, with which scopes and models, how often."""

from __future__ import annotations

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.access import PRINCIPAL, KeyRing, audit, path_model, required_scope, retry_after
from service.api.guards.prefixes import PROTECTED_PREFIXES
from service.api.guards.refusals import refuse, refused
from service.api.headers import request_header
from service.api.problems import shown


class ApiKeys:
    """Bearer API keys on /v1 and /v2 (and /metrics if asked); health endpoints stay open.

    A valid key must hold the scope its route needs and may name only its models in the path;
    its requests-per-second bucket is taken from here. Models named in a body, and the values a
    body carries, are checked once the route has parsed it (`access.authorize`).
    """

    def __init__(self, app: ASGIApp, keys: KeyRing, protect_metrics: bool, router: Router) -> None:
        self.app = app
        self.keys = keys
        self.protect_metrics = protect_metrics
        self.router = router

    def _routed(self, scope: Scope) -> bool:
        """A route answers this method at this path; otherwise the router's 404 or 405 is the answer."""
        return any(route.matches(scope)[0] == Match.FULL for route in self.router.routes)

    def _protected(self, path: str) -> bool:
        if path.startswith("/v2/health/"):
            return False  # probes stay open, as /livez and /readyz do
        return path.startswith(PROTECTED_PREFIXES) or (self.protect_metrics and path == "/metrics")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        path, state = scope["path"], scope.setdefault("state", {})
        header = request_header(scope, b"authorization") or ""
        scheme, _, token = header.partition(" ")
        principal = self.keys.match(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            challenge = 'Bearer realm="loss-service"' + ("" if not header else ', error="invalid_token"')
            detail = "an API key is required: Authorization: Bearer <key>" if not header else "the API key is not valid"
            audit(401, "unknown", path, None, "missing_key" if not header else "invalid_key")
            await refuse(send, refused(401, detail, {"WWW-Authenticate": challenge}), scope)
            return
        state["key"] = principal.name
        if not self._routed(scope):
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], path)
        model = path_model(path)
        refusal = None
        if needed is not None and needed not in principal.scopes:
            refusal = refused(403, f"the API key {principal.name!r} lacks the scope {needed!r} this route needs")
            reason = "scope"
        elif model is not None and not principal.may_use(model):
            refusal = refused(403, f"the API key {principal.name!r} may not use model {shown(model)}")
            reason = "model"
        elif principal.requests is not None and (wait := principal.requests.take(1)):
            rate = f"{principal.requests.rate:g}"
            refusal = refused(429, f"the API key {principal.name!r} is over its {rate} requests per second", None)
            refusal.headers = {"Retry-After": retry_after(wait)}
            reason, state["refusal"] = "requests_rate", "rate_limited"
        if refusal is not None:
            audit(refusal.status, principal.name, path, model, reason)
            await refuse(send, refusal, scope)
            return
        state[PRINCIPAL] = principal
        await self.app(scope, receive, send)
