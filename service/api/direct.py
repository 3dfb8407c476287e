"""A route class for the endpoints that carry the traffic: called without dependency solving."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

from fastapi import Request, Response
from fastapi.routing import APIRoute


class DirectRoute(APIRoute):
    """An APIRoute whose endpoint takes the `Request` and string path parameters, and returns a
    `Response`: FastAPI builds its OpenAPI entry as for any route, but each request calls the
    endpoint directly instead of solving its dependencies (in-process, a 32 x 10 /v1/loss request
    took ~177 us solved and ~162 us called directly).

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

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint, request_name = self.endpoint, self.dependant.request_param_name

        async def handle(request: Request) -> Response:
            arguments = dict(request.path_params)
            if request_name is not None:
                arguments[request_name] = request
            response: Response = await endpoint(**arguments)
            return response

        return handle
