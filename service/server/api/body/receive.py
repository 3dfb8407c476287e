"""Receiving a request body: its content type checked, its bytes read (aligned for OIP tensors)."""

from __future__ import annotations

import numpy as np
from fastapi import Request
from starlette.requests import ClientDisconnect

from service.server.api.body.formats import JSON_MEDIA_TYPE
from service.server.api.headers import byte_count, request_header
from service.server.api.problems import ProblemError


async def received_body(request: Request) -> bytes:
    """`await request.body()`, without Starlette's async generator and its closing context, which
    cost a small request several microseconds: the same messages read, the same ClientDisconnect
    when the client leaves first, and a body of one chunk is that chunk, not a copy (Starlette's
    generator ends with an empty chunk, so its join copies). The body is kept where
    `request.body()` looks for it, for anything that asks again."""
    chunks = []
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    body = b"".join(chunks)  # one chunk: join returns that very object
    request._body = body  # Starlette's own cache of the body
    return body


async def read_body(request: Request, accepted: tuple[str, ...] = (JSON_MEDIA_TYPE,)) -> tuple[str, bytes]:
    media_type = (request_header(request.scope, b"content-type") or "").split(";")[0].strip().lower()
    if media_type not in accepted:
        shown = media_type or "none"
        raise ProblemError(415, f"Content-Type must be {' or '.join(accepted)}, got {shown}")
    body = await received_body(request)
    if not body or body.isspace():  # strip() would copy the body to say the same
        raise ProblemError(400, "the request body is empty")
    return media_type, body


# Binary tensors after a JSON header of any length are placed on this boundary as they arrive.
TENSOR_ALIGNMENT = 64
Body = bytes | memoryview  # memoryview: received with its tensors aligned (read_body_aligned)


async def read_body_aligned(request: Request, offset: int) -> Body:
    """The body, received into a buffer where byte `offset` starts a 64-byte boundary.

    Open Inference Protocol tensors follow a JSON header of any length, so in a plain bytes body
    they are rarely aligned for their dtype, and NumPy's loops over misaligned data are slower
    (docs/performance.md, "Over HTTP"). Receiving into an aligned buffer copies
    each chunk once, as joining them into bytes does. Without a Content-Length (a chunked body,
    or a gzip one, which BodyLimit inflates), or with `offset` beyond it, the plain body.
    """
    length = byte_count(request_header(request.scope, b"content-length"))
    if length is None or not 0 <= offset <= length:
        return await received_body(request)
    buffer = np.empty(length + TENSOR_ALIGNMENT, dtype=np.uint8)
    start = -(buffer.ctypes.data + offset) % TENSOR_ALIGNMENT
    body = memoryview(buffer.data)[start : start + length]
    received = 0
    async for chunk in request.stream():
        end = received + len(chunk)
        if end > length:
            raise ProblemError(400, f"the body is longer than its Content-Length ({length:,} bytes)")
        body[received:end] = chunk
        received = end
    if received != length:
        raise ProblemError(400, f"the body ended after {received:,} of its Content-Length {length:,} bytes")
    return body
