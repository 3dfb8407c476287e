"""The API key guard (service/server/api/guards/keys.py): which routes need a key, which keys are read,
what the start says, and keys sent across origins."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from tests.api.test_api import problem
from tests.apps import MakeApp, app_client
from tests.guarded import BODY, refusal

pytestmark = pytest.mark.anyio


PROTECTED = [
    ("POST", "/v1/loss"),
    ("POST", "/v1/evaluate"),
    ("GET", "/v1/losses"),
    ("GET", "/v1/losses/mse"),
    ("GET", "/v2"),
    ("GET", "/v2/models/mse"),
    ("POST", "/v2/models/mse/infer"),
]


@pytest.fixture
async def keyed(make_app: MakeApp, tmp_path: Path) -> httpx.AsyncClient:
    key_file = tmp_path / "keys"
    key_file.write_text("first-key\nsecond-key\n")
    return await make_app(api_keys=str(key_file))


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_routes_need_a_valid_key(keyed: httpx.AsyncClient, method: str, path: str) -> None:
    missing = await keyed.request(method, path, json=BODY)
    assert refusal(missing, 401).startswith("an API key is required")
    assert missing.headers["www-authenticate"] == 'Bearer realm="loss-service"'
    # A wrong key, a prefix of a valid one, a valid one extended, another scheme: all refused.
    for header in (
        "Bearer nope",
        "Bearer second-ke",
        "Bearer second-keyX",
        "Bearer first-keysecond-key",
        "Basic second-key",
    ):
        wrong = await keyed.request(method, path, json=BODY, headers={"authorization": header})
        assert refusal(wrong, 401) == "the API key is not valid", header
        assert "invalid_token" in wrong.headers["www-authenticate"]
    right = await keyed.request(method, path, json=BODY, headers={"authorization": "Bearer second-key"})
    assert right.status_code not in (401, 403)
    assert right.status_code < 500, right.text


async def test_health_and_metrics_stay_open_unless_metrics_auth(keyed: httpx.AsyncClient) -> None:
    for path in ("/livez", "/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        assert (await keyed.get(path)).status_code == 200, path
    async with app_client(Settings(api_keys=["k"], metrics_auth=True)) as strict:
        problem(await strict.get("/metrics"), 401)
        assert (await strict.get("/metrics", headers={"authorization": "Bearer k"})).status_code == 200


@pytest.mark.parametrize("setting", ["", ",", " , ", "/run/secrets/no-such-file"])
def test_a_key_setting_that_yields_no_key_stops_the_start(setting: str) -> None:
    """Set to nothing, authentication would silently be off; a missing secrets file would become a
    key itself (`Bearer /run/secrets/...` let in)."""
    with pytest.raises(ValueError, match=r"holds no key|no keys file"):
        Settings(api_keys=setting)  # type: ignore[arg-type]


async def test_comment_lines_in_a_key_file_are_not_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# the fraud team\nfirst-key\n\n   # rotated on 2026-11-01\n")
    caplog.set_level(logging.WARNING)
    async with app_client(Settings(api_keys=str(key_file))) as c:  # type: ignore[arg-type]
        for comment in ("# the fraud team", "#"):
            refusal(await c.post("/v1/loss", json=BODY, headers={"authorization": f"Bearer {comment}"}), 401)
        assert (await c.post("/v1/loss", json=BODY, headers={"authorization": "Bearer first-key"})).status_code == 200
    assert "authentication is on: /v1 and /v2 need one of 1 API keys" in caplog.text
    key_file.write_text("# nothing but comments\n")
    with pytest.raises(ValueError, match="holds no key"):
        Settings(api_keys=str(key_file))  # type: ignore[arg-type]


async def test_the_start_says_when_authentication_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with app_client(Settings()):
        pass
    assert "authentication is off: anyone who reaches this service may call /v1 and /v2" in caplog.text


async def test_a_browser_may_send_a_key_across_origins() -> None:
    async with app_client(Settings(cors_origins=["https://app.example"], api_keys=["k"])) as c:  # type: ignore[arg-type]
        preflight = await c.options(
            "/v1/loss",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed
        answer = await c.post(
            "/v1/loss", json=BODY, headers={"origin": "https://app.example", "authorization": "Bearer k"}
        )
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
