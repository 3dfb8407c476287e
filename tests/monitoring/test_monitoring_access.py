"""The access log (service/server/monitoring/accesslog.py): lines written a batch at a time, none lost,
to stderr as it stands, and without a log record when nothing else listens."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.server.monitoring import BatchedStderr
from tests.servers import HANG

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_new_handlers_first_batch_is_written_once_it_holds_batch_bytes_not_a_byte_sooner() -> None:
    stream = _Writes()
    handler = BatchedStderr(stream, flush_after=HANG, batch_bytes=10)  # the timer never fires in the test
    handler.write_line("abcd")  # 5 bytes with its newline
    handler.write_line("abc")  # 9 bytes: one short of a batch
    assert stream.writes == 0
    handler.write_line("")  # 10 bytes: the batch is full
    assert (stream.writes, stream.getvalue()) == (1, "abcd\nabc\n\n")


def test_a_process_with_an_access_log_handler_exits_when_its_main_thread_ends() -> None:
    """The handler's flushing thread never keeps the process alive (uvicorn's workers would hang
    at shutdown); `logging.shutdown` at exit writes the lines still waiting."""
    script = (
        "from service.server.monitoring import BatchedStderr\n"
        "handler = BatchedStderr(flush_after=3600)\n"
        "handler.write_line('last words')\n"
        "import logging; logging.getLogger('loss_service.access').addHandler(handler)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process did not exit within {HANG} s")
    assert (out.returncode, out.stderr) == (0, "last words\n")


def test_the_handlers_flushing_thread_is_a_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, what the test above sees from outside: the one thread a handler starts never
    keeps the process alive."""
    before = set(threading.enumerate())
    handler = BatchedStderr(io.StringIO(), flush_after=0)
    started = set(threading.enumerate()) - before

    def stop() -> None:
        raise SystemExit  # ends the flushing thread, daemon or not

    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # that end is no error
    handler.flush = stop  # type: ignore[method-assign]
    handler.write_line("wakes the thread")
    for thread in started:
        thread.join(HANG)
    del handler.flush  # logging.shutdown flushes it at exit
    assert [thread.daemon for thread in started] == [True]


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
