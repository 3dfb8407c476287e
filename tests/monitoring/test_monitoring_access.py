"""The access log (service/server/monitoring/accesslog.py): lines written a batch at a time, none lost,
to stderr as it stands, and without a log record when nothing else listens."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import pytest

from service.server.monitoring import BatchedStderr
from tests.servers import HANG


class _Writes(io.StringIO):
    """A stream that counts the writes it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _eventually(condition: Any, seconds: float = HANG) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_access_lines_are_written_a_batch_at_a_time_and_none_is_lost() -> None:
    stream = _Writes()
    handler = BatchedStderr(stream, flush_after=0.2, batch_bytes=122)
    handler.write_line("only")
    assert stream.getvalue() == ""  # waiting for the batch to fill or the time to pass
    assert _eventually(lambda: stream.getvalue() == "only\n")
    for number in range(3):
        handler.write_line(f"line {number}")
    assert _eventually(lambda: stream.getvalue().endswith("line 0\nline 1\nline 2\n"))
    assert stream.writes == 2
    handler.write_line("x" * 60)  # 61 bytes with its newline
    assert stream.writes == 2
    handler.write_line("y" * 60)  # 122 bytes waiting: the batch is full, written at once
    assert stream.writes == 3
    assert stream.getvalue().endswith("x" * 60 + "\n" + "y" * 60 + "\n")
    handler.write_line("z" * 120)  # 121 bytes: one short of a batch
    assert stream.writes == 3
    handler.flush()  # as logging.shutdown does at exit
    assert stream.getvalue().endswith("z" * 120 + "\n")
    assert stream.writes == 4
    assert (BatchedStderr().flush_after, BatchedStderr().batch_bytes) == (0.1, 64 * 1024)  # as documented


def test_without_a_stream_the_access_log_follows_stderr_and_a_stream_set_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process may replace sys.stderr and close the old one (a test runner's capture does, run
    after run): lines go to the stderr of the moment, never to a closed stream."""
    first, second, chosen = io.StringIO(), io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    handler = BatchedStderr(flush_after=60)
    handler.write_line("one")
    handler.flush()
    first.close()
    monkeypatch.setattr("sys.stderr", second)
    handler.write_line("two")
    handler.flush()
    assert second.getvalue() == "two\n"
    handler.setStream(chosen)
    handler.write_line("three")
    handler.flush()
    assert (second.getvalue(), chosen.getvalue()) == ("two\n", "three\n")


def test_requests_write_their_access_line_without_a_log_record_only_when_nothing_else_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.server.monitoring import accesslog as monitoring

    handler = BatchedStderr(io.StringIO())
    monkeypatch.setattr(monitoring.access_log, "handlers", [handler])
    monkeypatch.setattr(monitoring.access_log, "propagate", False)
    assert monitoring._direct_access_handler() is handler
    monkeypatch.setattr(monitoring.access_log, "propagate", True)  # an ancestor's handlers (caplog) listen too
    assert monitoring._direct_access_handler() is None
    monkeypatch.setattr(monitoring.access_log, "propagate", False)
    monkeypatch.setattr(monitoring.access_log, "handlers", [handler, logging.NullHandler()])
    assert monitoring._direct_access_handler() is None
    monkeypatch.setattr(monitoring.access_log, "handlers", [logging.StreamHandler(io.StringIO())])
    assert monitoring._direct_access_handler() is None
    monkeypatch.setattr(monitoring.access_log, "handlers", [handler])
    handler.addFilter(lambda record: False)
    assert monitoring._direct_access_handler() is None
