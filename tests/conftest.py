from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from service.config import Settings
from tests.apps import AppClient, MakeApp, app_client

# Every app and served process of the suite keeps its delayed-labels store in a fresh directory,
# never in the checkout's data/; tests of the store itself give each app a file of its own.
STORE_DIRECTORY = tempfile.mkdtemp(prefix="loss-service-tests-")
os.environ.setdefault("LOSS_SERVICE_STORE_URL", f"sqlite:///{STORE_DIRECTORY}/shared.sqlite3")
# Hundreds of stores in a run: none keeps the 64 MiB full-disk reserve (allocated disk, kept with
# pytest's last temporary directories); tests/store/test_store_failures.py gives its stores their own.
os.environ.setdefault("LOSS_SERVICE_STORE_RESERVE_BYTES", "0")

# CI runs the same generated examples every time (a fixed seed per test), so a landing never
# depends on luck; local runs keep exploring new examples. Hypothesis recommends this split.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


# In CI every test runs: a skip there means that something .ci/run should install did not, and it
# fails the run. What CI cannot have is listed here, as a test id prefix and the reason.
CI_MAY_SKIP: dict[str, str] = {}
_skipped: list[tuple[str, str]] = []


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped (pytest.importorskip, allow_module_level)
        _skipped.append((report.nodeid, _reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get("CI"):
        return
    unexpected = [(node, why) for node, why in _skipped if not any(node.startswith(p) for p in CI_MAY_SKIP)]
    if unexpected:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", f"{len(unexpected)} unexpected skips in CI (see CI_MAY_SKIP in tests/conftest.py)")
            for node, why in unexpected:
                reporter.write_line(f"{node}: {why}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def make_app() -> AsyncIterator[MakeApp]:
    """Starts an app and returns a client bound to it: `make_app(max_elements=10)` (the defaults
    with these settings), `make_app(settings)` (these settings), `make_app()` (the defaults), and
    `raise_app_exceptions=False` for a client that gets the 500 of an unhandled error instead of the
    error. Every app it made stops at teardown, the last made first."""
    async with AsyncExitStack() as stack:

        async def make(
            settings: Settings | None = None, /, *, raise_app_exceptions: bool = True, **overrides: Any
        ) -> AppClient:
            if overrides:
                if settings is not None:
                    raise TypeError("make_app takes settings or overrides of the defaults, not both")
                settings = Settings(**overrides)
            return await stack.enter_async_context(app_client(settings, raise_app_exceptions=raise_app_exceptions))

        yield make


@pytest.fixture
async def client(make_app: MakeApp) -> AppClient:
    return await make_app()


@pytest.fixture
async def api(make_app: MakeApp, tmp_path: Path) -> AppClient:
    """The service with a delayed-labels store of its own (a test module may define its own `api`)."""
    return await make_app(store_url=f"sqlite:///{tmp_path}/store.sqlite3")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: a SQLite file, then a PostgreSQL database (skipped where PostgreSQL is absent)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.sqlite3"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One throwaway PostgreSQL cluster for the session; skips where PostgreSQL is absent."""
    from tests import postgres

    if postgres.binaries() is None:
        pytest.skip(postgres.MISSING)
    with postgres.cluster() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's cluster."""
    from tests.postgres import fresh_database

    return fresh_database(postgres_server)


@pytest.fixture
async def limited(make_app: MakeApp) -> AppClient:
    """An app whose body limit is 1,000 bytes (the guard tests')."""
    return await make_app(max_body_bytes=1000)


@pytest.fixture
def inflated(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes each zlib inflation produces, for a test to count what the guard inflated."""
    produced: list[int] = []
    make = zlib.decompressobj

    class Counting:
        def __init__(self, *args: Any) -> None:
            self.inner = make(*args)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self.inner.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    return produced
