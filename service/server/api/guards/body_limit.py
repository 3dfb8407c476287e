"""The body size guard: bodies over the limit refused, gzip bodies inflated no further than it."""

from __future__ import annotations

import zlib
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.server.api.guards.refusals import refuse, refused
from service.server.api.headers import byte_count, request_header
from service.server.api.problems import ProblemError

# The most a gzip body inflates to in one step: one ASGI message of the inflated body.
INFLATED_PIECE = 256 * 1024


class BodyLimit:
    """Refuses bodies over `max_bytes` (413): by Content-Length at once, else while streaming.

    `Content-Encoding: gzip` bodies are inflated here, with the limit applied to the inflated
    size, so a small compressed bomb is refused after at most `max_bytes` of output. They are
    passed on in pieces of at most INFLATED_PIECE bytes, however little was sent: the memory
    budget (`HeavyRequests`) counts each piece before the next is inflated, so 58 KB that inflate
    to 60 MB are never 60 MB in one step.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = byte_count(request_header(scope, b"content-length"))
        if length is not None and length > self.max_bytes:
            await refuse(send, refused(413, self._too_large(length)), scope)
            return
        encoding = (request_header(scope, b"content-encoding") or "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            await refuse(send, refused(415, f"Content-Encoding {encoding!r} is not supported; use gzip"), scope)
            return
        if encoding == "gzip":
            # Downstream sees the inflated body: its length and encoding are no longer those headers.
            scope = {
                **scope,
                "headers": [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"content-encoding")],
            }
            limited = self._inflating(receive, zlib.decompressobj(16 + zlib.MAX_WBITS))
        else:
            limited = self._counting(receive)
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except ProblemError as refusal:
            if started:
                raise
            await refuse(send, refusal, scope)

    def _counting(self, receive: Receive) -> Receive:
        """The body's messages as they come, refused once they pass the limit."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise refused(413, self._too_large(received, streaming=True))
            return message

        return limited

    def _inflating(self, receive: Receive, inflater: Any) -> Receive:
        """The gzip body's messages inflated, in pieces of at most INFLATED_PIECE bytes, refused once
        what they inflate to passes the limit."""
        received = 0
        pending = b""  # compressed bytes not inflated yet (the inflater's unconsumed tail)
        full = done = False  # the last piece filled its size (more may come out); the last message is in

        async def limited() -> Message:
            nonlocal received, pending, full, done
            if done and not pending and not full:  # the body was passed on whole: as the server's receive
                return await receive()
            while True:
                if not pending and not full and not done:
                    message = await receive()
                    if message["type"] != "http.request":
                        return message
                    pending, done = message.get("body", b""), not message.get("more_body", False)
                most = min(INFLATED_PIECE, self.max_bytes - received + 1)
                piece = self._inflate(inflater, pending, most)
                # A piece short of `most` took all the inflater had; a full one may leave more inside it.
                pending, full = inflater.unconsumed_tail, len(piece) == most and not inflater.eof
                received += len(piece)
                if received > self.max_bytes:
                    raise refused(413, self._too_large(received, streaming=True))
                more = not done or bool(pending) or full
                if not more and not inflater.eof:
                    raise refused(400, "malformed gzip body: it ends before the gzip stream does")
                if piece or not more:
                    return {"type": "http.request", "body": piece, "more_body": more}

        return limited

    @staticmethod
    def _inflate(inflater: Any, chunk: bytes, most: int) -> bytes:
        try:
            out: bytes = inflater.decompress(chunk, most)
        except zlib.error as exc:
            raise refused(400, f"malformed gzip body: {exc}") from None
        return out

    def _too_large(self, size: int, streaming: bool = False) -> str:
        what = "more than " if streaming else ""
        return (
            f"the request body is {what}{size:,} bytes; the limit is {self.max_bytes:,} (LOSS_SERVICE_MAX_BODY_BYTES)"
        )
