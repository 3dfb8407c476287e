"""A store that cannot take a model's configuration: its failure reaches the client as 503 (the
database unavailable) or 507 (its disk full), with the store's Retry-After and reason, and a
problem that says so; nothing is configured."""

from __future__ import annotations

from typing import Any

import pytest

from service.store import StoreFullError, StoreUnavailableError
from tests.apps import MakeApp

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("failure", "status", "retry_after"),
    [
        (StoreUnavailableError("the store is unavailable: PostgreSQL: connection refused"), 503, "5"),
        (StoreFullError("the store's disk is full: SQLite: database or disk is full"), 507, "30"),
    ],
)
async def test_a_configuration_the_store_refuses_gets_its_status_and_retry_after(
    make_app: MakeApp, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, failure: Exception, status: int, retry_after: str
) -> None:
    api = await make_app(store_url=f"sqlite:///{tmp_path}/store.sqlite3")

    def refuse(*_: Any, **__: Any) -> None:
        raise failure

    monkeypatch.setattr(api.app.state.store, "configure_model", refuse)
    answer = await api.put("/v1/models/m", json={"losses": [{"loss": "mse"}]})
    assert answer.status_code == status
    assert answer.headers["retry-after"] == retry_after
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == f"{failure}; nothing of this request was stored; retry after {retry_after} s"
    monkeypatch.undo()
    assert (await api.get("/v1/models/m")).status_code == 404


def test_a_use_cases_store_error_reads_as_its_reason() -> None:
    """What the log prints of it (str) is the reason the client is told, with its retry and kind."""
    from service.usecases.errors import StoreUnavailableError as UseCaseStoreError

    error = UseCaseStoreError("the store's disk is full", 30, True)
    assert (str(error), error.reason, error.retry_after, error.full) == ("the store's disk is full",) * 2 + (30, True)


def test_an_invalid_input_reads_as_its_reason() -> None:
    """As every use case error, what a log prints of it (str) and its `message` are its reason; the
    field and the index stay apart, for the error list."""
    from service.usecases.errors import InvalidInputError

    error = InvalidInputError("compare_to", "is this model itself", [1])
    assert (str(error), error.message, error.reason) == ("is this model itself",) * 3
    assert (error.field, error.index, error.detail, error.part) == ("compare_to", (1,), None, "body")
