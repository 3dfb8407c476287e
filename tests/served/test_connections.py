"""Connections that never finish their headers are closed; ordinary requests are served meanwhile."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from tests.servers import HANG, serving

BODY = {"loss": "mse", "predictions": [[1.0]], "labels": [[2.0]]}


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=HANG)


RESET = b"(reset)"


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection; RESET when the close came as a
    reset (a client still sending after the server closed gets one, and may lose the 408 with it)."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        return RESET
    return received


def test_unfinished_headers_get_408_and_their_connections_close() -> None:
    with serving(env={"LOSS_SERVICE_HEADER_TIMEOUT": "0.5"}) as (url, _):
        silent = [_connect(url) for _ in range(10)]
        partial = [_connect(url) for _ in range(10)]
        for sock in partial:
            sock.sendall(b"POST /v1/loss HTTP/1.1\r\nHost: x\r\nContent-Ty")
        trickling = _connect(url)
        stop = threading.Event()

        trickle_bytes = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        sent = [0]

        def trickle() -> None:  # a byte every 0.1 s: each arrives in time, the headers never do
            for byte in trickle_bytes:
                if stop.is_set():
                    return
                try:
                    trickling.send(bytes([byte]))
                except OSError:
                    return
                sent[0] += 1
                time.sleep(0.1)

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            with httpx.Client(base_url=url, timeout=HANG) as client:
                for _ in range(5):  # served meanwhile, on connections of their own
                    assert client.post("/v1/loss", json=BODY).status_code == 200
            answers = [_answer(sock) for sock in [*silent, *partial]]
            trickled = _answer(trickling)
            sent_before_the_answer = sent[0]
        finally:
            stop.set()
            thread.join()
            for sock in [*silent, *partial, trickling]:
                sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for answer in answers), answers[:3]
    assert trickled == RESET or trickled.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), trickled
    # The trickler's deadline counts from its first byte, not its last: it was cut off with most of
    # its header unsent (counted in bytes, not seconds: 0.5 s of a 12 s trickle).
    assert sent_before_the_answer < len(trickle_bytes) // 2, sent_before_the_answer


def test_headers_in_time_and_a_slower_body_are_not_cut_off() -> None:
    """The header deadline ends with the headers: a body may take longer (its own deadline is the request timeout)."""
    with serving(env={"LOSS_SERVICE_HEADER_TIMEOUT": "0.5"}) as (url, _):
        sock = _connect(url)
        body = b'{"loss": "mse", "predictions": [[1.0]], "labels": [[2.0]]}'
        sock.sendall(
            b"POST /v1/loss HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        )
        time.sleep(1.0)
        sock.sendall(body)
        answer = _answer(sock)
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]


def test_a_connection_beyond_the_limit_is_refused_in_its_routes_dialect() -> None:
    """With the worker's one connection held, a request on another gets 503 with Retry-After and
    `Connection: close`: problem details on /v1, `{"error"}` on the Open Inference Protocol's
    routes, as the route asked for answers its other refusals."""
    with serving(env={"LOSS_SERVICE_MAX_CONNECTIONS": "1"}) as (url, _):
        held = _connect(url)
        held.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert held.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")  # open, and counted
        answers = {}
        for path in ("/v1/loss", "/v2/models/mse/infer"):
            with httpx.Client(base_url=url, timeout=HANG) as client:
                answers[path] = client.post(path, json=BODY)
        held.close()
    for answer in answers.values():
        assert answer.status_code == 503
        assert (answer.headers["retry-after"], answer.headers["connection"]) == ("1", "close")
    detail = "this worker already has its most connections open, 1 (LOSS_SERVICE_MAX_CONNECTIONS); retry shortly"
    assert answers["/v1/loss"].headers["content-type"] == "application/problem+json"
    assert answers["/v1/loss"].json()["detail"] == detail
    assert answers["/v2/models/mse/infer"].headers["content-type"] == "application/json"
    assert answers["/v2/models/mse/infer"].json() == {"error": detail}
