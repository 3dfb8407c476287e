"""Request headers read from the ASGI scope (service/server/api/headers.py)."""

from __future__ import annotations


def test_a_size_header_is_plain_ascii_digits_or_nothing() -> None:
    from service.server.api.headers import byte_count

    assert [byte_count(v) for v in ("0", "12", "0012")] == [0, 12, 12]
    for header in (None, "", "+1", " 1", "1 ", "-1", "1.0", "0x10", "\u0661"):
        assert byte_count(header) is None, repr(header)


def test_a_header_is_read_from_the_scope_first_value_first() -> None:
    from service.server.api.headers import request_header

    scope = {"headers": [(b"accept", b"a/b"), (b"x-name", b"caf\xe9"), (b"accept", b"c/d")]}
    assert request_header(scope, b"accept") == "a/b"
    assert request_header(scope, b"x-name") == "caf\u00e9"  # latin-1, as Starlette reads it
    assert request_header(scope, b"content-type") is None
