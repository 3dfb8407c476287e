"""Scoped API keys, tried as an intruder would: every way into another team's model is refused,
and nothing is recorded or stored. Rate limits, reloading the keys file, audit lines, TLS."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from service.cli import main as cli
from service.config import Settings
from service.server.api.access import digest
from service.server.app import create_app
from tests.apps import MakeApp
from tests.servers import HANG

pytestmark = pytest.mark.anyio
KEYS = {
    "fraud-team": ("fraud-key-0123456789", ["compute", "ingest", "read"], ["fraud-*"], {}),
    "churn-admin": ("churn-key-0123456789", ["compute", "ingest", "read", "admin", "metrics"], ["churn-*"], {}),
    "reader": ("reader-key-012345678", ["read"], None, {}),
    "metrics-bot": ("metrics-key-01234567", ["metrics"], None, {}),
    "limited": ("limited-key-0123456", ["compute"], None, {"requests_per_second": 20, "values_per_second": 1000}),
    "burst": ("burst-key-012345678", ["read"], None, {"requests_per_second": 2}),
}


def keys_toml(keys: dict[str, tuple[str, list[str], list[str] | None, dict[str, Any]]]) -> str:
    tables = []
    for name, (key, scopes, models, limits) in keys.items():
        lines = [
            "[[keys]]",
            f'name = "{name}"',
            f'key_sha256 = "{digest(key)}"',
            f"scopes = {scopes!r}".replace("'", '"'),
        ]
        if models is not None:
            lines.append(f"models = {models!r}".replace("'", '"'))
        lines += [f"{field} = {value}" for field, value in limits.items()]
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name][0]}"}


@pytest.fixture
async def app_and_client(make_app: MakeApp, tmp_path: Path) -> tuple[Any, httpx.AsyncClient]:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_toml(KEYS))
    settings = Settings(
        api_keys_file=str(keys_file), metrics_auth=True, store_url=f"sqlite:///{tmp_path}/store.sqlite3"
    )
    client = await make_app(settings)
    return client.app, client


@pytest.fixture
async def api(app_and_client: tuple[Any, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_and_client[1]


LOSS = {"loss": "mse", "predictions": [[0.0], [1.0]], "labels": [[1.0], [1.0]]}
OIP = {
    "inputs": [
        {"name": "predictions", "shape": [2, 1], "datatype": "FP64", "data": [0.0, 1.0]},
        {"name": "labels", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 1.0]},
    ]
}


async def scrape(api: httpx.AsyncClient) -> str:
    return (await api.get("/metrics", headers=auth("metrics-bot"))).text


async def test_another_teams_model_is_out_of_reach_by_every_route(api: httpx.AsyncClient) -> None:
    admin = auth("churn-admin")
    assert (await api.put("/v1/models/churn-v1", json={"losses": [{"loss": "mse"}]}, headers=admin)).status_code == 200
    logged = await api.post("/v1/models/churn-v1/predictions", json={"ids": [1], "predictions": [[0.5]]}, headers=admin)
    assert logged.status_code == 200
    before_metrics = await scrape(api)
    before_status = (await api.get("/v1/models/churn-v1", headers=admin)).json()
    intruder = auth("fraud-team")
    attempts: list[tuple[str, str, Any, int]] = [
        ("POST", "/v1/loss", {**LOSS, "model": "churn-v1"}, 403),
        ("POST", "/v1/loss", LOSS, 403),  # a restricted key must name one of its models
        ("POST", "/v1/evaluate", {**LOSS, "losses": [{"loss": "mse"}], "model": "churn-v1"} | {"loss": None}, 403),
        ("POST", "/v2/models/mse/infer", {**OIP, "parameters": {"model": "churn-v1"}}, 403),
        ("POST", "/v1/models/churn-v1/predictions", {"ids": [2], "predictions": [[0.1]]}, 403),
        ("POST", "/v1/models/churn-v1/labels", {"ids": [1], "labels": [[1.0]]}, 403),
        ("GET", "/v1/models/churn-v1", None, 403),
        ("PUT", "/v1/models/churn-v1", {"losses": [{"loss": "mae"}]}, 403),
        ("DELETE", "/v1/models/churn-v1", None, 403),
        ("PUT", "/v1/models/fraud-v1", {"losses": [{"loss": "mae"}]}, 403),  # its own model, but no admin scope
        ("GET", "/metrics", None, 403),  # no metrics scope
    ]
    for method, path, body, status in attempts:
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if v is not None}
        response = await api.request(method, path, json=body, headers=intruder)
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        if path.startswith("/v2/"):
            assert "error" in response.json()
        else:
            assert response.headers["content-type"] == "application/problem+json"
    after_metrics = await scrape(api)
    for line in before_metrics.splitlines():
        if line.startswith(("loss_service_samples_total", "loss_service_logged_total", "loss_service_batches_total")):
            assert line in after_metrics.splitlines(), f"changed by a refused request: {line}"
    after_status = (await api.get("/v1/models/churn-v1", headers=admin)).json()
    assert {k: v for k, v in after_status.items() if k != "oldest_pending_seconds"} == {
        k: v for k, v in before_status.items() if k != "oldest_pending_seconds"
    }
    # Its own model, through the same routes, works.
    assert (await api.post("/v1/loss", json={**LOSS, "model": "fraud-v1"}, headers=intruder)).status_code == 200
    oip = {**OIP, "parameters": {"model": "fraud-v1"}}
    assert (await api.post("/v2/models/mse/infer", json=oip, headers=intruder)).status_code == 200


async def test_scopes_decide_the_routes(api: httpx.AsyncClient) -> None:
    await api.put("/v1/models/churn-a", json={"losses": [{"loss": "mse"}]}, headers=auth("churn-admin"))
    await api.put("/v1/models/churn-b", json={"losses": [{"loss": "mse"}]}, headers=auth("churn-admin"))
    reader = auth("reader")
    assert [m["model"] for m in (await api.get("/v1/models", headers=reader)).json()["models"]] == [
        "churn-a",
        "churn-b",
    ]
    assert (await api.get("/v1/models", headers=auth("fraud-team"))).json()["models"] == []
    refused = await api.post("/v1/loss", json=LOSS, headers=reader)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "the API key 'reader' lacks the scope 'compute' this route needs"
    assert (
        await api.post("/v1/models/churn-a/labels", json={"ids": [1], "labels": [[1.0]]}, headers=reader)
    ).status_code == 403
    assert (await api.get("/v1/losses/mse", headers=reader)).status_code == 200  # the catalogue: any valid key
    assert (await api.get("/metrics", headers=auth("metrics-bot"))).status_code == 200
    assert (await api.get("/livez")).status_code == 200


async def test_refusals_are_audited_by_key_name_and_never_show_a_key(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    responses = [
        await api.post("/v1/loss", json={**LOSS, "model": "churn-v1"}, headers=auth("fraud-team")),
        await api.post("/v1/loss", json=LOSS, headers={"authorization": "Bearer fraud-key-0123456789x"}),
        await api.post("/v1/loss", json=LOSS),
        await api.get("/metrics", headers=auth("reader")),
    ]
    assert [r.status_code for r in responses] == [403, 401, 401, 403]
    audit = [r.getMessage() for r in caplog.records if r.name == "loss_service.audit"]
    assert len(audit) == 4
    assert '"key":"fraud-team","route":"/v1/loss","model":"churn-v1","reason":"model"' in audit[0]
    assert '"status":403,"key":"fraud-team"' in audit[0]
    assert '"status":401,"key":"unknown","route":"/v1/loss","model":null,"reason":"invalid_key"' in audit[1]
    assert '"reason":"missing_key"' in audit[2]
    assert '"key":"reader","route":"/metrics","model":null,"reason":"scope"' in audit[3]
    everything = "\n".join(r.getMessage() for r in caplog.records) + "".join(r.text for r in responses)
    everything += await scrape(api)
    for key, *_ in KEYS.values():
        assert key not in everything
        assert digest(key) not in everything


async def test_a_values_budget_refuses_with_retry_after(api: httpx.AsyncClient) -> None:
    limited = auth("limited")
    big = {"loss": "mse", "predictions": [[0.5]] * 300, "labels": [[1.0]] * 300}  # 600 values of 1,000 a second
    assert (await api.post("/v1/loss", json=big, headers=limited)).status_code == 200
    refused = await api.post("/v1/loss", json=big, headers=limited)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "1000 values per second" in refused.json()["detail"]
    assert 'loss_service_http_requests_rejected_total{reason="rate_limited"} 1.0' in await scrape(api)
    assert 'loss_service_api_key_requests_total{key="limited",status_class="4xx"} 1.0' in await scrape(api)
    await asyncio.sleep(0.7)
    assert (await api.post("/v1/loss", json=big, headers=limited)).status_code == 200


async def test_a_key_over_its_requests_per_second_is_refused_at_once_and_audited(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    burst = auth("burst")
    statuses = [(await api.get("/v1/models/m-1", headers=burst)).status_code for _ in range(2)]
    assert statuses == [404, 404]  # the bucket holds one second's worth: two requests
    refused = await api.get("/v1/models/m-1", headers=burst)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["detail"] == "the API key 'burst' is over its 2 requests per second"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "loss_service.audit"]
    assert line.endswith('"status":429,"key":"burst","route":"/v1/models/m-1","model":"m-1","reason":"requests_rate"}')
    assert 'loss_service_http_requests_rejected_total{reason="rate_limited"} 1.0' in await scrape(api)


async def test_an_unknown_route_is_the_routers_404_whatever_the_keys_models_and_scopes(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a request a route would answer is checked against the key's scopes and models; others
    get the router's answer (nothing of another team's is reached either way)."""
    caplog.set_level(logging.INFO)
    fraud = auth("fraud-team")
    assert (await api.get("/v1/models/churn-v1/no-such-thing", headers=fraud)).status_code == 404
    assert (await api.post("/v1/no-such-route", json=LOSS, headers=auth("reader"))).status_code == 404
    assert not [r for r in caplog.records if r.name == "loss_service.audit"]


async def test_a_401_says_why_in_its_challenge_and_audits_a_long_path_clipped(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    long_path = "/v1/models/" + "m" * 300
    missing = await api.get(long_path)
    assert missing.headers["www-authenticate"] == 'Bearer realm="loss-service"'
    wrong = await api.get(long_path, headers={"authorization": "Bearer not-a-key"})
    assert wrong.headers["www-authenticate"] == 'Bearer realm="loss-service", error="invalid_token"'
    lines = [r.getMessage() for r in caplog.records if r.name == "loss_service.audit"]
    route = f"{long_path[:200]}... (311 characters)"
    assert lines == [
        f'{{"event":"refused","status":401,"key":"unknown","route":"{route}","model":null,"reason":"missing_key"}}',
        f'{{"event":"refused","status":401,"key":"unknown","route":"{route}","model":null,"reason":"invalid_key"}}',
    ]


async def test_a_model_in_the_path_out_of_a_keys_reach_is_named_and_audited(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    model = "churn-" + "x" * 300
    refused = await api.get(f"/v1/models/{model}", headers=auth("fraud-team"))
    assert refused.status_code == 403
    shown = f"{model!r}"[:64] + "... (308 characters)"
    assert refused.json()["detail"] == f"the API key 'fraud-team' may not use model {shown}"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "loss_service.audit"]
    route = f"/v1/models/{model}"
    assert line == (
        f'{{"event":"refused","status":403,"key":"fraud-team","route":"{route[:200]}... (317 characters)",'
        f'"model":"{model[:64]}... (306 characters)","reason":"model"}}'
    )


async def test_a_key_after_several_spaces_is_still_the_key(api: httpx.AsyncClient) -> None:
    """RFC 9110 allows one or more spaces between the scheme and the credentials."""
    headers = {"authorization": "Bearer   " + KEYS["fraud-team"][0]}
    assert (await api.post("/v1/loss", json={**LOSS, "model": "fraud-v1"}, headers=headers)).status_code == 200
    assert 'loss_service_api_key_requests_total{key="fraud-team",status_class="2xx"} 1.0' in await scrape(api)


async def test_a_hammered_key_gets_its_requests_per_second_and_no_more(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten seconds of hammering on a clock the test moves, so that what is served is counted, not
    timed: 2,000 requests 5 ms apart, ten times the key's rate, get the rate's worth and no more."""
    from service.server.api import access

    limited, rate = auth("limited"), 20
    clock = [time.monotonic()]
    monkeypatch.setattr(access, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    drained = 0
    while (await api.get("/v1/losses/mse", headers=limited)).status_code == 200:  # the clock stands still
        drained += 1
    assert drained == rate, "the bucket holds one second's worth"
    served = refused = 0
    for _ in range(2000):
        clock[0] += 0.005
        status = (await api.get("/v1/losses/mse", headers=limited)).status_code
        served += status == 200
        refused += status == 429
    assert 10 * rate - 1 <= served <= 10 * rate, f"{served} served in 10 s at {rate}/s"
    assert served + refused == 2000


async def test_the_keys_file_reloads_when_it_changes_and_a_broken_one_keeps_the_keys(
    app_and_client: tuple[Any, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    app, api = app_and_client
    keys_file = Path(app.state.keys.file)
    newcomer = {"newcomer": ("newcomer-key-0123456", ["compute"], None, {})}
    assert (
        await api.post("/v1/loss", json=LOSS, headers={"authorization": "Bearer newcomer-key-0123456"})
    ).status_code == 401
    keys_file.write_text(keys_toml({**KEYS, **newcomer}))
    assert await eventually(
        lambda: api.post("/v1/loss", json=LOSS, headers={"authorization": "Bearer newcomer-key-0123456"}), 200
    )
    keys_file.write_text("[[keys]]\nname = 'broken'\n")
    assert await eventually(scrape_reload_failed(api), "1.0")
    assert "not reloaded, the previous keys stay" in caplog.text
    assert (
        await api.post("/v1/loss", json=LOSS, headers={"authorization": "Bearer newcomer-key-0123456"})
    ).status_code == 200
    keys_file.write_text(keys_toml(KEYS))
    assert await eventually(scrape_reload_failed(api), "0.0")
    assert (
        await api.post("/v1/loss", json=LOSS, headers={"authorization": "Bearer newcomer-key-0123456"})
    ).status_code == 401


def rewrite_in_place(keys_file: Path, text: str) -> None:
    """Write `text` (of the file's length) into the file's own inode and put its mtime back."""
    stat = keys_file.stat()
    assert len(text.encode()) == stat.st_size
    with keys_file.open("r+") as handle:
        handle.write(text)
    os.utime(keys_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = keys_file.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)


async def test_an_edit_in_place_keeping_size_and_mtime_is_reloaded_without_sighup(
    app_and_client: tuple[Any, httpx.AsyncClient],
) -> None:
    """The watcher compares the file's content (its SHA-256), not its size, mtime and inode."""
    app, api = app_and_client
    keys_file = Path(app.state.keys.file)
    swapped = keys_file.read_text().replace(digest(KEYS["reader"][0]), digest("reader-key-876543210"))
    rewrite_in_place(keys_file, swapped)
    assert await eventually(
        lambda: api.get("/v1/models", headers={"authorization": "Bearer reader-key-876543210"}), 200
    )
    assert (await api.get("/v1/models", headers=auth("reader"))).status_code == 401


async def test_sighup_reloads_even_when_the_watcher_sees_no_change(
    app_and_client: tuple[Any, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, api = app_and_client
    keys_file = Path(app.state.keys.file)
    monkeypatch.setattr(app.state.keys, "changed_on_disk", lambda: False)  # only SIGHUP tells the service
    swapped = keys_file.read_text().replace(digest(KEYS["reader"][0]), digest("reader-key-876543210"))
    rewrite_in_place(keys_file, swapped)
    await asyncio.sleep(1.5)
    assert (await api.get("/v1/models", headers=auth("reader"))).status_code == 200  # not reloaded yet
    os.kill(os.getpid(), signal.SIGHUP)
    assert await eventually(
        lambda: api.get("/v1/models", headers={"authorization": "Bearer reader-key-876543210"}), 200
    )
    assert (await api.get("/v1/models", headers=auth("reader"))).status_code == 401


async def test_a_keys_file_that_is_not_utf8_keeps_the_keys_and_the_watch_goes_on(
    app_and_client: tuple[Any, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A reload of bytes that are not UTF-8 fails like any broken file (the keys stay, the gauge
    says so), and the watch keeps running: a good file afterwards is picked up."""
    app, api = app_and_client
    keys_file = Path(app.state.keys.file)
    good = keys_file.read_bytes()
    keys_file.write_bytes(good + b"\n# \xff\xfe\n")
    assert await eventually(scrape_reload_failed(api), "1.0")
    assert "not reloaded, the previous keys stay: not UTF-8" in caplog.text
    assert (await api.get("/v1/models", headers=auth("reader"))).status_code == 200
    keys_file.write_text(keys_toml({"reader": KEYS["reader"], "metrics-bot": KEYS["metrics-bot"]}))
    assert await eventually(scrape_reload_failed(api), "0.0")
    assert (await api.get("/v1/models", headers=auth("fraud-team"))).status_code == 401


def scrape_reload_failed(api: httpx.AsyncClient) -> Any:
    async def value() -> str:
        for line in (await scrape(api)).splitlines():
            if line.startswith("loss_service_api_keys_reload_failed "):
                return line.split()[1]
        return ""

    return value


async def eventually(call: Any, expected: Any, timeout: float = HANG) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await call()
        if (getattr(result, "status_code", result)) == expected:
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Basic fraud-key-0123456789", "bearer fraud-key-012345678", "Bearer fraud-key-0123456789 x"],
)
async def test_malformed_credentials_are_401(api: httpx.AsyncClient, header: str) -> None:
    response = await api.post("/v1/loss", json={**LOSS, "model": "fraud-v1"}, headers={"authorization": header})
    assert response.status_code == 401, header


async def test_a_malformed_keys_file_stops_the_start(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_toml(KEYS) + keys_toml({"reader": KEYS["reader"]}))
    with pytest.raises(ValueError, match=r"keys\.6: name 'reader' appears more than once"):
        create_app(Settings(api_keys_file=str(keys_file)))


def test_keys_new_prints_the_key_once_and_an_entry_that_matches_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["keys", "new", "fraud-team", "--scopes", "compute,read", "--models", "fraud-*,fraud"]) == 0
    out, err = capsys.readouterr()
    key = err.rsplit(" ", 1)[1].strip()
    (entry,) = tomllib.loads(out)["keys"]
    assert entry == {
        "name": "fraud-team",
        "key_sha256": digest(key),
        "scopes": ["compute", "read"],
        "models": ["fraud-*", "fraud"],
    }
    assert key not in out
    assert cli(["keys", "new", "x", "--scopes", "everything"]) == 2


@pytest.mark.slow
def test_serve_speaks_tls_and_refuses_plain_http_on_its_port(tmp_path: Path) -> None:
    import ssl
    import subprocess

    import trustme

    from tests.servers import free_port, loss_service_executable

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(certfile)
    certificate.private_key_pem.write_to_path(keyfile)
    port = free_port()
    process = subprocess.Popen(
        [
            loss_service_executable(),
            "serve",
            "--port",
            str(port),
            "--ssl-certfile",
            str(certfile),
            "--ssl-keyfile",
            str(keyfile),
        ],
        env={**os.environ, "LOSS_SERVICE_LOG_LEVEL": "warning"},
    )
    context = ssl.create_default_context()
    authority.configure_trust(context)
    try:
        deadline, answer = time.monotonic() + HANG, None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=context, timeout=HANG)
            except httpx.TransportError:
                time.sleep(0.2)
        assert answer is not None
        assert answer.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=HANG)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
            httpx.get(f"https://127.0.0.1:{port}/readyz", timeout=HANG)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
