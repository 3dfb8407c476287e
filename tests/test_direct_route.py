"""DirectRoute calls its endpoint without dependency solving, so it takes only endpoints for which
that changes nothing, and refuses the others when the route is declared."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel

from service.api.direct import DirectDispatch, DirectRoute


class Body(BaseModel):
    x: int


async def needs_query(limit: int) -> Response:
    return Response()


async def needs_body(body: Body) -> Response:
    return Response()


async def needs_dependency(value: Any = Depends(lambda: 1)) -> Response:  # noqa: B008 - FastAPI's idiom
    return Response()


async def returns_a_dict(name: str) -> dict[str, str]:
    return {"name": name}


def not_a_coroutine(request: Request) -> Response:
    return Response()


async def typed_path(number: int) -> Response:
    return Response()


async def returns_a_number(request: Request) -> int:
    return 1


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/q", needs_query),
        ("/b", needs_body),
        ("/d", needs_dependency),
        ("/r/{name}", returns_a_dict),
        ("/s", not_a_coroutine),
        ("/t/{number}", typed_path),
        ("/n", returns_a_number),
    ],
)
def test_an_endpoint_that_needs_fastapis_solving_is_refused_at_declaration(path: str, endpoint: Any) -> None:
    expected = "a DirectRoute endpoint takes only the Request and str path parameters and returns a Response$"
    with pytest.raises(TypeError, match=expected):
        DirectRoute(path, endpoint, methods=["GET"])


@pytest.mark.anyio
async def test_the_endpoint_gets_its_path_parameters_and_the_request() -> None:
    async def echo(first: str, second: str, request: Request) -> Response:
        return Response(f"{first}/{second}/{request.method}")

    app = FastAPI()
    app.router.routes.append(DirectRoute("/echo/{first}/{second}", echo, methods=["POST"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client:
        assert (await client.post("/echo/a/b%20c")).text == "a/b c/POST"
    assert "/echo/{first}/{second}" in app.openapi()["paths"]


class RefusedError(Exception):
    pass


class RefusedHereError(RefusedError):
    pass


def dispatched_app() -> FastAPI:
    """A DirectRoute shadowed in the router by an ordinary route on the same path: the router
    would answer "router", the dispatcher answers "direct"."""

    async def direct(request: Request) -> Response:
        kind = request.query_params.get("raise")
        if kind == "handled":
            raise RefusedHereError("by the handler of its base class")
        if kind == "unhandled":
            raise LookupError("nobody handles this")
        return Response(f"direct {request.scope['route'].path}")

    async def on_refused(request: Request, exc: Exception) -> Response:
        return Response(f"handled: {exc}", status_code=409)

    async def on_anything(request: Request, exc: Exception) -> Response:
        return Response("the app's 500", status_code=500)

    app = FastAPI()
    app.add_api_route("/work", lambda: Response("router"), methods=["POST", "GET"])
    app.router.routes.append(DirectRoute("/work", direct, methods=["POST"]))
    app.add_exception_handler(RefusedError, on_refused)
    app.add_exception_handler(Exception, on_anything)
    app.add_middleware(DirectDispatch, router=app.router, exception_handlers=app.exception_handlers)
    return app


@pytest.mark.anyio
async def test_a_post_a_direct_route_answers_goes_to_it_without_the_router() -> None:
    transport = httpx.ASGITransport(app=dispatched_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://d") as client:
        assert (await client.post("/work")).text == "direct /work"
        assert (await client.get("/work")).text == "router"  # not a POST: the router's
        assert (await client.post("/elsewhere")).status_code == 404  # no route: the router's 404
        handled = await client.post("/work", params={"raise": "handled"})
        assert (handled.status_code, handled.text) == (409, "handled: by the handler of its base class")
        unhandled = await client.post("/work", params={"raise": "unhandled"})
        assert (unhandled.status_code, unhandled.text) == (500, "the app's 500")


@pytest.mark.anyio
async def test_an_exception_without_a_handler_of_its_own_goes_on_to_the_outermost_layer() -> None:
    # As on the router's path: ServerErrorMiddleware answers with the app's 500 handler and
    # re-raises, so that the server logs it.
    transport = httpx.ASGITransport(app=dispatched_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://d") as client:
        with pytest.raises(LookupError, match="nobody handles this"):
            await client.post("/work", params={"raise": "unhandled"})


@pytest.mark.anyio
async def test_an_app_without_a_catch_all_handler_is_dispatched_all_the_same() -> None:
    async def refused(request: Request) -> Response:
        raise RefusedError("no")

    app = FastAPI()
    app.router.routes.append(DirectRoute("/work", refused, methods=["POST"]))
    app.add_middleware(DirectDispatch, router=app.router, exception_handlers={})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client:
        with pytest.raises(RefusedError):
            await client.post("/work")
