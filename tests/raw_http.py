"""A minimal asyncio HTTP/1.1 keep-alive client for load and fault tests.

httpx tops out near 600 requests/s here; raw sockets let one test process drive two server
workers. It speaks just what the service answers: a status line, headers, Content-Length.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Connection:
    host: str
    port: int
    reader: asyncio.StreamReader | None = field(default=None, repr=False)
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        """One request; (re)connects as needed. Raises ConnectionError if no whole answer arrives."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        try:
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
            answer_headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                answer_headers[name.strip().lower()] = value.strip()
            content = await self.reader.readexactly(int(answer_headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self.close()
            raise ConnectionError(f"no whole answer: {exc!r}") from exc
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(int(status_line.split(" ", 2)[1]), answer_headers, content)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
