"""The body size guard (service/server/api/guards/body_limit.py): bodies over the limit refused, gzip
bodies inflated no further than it, in the v1 and the Open Inference Protocol shapes."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.api.test_api import problem
from tests.apps import app_client
from tests.guarded import BODY, JSON, Recorder, drive, padded, refusal
from tests.monitoring.test_monitoring import samples, value

pytestmark = pytest.mark.anyio


async def test_a_declared_oversize_body_is_refused_before_reading(limited: httpx.AsyncClient) -> None:
    body = problem(await limited.post("/v1/loss", content=b"x" * 1001, headers=JSON), 413)
    assert "limit is 1,000" in body["detail"]
    assert "LOSS_SERVICE_MAX_BODY_BYTES" in body["detail"]


async def test_a_streamed_oversize_body_is_refused_while_reading(limited: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100

    response = await limited.post("/v1/loss", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert "more than" in problem(response, 413)["detail"]
    scrape = samples((await limited.get("/metrics")).text)
    assert value(scrape, "loss_service_http_requests_rejected_total", reason="too_large") == 1


async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not(limited: httpx.AsyncClient) -> None:
    assert (await limited.post("/v1/loss", content=padded(1000), headers=JSON)).status_code == 200
    problem(await limited.post("/v1/loss", content=padded(1001), headers=JSON), 413)

    def streamed(body: bytes) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 300):
                yield body[start : start + 300]

        return chunks()

    assert (await limited.post("/v1/loss", content=streamed(padded(1000)), headers=JSON)).status_code == 200
    problem(await limited.post("/v1/loss", content=streamed(padded(1001)), headers=JSON), 413)
    zipped = gzip.compress(padded(1000))
    headers = {**JSON, "content-encoding": "gzip"}
    assert (await limited.post("/v1/loss", content=zipped, headers=headers)).status_code == 200
    problem(await limited.post("/v1/loss", content=gzip.compress(padded(1001)), headers=headers), 413)


async def test_a_gzip_bomb_is_inflated_no_further_than_the_limit(
    limited: httpx.AsyncClient, inflated: list[int]
) -> None:
    """Sent in ten chunks, a bomb of 10 MB of zeros makes the guard inflate at most the limit (plus
    the one byte that proves it is over), however the chunks fall: counted on inflated bytes."""
    bomb = gzip.compress(b"\0" * 10_000_000)

    async def chunks() -> AsyncIterator[bytes]:
        step = len(bomb) // 10 + 1
        for start in range(0, len(bomb), step):
            yield bomb[start : start + step]

    response = await limited.post("/v1/loss", content=chunks(), headers={**JSON, "content-encoding": "gzip"})
    problem(response, 413)
    assert sum(inflated) <= 1001, f"inflated {sum(inflated):,} bytes for a limit of 1,000"


async def test_the_413_detail_reads_well(limited: httpx.AsyncClient) -> None:
    detail = problem(await limited.post("/v1/loss", content=b"x" * 1001, headers=JSON), 413)["detail"]
    assert detail == "the request body is 1,001 bytes; the limit is 1,000 (LOSS_SERVICE_MAX_BODY_BYTES)"


async def test_gzip_bodies_are_inflated(limited: httpx.AsyncClient) -> None:
    plain = await limited.post("/v1/loss", json=BODY)
    zipped = await limited.post(
        "/v1/loss", content=gzip.compress(json.dumps(BODY).encode()), headers={**JSON, "content-encoding": "gzip"}
    )
    assert zipped.status_code == 200
    assert zipped.json() == plain.json()


async def test_a_gzip_bomb_is_refused_at_the_inflated_limit(limited: httpx.AsyncClient) -> None:
    bomb = gzip.compress(b" " * 500_000)
    assert len(bomb) < 1000  # under the limit as sent: only the inflated size is over it
    response = await limited.post("/v1/loss", content=bomb, headers={**JSON, "content-encoding": "gzip"})
    # One chunk is inflated to at most the limit plus one byte, then refused: no more is inflated.
    assert problem(response, 413)["detail"] == (
        "the request body is more than 1,001 bytes; the limit is 1,000 (LOSS_SERVICE_MAX_BODY_BYTES)"
    )


async def test_truncated_gzip_and_unknown_encodings(limited: httpx.AsyncClient) -> None:
    truncated = gzip.compress(json.dumps(BODY).encode())[:-10]
    body = problem(await limited.post("/v1/loss", content=truncated, headers={**JSON, "content-encoding": "gzip"}), 400)
    assert body["detail"] == "malformed gzip body: it ends before the gzip stream does"
    not_gzip = await limited.post("/v1/loss", content=b"plain text", headers={**JSON, "content-encoding": "gzip"})
    assert problem(not_gzip, 400)["detail"].startswith("malformed gzip body: Error -3 while decompressing data")
    body = problem(await limited.post("/v1/loss", content=b"{}", headers={**JSON, "content-encoding": "br"}), 415)
    assert "use gzip" in body["detail"]


async def test_oip_routes_refuse_in_the_protocols_error_shape() -> None:
    infer = "/v2/models/mse/infer"
    async with app_client(Settings(max_body_bytes=1000)) as c:
        assert "limit is 1,000" in refusal(await c.post(infer, content=b"x" * 1001), 413)

        async def oversize_stream() -> AsyncIterator[bytes]:
            yield b"x" * 1001

        assert "limit is 1,000" in refusal(await c.post(infer, content=oversize_stream()), 413)


async def test_a_gzip_body_streamed_in_chunks_is_inflated_whole(limited: httpx.AsyncClient) -> None:
    """Chunk by chunk, as a client streams it: the end of the gzip stream is only checked at the
    end of the body, and a stream cut short in its last chunk is still caught."""
    compressed = gzip.compress(json.dumps(BODY).encode())

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 7):
            yield data[start : start + 7]

    headers = {**JSON, "content-encoding": "gzip"}
    answer = await limited.post("/v1/loss", content=chunks(compressed), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["mean"] == 2.0
    cut = await limited.post("/v1/loss", content=chunks(compressed[:-10]), headers=headers)
    assert problem(cut, 400)["detail"] == "malformed gzip body: it ends before the gzip stream does"


async def test_downstream_sees_the_inflated_body_and_not_the_compressed_bodys_headers() -> None:
    from service.server.api.guards.body_limit import BodyLimit

    raw = json.dumps(BODY).encode()
    zipped = gzip.compress(raw)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(zipped))]
    recorder = Recorder()
    # One message with no more_body: ASGI's default, the whole body.
    gzipped = [*headers, (b"content-encoding", b"gzip")]
    sent = await drive(BodyLimit(recorder, 1000), [{"type": "http.request", "body": zipped}], gzipped)
    assert sent[0]["status"] == 200
    assert recorder.body == raw
    assert recorder.headers == [(b"content-type", b"application/json")]
    recorder = Recorder()
    await drive(BodyLimit(recorder, 1000), [{"type": "http.request"}], headers)  # a message without a body
    assert (recorder.body, recorder.headers) == (b"", headers)


async def test_a_truncated_gzip_body_in_one_message_is_refused() -> None:
    from service.server.api.guards.body_limit import BodyLimit

    truncated = gzip.compress(json.dumps(BODY).encode())[:-10]
    sent = await drive(
        BodyLimit(Recorder(), 1000), [{"type": "http.request", "body": truncated}], [(b"content-encoding", b"gzip")]
    )
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["detail"] == "malformed gzip body: it ends before the gzip stream does"


async def test_a_zlib_body_is_not_gzip(limited: httpx.AsyncClient) -> None:
    headers = {**JSON, "content-encoding": "gzip"}
    response = await limited.post("/v1/loss", content=zlib.compress(json.dumps(BODY).encode()), headers=headers)
    detail = problem(response, 400)["detail"]
    assert detail == "malformed gzip body: Error -3 while decompressing data: incorrect header check"


async def test_a_refusal_after_the_response_started_is_raised_not_sent() -> None:
    """A second response cannot follow a first: the error goes to the server, which closes the
    connection, instead of a 413 sent after a 200's headers."""
    from service.server.api.guards.body_limit import BodyLimit
    from service.server.api.problems import ProblemError

    async def answers_first(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await receive()

    with pytest.raises(ProblemError):
        await drive(BodyLimit(answers_first, 10), [{"type": "http.request", "body": b"x" * 11}], [])


async def test_a_gzip_body_whose_later_chunk_is_a_bomb_is_inflated_no_further_than_the_limit(
    limited: httpx.AsyncClient, inflated: list[int]
) -> None:
    """600 bytes inflated from the first chunk leave 400 (and the one that proves the excess) for
    the rest, whatever the rest would inflate to."""
    writer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    first = writer.compress(padded(600)) + writer.flush(zlib.Z_SYNC_FLUSH)  # all 600 bytes inflate from it
    rest = writer.compress(b"\0" * 10_000_000) + writer.flush()

    async def chunks() -> AsyncIterator[bytes]:
        yield first
        yield rest

    response = await limited.post("/v1/loss", content=chunks(), headers={**JSON, "content-encoding": "gzip"})
    problem(response, 413)
    assert inflated[0] == 600
    assert sum(inflated) == 1001
