"""Log lines a client can put text into: the audit line of a refusal, the access line, the line of an
unexpected error. Each stays one line that parses (JSON lines as JSON, whatever the decoded path holds:
CR, LF, quotes, backslashes), and every name echoed in a line or a problem detail is clipped."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from service.config import Settings
from service.server.api.access import AccessRefusedError, Principal, audit, authorize, digest
from service.server.api.problems import clipped, shown
from service.server.api.routes import losses as losses_routes
from service.server.app import create_app
from tests.apps import MakeApp

pytestmark = pytest.mark.anyio
FRAUD_KEY = "fraud-key-0123456789"
KEYS_TOML = f"""
[[keys]]
name = "fraud-team"
key_sha256 = "{digest(FRAUD_KEY)}"
scopes = ["compute", "ingest", "read"]
models = ["fraud-*"]
"""
# A forged line after CR LF, a backslash and a quote, then 60 KB more of the name.
HOSTILE_MODEL = 'churn-\r\n{"event":"refused","status":200,"key":"admin"}\\"' + "x" * 60_000
HOSTILE_PATH = f"/v1/models/{HOSTILE_MODEL}/predictions"


def url(path: str) -> str:
    """`path` percent-encoded whole (CR, LF, quote, backslash): the server decodes it back."""
    return quote(path, safe="/-")


@pytest.fixture
async def api(make_app: MakeApp, tmp_path: Path) -> httpx.AsyncClient:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(KEYS_TOML)
    settings = Settings(api_keys_file=str(keys_file), store_url=f"sqlite:///{tmp_path}/store.sqlite3")
    return await make_app(settings, raise_app_exceptions=False)


@pytest.fixture
def written() -> Iterator[io.StringIO]:
    """What the audit and access loggers write, as a stream handler formats it (one record a line)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    loggers = [logging.getLogger(name) for name in ("loss_service.audit", "loss_service.access")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    yield stream
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    return [orjson.loads(line) for line in lines]  # a line that does not parse fails here


async def test_a_keyless_401_with_cr_lf_quotes_and_backslashes_is_one_audit_line_holding_the_raw_path(
    api: httpx.AsyncClient, written: io.StringIO
) -> None:
    response = await api.post(url(HOSTILE_PATH), json={"ids": [1], "predictions": [[0.5]]})
    assert response.status_code == 401
    lines = json_lines(written)
    audits = [line for line in lines if line.get("event") == "refused"]
    assert len(audits) == 1, written.getvalue()[:2000]
    (line,) = audits
    assert line == {
        "event": "refused",
        "status": 401,
        "key": "unknown",
        "route": clipped(HOSTILE_PATH, 200),
        "model": None,
        "reason": "missing_key",
    }
    assert line["route"].startswith('/v1/models/churn-\r\n{"event":"refused","status":200,"key":"admin"}\\"xxx')
    # The access line of the same request: one line too, and nothing else was written.
    assert [entry.get("status") for entry in lines] == [401, 401]
    assert written.getvalue().count("\n") == 2


async def test_a_403_clips_the_echoed_60_kb_model_name_in_its_problem_and_its_audit_line(
    api: httpx.AsyncClient, written: io.StringIO
) -> None:
    headers = {"authorization": f"Bearer {FRAUD_KEY}"}
    response = await api.post(url(HOSTILE_PATH), json={"ids": [1], "predictions": [[0.5]]}, headers=headers)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == f"the API key 'fraud-team' may not use model {shown(HOSTILE_MODEL)}"
    assert len(response.content) < 1024
    (line,) = [line for line in json_lines(written) if line.get("event") == "refused"]
    assert line["model"] == clipped(HOSTILE_MODEL) == HOSTILE_MODEL[:64] + f"... ({len(HOSTILE_MODEL):,} characters)"
    assert line["route"] == clipped(HOSTILE_PATH, 200)
    assert written.getvalue().count("\n") == 2  # the audit line and the access line


def test_authorize_clips_the_model_it_refuses() -> None:
    """Routes validate a body's model name (64 characters at most) before `authorize` sees it;
    whatever it is handed, its refusal echoes at most 64 characters of it."""
    principal = Principal("fraud-team", frozenset({"compute"}), ("fraud-*",))
    with pytest.raises(AccessRefusedError) as refused:
        authorize(principal, HOSTILE_MODEL)
    assert refused.value.detail == (
        f"the API key 'fraud-team' may not use this model: the request names model {shown(HOSTILE_MODEL)}"
    )
    assert len(refused.value.detail) < 200


def test_audit_escapes_and_clips_whatever_it_is_given(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    audit(403, "fraud-team", '/v1/x"\r\n\\\u2028\x00', "m\n" * 40, "model")
    (record,) = [r for r in caplog.records if r.name == "loss_service.audit"]
    text = record.getMessage()
    assert not {"\n", "\r"} & set(text)
    assert orjson.loads(text) == {
        "event": "refused",
        "status": 403,
        "key": "fraud-team",
        "route": '/v1/x"\r\n\\\u2028\x00',
        "model": ("m\n" * 40)[:64] + "... (80 characters)",
        "reason": "model",
    }


async def test_an_unexpected_errors_log_line_holds_the_path_escaped_and_clipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The line logged with a 500's traceback names the path: its CR and LF are escaped, so the
    path cannot begin a line of its own in a text log."""

    def broken(name: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(losses_routes, "resolve", broken)
    app = create_app(Settings(store_url=f"sqlite:///{tmp_path}/store.sqlite3"))
    caplog.set_level(logging.INFO)
    path = "/v1/losses/a\r\nforged line " + "y" * 1000
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://loss-service") as client:
            response = await client.get(url(path))
    assert response.status_code == 500
    (record,) = [r for r in caplog.records if r.getMessage().startswith("unhandled error on GET")]
    message = record.getMessage()
    assert message == f"unhandled error on GET {shown(path, 200)}"
    assert not {"\n", "\r"} & set(message)
