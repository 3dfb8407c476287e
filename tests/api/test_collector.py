"""Keeping Python's cyclic garbage collector out of request time: large JSON bodies are parsed with it
paused, and a worker's long-lived objects are frozen out of its generations at startup."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest

from service.server.api.body.json import COLLECTOR_PAUSE_BYTES, collector_paused, validate_json
from service.server.api.schemas import loss_request_adapter
from service.server.app import create_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every collection that starts while the test runs."""
    started: list[int] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(record)
    try:
        yield started
    finally:
        gc.callbacks.remove(record)


def large_body(rows: int = 20_000) -> bytes:
    rng = np.random.default_rng(0)
    return orjson.dumps(
        {"loss": "mse", "predictions": rng.random((rows, 10)), "labels": rng.random((rows, 10))},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def test_a_large_body_is_parsed_and_validated_without_a_collection(collections: list[int]) -> None:
    body = large_body()  # 40,000 lists: without the pause, dozens of collections walk them
    assert len(body) >= COLLECTOR_PAUSE_BYTES
    adapter = loss_request_adapter()
    collections.clear()
    validated = validate_json(adapter, body)
    assert validated.predictions.shape == (20_000, 10)
    assert collections == []
    assert gc.isenabled()


def test_the_pause_counts_concurrent_parses_and_restores_the_collector() -> None:
    assert gc.isenabled()
    with collector_paused(COLLECTOR_PAUSE_BYTES):
        assert not gc.isenabled()
        with collector_paused(COLLECTOR_PAUSE_BYTES):
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer parse is still running
    assert gc.isenabled()
    with collector_paused(COLLECTOR_PAUSE_BYTES - 1):
        assert gc.isenabled()  # small bodies leave it alone


def test_the_pause_ends_when_the_parse_raises() -> None:
    with pytest.raises(ValueError, match="malformed"), collector_paused(COLLECTOR_PAUSE_BYTES):
        raise ValueError("malformed")
    assert gc.isenabled()


def test_a_collector_disabled_by_the_process_stays_disabled() -> None:
    gc.disable()
    try:
        with collector_paused(COLLECTOR_PAUSE_BYTES):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_threads_overlapping_their_pauses_leave_the_collector_enabled() -> None:
    inside = threading.Barrier(4)
    leave = threading.Event()

    def parse() -> None:
        with collector_paused(COLLECTOR_PAUSE_BYTES):
            inside.wait()
            leave.wait()

    threads = [threading.Thread(target=parse) for _ in range(3)]
    for thread in threads:
        thread.start()
    inside.wait()
    assert not gc.isenabled()
    leave.set()
    for thread in threads:
        thread.join()
    assert gc.isenabled()


async def test_startup_freezes_what_lives_as_long_as_the_worker() -> None:
    app = create_app()
    gc.unfreeze()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 10_000  # modules, the app, its schemas and validators
