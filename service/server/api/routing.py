"""One route class, one matcher, one dispatcher: each route declares its policy beside its path,
a request is matched once, before the guards, and handed to its route after them.

`Routes` declares routes (`@routes.post(path, policy=..., **openapi)`) and, for the paths under
its prefix that none of its routes answer, the policy of their 404 (`unmatched`). `Match`, the
outermost of the guards, walks the app's routes once and puts the route it found and its policy
in the request's context. `Dispatch`, the innermost, calls a route whose endpoint needs nothing
of FastAPI's dependency solving straight away; FastAPI's exception middleware and router handle
the others, and the router takes the route from the context instead of walking its list again.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, get_type_hints

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from fastapi.telemetry._api import _route_selected
from starlette._utils import get_route_path
from starlette.routing import BaseRoute, Match, Mount, Router, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.server.api.policy import KEYED, OPEN, Dialect, RequestContext, RoutePolicy, context_of
from service.server.monitoring import CONTEXT

Endpoint = Callable[..., Any]


class Route(APIRoute):
    """A FastAPI route with its `policy`. An endpoint that takes only the `Request` and `str`
    path parameters and returns a `Response` is called directly (`call`), without dependency
    solving, which costs a small request more than the call does; FastAPI's handler serves any
    other endpoint as usual."""

    def __init__(self, path: str, endpoint: Endpoint, *, policy: RoutePolicy = KEYED, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.policy = policy
        self.call: Callable[[Request], Coroutine[Any, Any, Response]] | None = None
        if _callable_directly(self, endpoint):
            self.call = self._direct_handler()

    def _direct_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint, request_name = self.endpoint, self.dependant.request_param_name

        async def handle(request: Request) -> Response:
            arguments = dict(request.path_params)
            if request_name is not None:
                arguments[request_name] = request
            response: Response = await endpoint(**arguments)
            return response

        return handle


def _callable_directly(route: APIRoute, endpoint: Endpoint) -> bool:
    dependant = route.dependant
    others = (
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.body_params,
        dependant.dependencies,
    )
    # A path parameter FastAPI would validate (a pattern, another type) needs its handler.
    plain_path = all(
        param.field_info.annotation is str and not param.field_info.metadata for param in dependant.path_params
    )
    returns = get_type_hints(endpoint).get("return")
    responds = isinstance(returns, type) and issubclass(returns, Response)
    return not any(others) and plain_path and responds and inspect.iscoroutinefunction(endpoint)


class Routes:
    """Routes declared with their policies, under one prefix: `@routes.get(path, policy=...)`.

    `unmatched`: (path template under the prefix, policy) pairs for paths no route answers, in
    order, e.g. `("/{rest:path}", RoutePolicy())`: their 404 is refused without a key first.
    """

    def __init__(self, prefix: str = "", *, unmatched: Iterable[tuple[str, RoutePolicy]] = (), **kwargs: Any) -> None:
        self.router = APIRouter(prefix=prefix, route_class=Route, **kwargs)
        self.unmatched = [(compile_path(prefix + path)[0], policy) for path, policy in unmatched]

    @property
    def routes(self) -> list[BaseRoute]:
        return self.router.routes

    def route(self, method: str, path: str, policy: RoutePolicy, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        def declare(endpoint: Endpoint) -> Endpoint:
            self.router.add_api_route(path, endpoint, methods=[method], **kwargs)
            route = self.router.routes[-1]
            assert isinstance(route, Route)
            route.policy = policy
            return endpoint

        return declare

    def get(self, path: str, *, policy: RoutePolicy, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("GET", path, policy, **kwargs)

    def post(self, path: str, *, policy: RoutePolicy, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("POST", path, policy, **kwargs)

    def put(self, path: str, *, policy: RoutePolicy, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("PUT", path, policy, **kwargs)

    def delete(self, path: str, *, policy: RoutePolicy, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        return self.route("DELETE", path, policy, **kwargs)


def policy_of(route: BaseRoute) -> RoutePolicy:
    """A route's policy; a route that declares none (a mounted directory of assets) is open."""
    policy: RoutePolicy = getattr(route, "policy", OPEN)
    return policy


# The lifespan state key under which the app hands its RouteTable to the server's protocol, which
# answers requests on connections beyond its limit before the app sees them (protocol.py).
ROUTES_STATE = "loss_service.routes"


class RouteTable:
    """The app's routes in the order they are tried, and the policies of the paths none answers."""

    def __init__(self, router: Router, groups: Iterable[Routes] = ()) -> None:
        self.router = router
        self.unmatched: list[tuple[re.Pattern[str], RoutePolicy]] = [
            pair for group in groups for pair in group.unmatched
        ]

    def match(self, scope: Scope, context: RequestContext) -> None:
        """Walk the routes once, as Starlette's router does: the first full match, else the first
        route that matches the path but not the method (its 405), else the unmatched policy."""
        partial: tuple[BaseRoute, Scope] | None = None
        for route in self.router.routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                context.route, context.child, context.policy, context.matched = route, child, policy_of(route), True
                return
            if match is Match.PARTIAL and partial is None:
                partial = (route, child)
        if partial is not None:
            context.route, context.child = partial
            context.policy = policy_of(partial[0])
            return
        path = get_route_path(scope)
        context.policy = next((policy for pattern, policy in self.unmatched if pattern.match(path)), OPEN)

    def dialect_of(self, scope: Scope) -> Dialect:
        """The error dialect of the route a request's scope matches (as `match` finds it)."""
        context = RequestContext()
        self.match(scope, context)
        return context.policy.dialect


class Matching:
    """The outermost guard: the request's route and policy, found once, into its context."""

    def __init__(self, app: ASGIApp, table: RouteTable) -> None:
        self.app = app
        self.table = table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.table.match(scope, context_of(scope))
        await self.app(scope, receive, send)


class Dispatch:
    """The innermost guard: a matched route that is called directly goes to its endpoint from here,
    and an exception it raises to the app's handler for it; anything else goes on to FastAPI's
    exception middleware and router.

    That path adds, per request, Starlette's exception middleware, FastAPI's two exit stacks for
    dependencies, its route-context lookups and three more layers of wrappers; the answer is the
    same. An exception is handled as Starlette's ExceptionMiddleware handles it before a
    response starts: by the handler registered for the nearest class in its MRO (the app
    registers its handlers by class, none by status code), or not at all: it reaches the
    outermost ServerErrorMiddleware and the app's 500 handler.
    """

    def __init__(self, app: ASGIApp, exception_handlers: Mapping[Any, Any]) -> None:
        self.app = app
        # As Starlette builds its own stack: the handler of 500 / Exception belongs to the
        # outermost ServerErrorMiddleware, which still catches whatever escapes from here.
        self.handlers = {key: value for key, value in exception_handlers.items() if isinstance(key, type)}
        self.handlers.pop(Exception, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = scope.get(CONTEXT)
        if isinstance(context, RequestContext) and context.matched:
            route = context.route
            if isinstance(route, Route) and route.call is not None:
                scope["route"] = route
                scope.update(context.child or {})
                await self._respond(route.call, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _respond(
        self, call: Callable[[Request], Coroutine[Any, Any, Response]], scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = Request(scope, receive)
        try:
            response = await call(request)
        except Exception as exc:
            handler = next((self.handlers[cls] for cls in type(exc).__mro__ if cls in self.handlers), None)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


class Routed:
    """The router's own last step, in place of its walk: the route the context holds handles the
    request (a 405 for a route that matched the path only), and a request no route matched gets
    the router's 404. Lifespan events, and requests that came without a context, take the
    router's usual way."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.walk = router.app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = scope.get(CONTEXT)
        if scope["type"] != "http" or not isinstance(context, RequestContext):
            await self.walk(scope, receive, send)
            return
        scope.setdefault("router", self.router)
        route = context.route
        if route is None:
            await self.router.default(scope, receive, send)
            return
        scope["route"] = route
        scope.update(context.child or {})
        _route_selected(scope=scope, path=getattr(route, "path_format", None), mount=isinstance(route, Mount))
        await route.handle(scope, receive, send)


def route_once(router: Router) -> None:
    """Let the router take each request's route from its context (`Routed`)."""
    router.middleware_stack = Routed(router)
