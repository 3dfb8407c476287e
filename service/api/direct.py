"""The endpoints that carry the traffic: routes called without dependency solving, and reached
without the router's walk."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, get_type_hints

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Receive, Scope, Send


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint takes the `Request` and string path parameters, and returns a
    `Response`: FastAPI builds its OpenAPI entry as for any route, but each request calls the
    endpoint directly instead of solving its dependencies, which costs a small request more than
    the call does.

    An endpoint that needs anything else (a query parameter, a body model, a dependency) or
    returns anything else is refused when the route is declared, not served wrongly. A
    `response_model` only documents the response, as for any endpoint that returns a Response.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        others = (
            dependant.query_params,
            dependant.header_params,
            dependant.cookie_params,
            dependant.body_params,
            dependant.dependencies,
        )
        plain_path = all(param.field_info.annotation is str for param in dependant.path_params)
        returns = get_type_hints(endpoint).get("return")
        responds = isinstance(returns, type) and issubclass(returns, Response)
        if any(others) or not plain_path or not responds or not inspect.iscoroutinefunction(endpoint):
            raise TypeError(
                f"{endpoint.__name__}: a DirectRoute endpoint takes only the Request and str path parameters "
                "and returns a Response"
            )
        self.call = self.get_route_handler()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint, request_name = self.endpoint, self.dependant.request_param_name

        async def handle(request: Request) -> Response:
            arguments = dict(request.path_params)
            if request_name is not None:
                arguments[request_name] = request
            response: Response = await endpoint(**arguments)
            return response

        return handle


class DirectDispatch:
    """The innermost middleware: a POST that a `DirectRoute` answers goes to its endpoint from
    here, and an exception it raises to the app's handler for it; anything else goes on to the
    router.

    The router's path adds, per request, Starlette's exception middleware, FastAPI's two exit
    stacks for dependencies, its route-context lookups and three more layers of wrappers. The
    answer is the same: the router tries the POST DirectRoutes first as well (`create_app` sorts
    them first), the route's `matches` fills in the same scope (route, endpoint, path
    parameters), and an exception is handled as Starlette's ExceptionMiddleware handles it
    before a response starts: by the handler registered for the nearest class in its MRO (the
    app registers its handlers by class, none by status code), or not at all: it reaches the
    outermost ServerErrorMiddleware and the app's 500 handler.
    """

    def __init__(self, app: ASGIApp, router: Router, exception_handlers: Mapping[Any, Any]) -> None:
        self.app = app
        self.routes = [
            route for route in router.routes if isinstance(route, DirectRoute) and "POST" in (route.methods or ())
        ]
        # As Starlette builds its own stack: the handler of 500 / Exception belongs to the
        # outermost ServerErrorMiddleware, which still catches whatever escapes from here.
        self.handlers = {key: value for key, value in exception_handlers.items() if isinstance(key, type)}
        self.handlers.pop(Exception, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await self._respond(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _respond(self, route: DirectRoute, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await route.call(request)
        except Exception as exc:
            handler = next((self.handlers[cls] for cls in type(exc).__mro__ if cls in self.handlers), None)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)
