"""Routes declare their policy beside their path, and that policy alone decides a request's key,
scope, model, heaviness and error dialect; one route class serves endpoints directly where
FastAPI's dependency solving would change nothing, and through FastAPI where it would. A path with a
trailing slash is a 404, never a redirect to the host the client named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel

from service.config import Settings
from service.server.api.access import digest
from service.server.api.policy import RequestContext, RoutePolicy, context_of
from service.server.api.routing import Dispatch, Matching, Route, Routes, RouteTable, route_once
from service.server.app import create_app
from service.server.monitoring import CONTEXT
from tests.apps import MakeApp
from tests.guarded import BODY

pytestmark = pytest.mark.anyio


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


async def direct(name: str, request: Request) -> Response:
    return Response(name)


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
def test_an_endpoint_that_needs_fastapis_solving_is_served_by_fastapi(path: str, endpoint: Any) -> None:
    assert Route(path, endpoint, methods=["GET"]).call is None
    assert Route("/x/{name}", direct, methods=["GET"]).call is not None


def routed_app(routes: Routes) -> FastAPI:
    """An app with `routes`, the matcher and the dispatcher, as `create_app` assembles them."""

    async def on_lookup(request: Request, exc: Exception) -> Response:
        return Response(f"handled: {exc}", status_code=409)

    app = FastAPI()
    app.router.routes.extend(routes.routes)
    app.add_exception_handler(LookupError, on_lookup)
    route_once(app.router)
    app.add_middleware(Dispatch, exception_handlers=app.exception_handlers)
    app.add_middleware(Matching, table=RouteTable(app.router, [routes]))
    return app


async def test_a_request_is_matched_once_and_served_directly_or_by_fastapi(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = Routes("/r")

    @routes.post("/{name}", policy=RoutePolicy())
    async def echo(name: str, request: Request) -> Response:
        if name == "raise":
            raise KeyError("by the handler of its base class")
        return Response(f"direct {name} {request.scope['route'].path}")

    @routes.get("/{name}", policy=RoutePolicy())
    async def solved(name: str, limit: int = 1) -> dict[str, Any]:
        return {"name": name, "limit": limit}

    app = routed_app(routes)
    walks = []
    real = Route.matches

    def counted(self: Route, scope: Any) -> Any:
        walks.append(self.path)
        return real(self, scope)

    monkeypatch.setattr(Route, "matches", counted)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client:
        assert (await client.post("/r/a%20b")).text == "direct a b /r/{name}"
        assert walks == ["/r/{name}"]  # once, by the matcher
        assert (await client.get("/r/x", params={"limit": 3})).json() == {"name": "x", "limit": 3}
        handled = await client.post("/r/raise")
        assert (handled.status_code, handled.text) == (409, "handled: 'by the handler of its base class'")
        assert (await client.put("/r/x")).status_code == 405
        assert (await client.get("/elsewhere")).status_code == 404


KEYS = {
    "reader": ("reader-key-0123456789", ["read"], '["fraud-*"]'),
    "computer": ("computer-key-01234567", ["compute"], None),
}


@pytest.fixture
async def keyed_app(make_app: MakeApp, tmp_path: Path) -> tuple[FastAPI, httpx.AsyncClient]:
    tables = []
    for name, (key, scopes, models) in KEYS.items():
        lines = [
            "[[keys]]",
            f'name = "{name}"',
            f'key_sha256 = "{digest(key)}"',
            f"scopes = {scopes!r}".replace("'", '"'),
        ]
        if models:
            lines.append(f"models = {models}")
        tables.append("\n".join(lines))
    (tmp_path / "keys.toml").write_text("\n\n".join(tables) + "\n")
    settings = Settings(
        api_keys_file=str(tmp_path / "keys.toml"), store_url=f"sqlite:///{tmp_path}/s.sqlite3", max_concurrent=1
    )
    client = await make_app(settings)
    return client.app, client


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name][0]}"}


async def test_a_new_route_gets_its_guards_from_the_policy_declared_beside_it(
    keyed_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    """Two routes no table in the guards knows of, declared as a new module would declare them:
    their policies alone decide who may call, which model, heaviness and the shape of refusals."""
    app, client = keyed_app
    routes = Routes("/v1/models")
    seen: list[RequestContext] = []

    @routes.get("/{model}/history", policy=RoutePolicy(scope="read", model_param="model"))
    async def history(model: str, request: Request) -> Response:
        seen.append(context_of(request.scope))
        return Response(model)

    @routes.post("/{model}/replay", policy=RoutePolicy(scope="compute", heavy=True, dialect="oip"))
    async def replay(model: str, request: Request) -> Response:
        await request.body()
        seen.append(context_of(request.scope))
        return Response("replayed")

    app.router.routes[:0] = routes.routes
    history_path, replay_path = "/v1/models/fraud-1/history", "/v1/models/fraud-1/replay"
    assert (await client.get(history_path)).headers["content-type"] == "application/problem+json"  # 401
    assert (await client.get(history_path)).status_code == 401
    assert (await client.get(history_path, headers=auth("computer"))).status_code == 403  # no read scope
    refused = await client.get("/v1/models/churn-1/history", headers=auth("reader"))
    assert "may not use model 'churn-1'" in refused.json()["detail"]  # the model its path names
    assert (await client.get(history_path, headers=auth("reader"))).text == "fraud-1"
    assert seen[-1].slot is None  # not heavy
    assert seen[-1].key == "reader"
    unauthorized = await client.post(replay_path, content=b"{}")
    assert (unauthorized.status_code, set(unauthorized.json())) == (401, {"error"})  # its dialect
    assert (await client.post(replay_path, content=b"{}", headers=auth("reader"))).json() == {
        "error": "the API key 'reader' lacks the scope 'compute' this route needs"
    }
    assert (await client.post(replay_path, content=b"{}", headers=auth("computer"))).text == "replayed"
    assert seen[-1].slot is not None  # heavy: a slot was claimed once its body was in


async def test_paths_no_route_answers_take_their_groups_unmatched_policy(
    keyed_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = keyed_app
    assert (await client.get("/v1/nothing")).status_code == 401
    assert (await client.get("/v1/nothing", headers=auth("reader"))).status_code == 404
    assert set((await client.get("/v2/nothing")).json()) == {"error"}  # 401 in the protocol's shape
    assert (await client.get("/v2/health/nothing")).status_code == 404  # open
    assert (await client.get("/nothing")).status_code == 404  # no group: open


async def test_the_context_lives_in_the_scope_the_monitor_made() -> None:
    app = create_app(Settings())
    seen: list[Any] = []
    routes = Routes()

    @routes.get("/probe", policy=RoutePolicy(key="none"))
    async def endpoint(request: Request) -> Response:
        seen.append(request.scope[CONTEXT])
        return Response("ok")

    app.router.routes[:0] = routes.routes
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as client:
        assert (await client.get("/probe")).text == "ok"
    assert isinstance(seen[0], RequestContext)
    assert seen[0].matched
    assert seen[0].policy.key == "none"


async def test_a_trailing_slash_is_not_redirected_to_the_host_the_client_named(limited: httpx.AsyncClient) -> None:
    response = await limited.post("/v1/loss/", json=BODY, headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers


def test_each_declaration_makes_one_route_of_its_method_with_its_policy_and_options() -> None:
    """`Routes.get/post/put/delete` each add one `Route` for its own method under the prefix, with
    the policy and FastAPI's options given beside it (declared here, at test time, so every
    step of the declaration runs under the test)."""
    methods = ["GET", "POST", "PUT", "DELETE"]
    policies = {method: RoutePolicy(scope=scope) for method, scope in zip(methods, SCOPES, strict=True)}
    routes = Routes("/v9", tags=["tagged"], unmatched=[("/{rest:path}", RoutePolicy())])
    for method, policy in policies.items():
        declare = getattr(routes, method.lower())

        @declare(f"/{method.lower()}/{{name}}", policy=policy, summary=f"the {method} route", status_code=202)
        async def endpoint(name: str, request: Request) -> Response:
            return Response(name)

    assert [(r.path, r.methods, r.policy, r.summary, r.status_code, r.tags) for r in routes.routes] == [
        (f"/v9/{m.lower()}/{{name}}", {m}, policies[m], f"the {m} route", 202, ["tagged"]) for m in policies
    ]
    assert all(isinstance(r, Route) and r.call is not None for r in routes.routes)  # served directly
    ((pattern, policy),) = routes.unmatched
    assert (pattern.match("/v9/anything/else") is not None, pattern.match("/v8/x"), policy) == (
        True,
        None,
        RoutePolicy(),
    )


SCOPES = ("read", "compute", "ingest", "admin")
