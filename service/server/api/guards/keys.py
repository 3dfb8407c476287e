"""The API key guard: who may call, with which scopes and models, how often."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.server.api.access import KeyRing, audit, retry_after
from service.server.api.guards.refusals import refuse, refused
from service.server.api.headers import request_header
from service.server.api.policy import context_of
from service.server.api.problems import shown


class ApiKeys:
    """Bearer API keys on the routes whose policy needs one (and /metrics if asked); open routes
    (health endpoints, pages) stay open.

    A valid key must hold the scope its route's policy names and may name only its models in the
    path (the policy's `model_param`); its requests-per-second bucket is taken from here. A
    request no route answers is refused without a key as its route group says, and otherwise
    passes on to its 404 or 405. Models named in a body, and the values a body carries, are
    checked once the route has parsed it (`access.authorize`).
    """

    def __init__(self, app: ASGIApp, keys: KeyRing, protect_metrics: bool) -> None:
        self.app = app
        self.keys = keys
        self.protect_metrics = protect_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled:
            await self.app(scope, receive, send)
            return
        context = context_of(scope)
        policy = context.policy
        if not policy.needs_key(self.protect_metrics):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        header = request_header(scope, b"authorization") or ""
        scheme, _, token = header.partition(" ")
        principal = self.keys.match(token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            challenge = 'Bearer realm="loss-service"' + ("" if not header else ', error="invalid_token"')
            detail = "an API key is required: Authorization: Bearer <key>" if not header else "the API key is not valid"
            audit(401, "unknown", path, None, "missing_key" if not header else "invalid_key")
            await refuse(send, refused(401, detail, {"WWW-Authenticate": challenge}), scope)
            return
        context.key = principal.name
        if not context.matched:
            await self.app(scope, receive, send)
            return
        needed, model = policy.scope, context.path_model()
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
            reason, context.refusal = "requests_rate", "rate_limited"
        if refusal is not None:
            audit(refusal.status, principal.name, path, model, reason)
            await refuse(send, refusal, scope)
            return
        context.principal = principal
        await self.app(scope, receive, send)
