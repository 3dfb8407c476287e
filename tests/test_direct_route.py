"""DirectRoute calls its endpoint without dependency solving, so it takes only endpoints for which
that changes nothing, and refuses the others when the route is declared."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel

from service.api.direct import DirectRoute


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


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/q", needs_query),
        ("/b", needs_body),
        ("/d", needs_dependency),
        ("/r/{name}", returns_a_dict),
        ("/s", not_a_coroutine),
        ("/t/{number}", typed_path),
    ],
)
def test_an_endpoint_that_needs_fastapis_solving_is_refused_at_declaration(path: str, endpoint: Any) -> None:
    with pytest.raises(TypeError, match="a DirectRoute endpoint takes only the Request and str path parameters"):
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
