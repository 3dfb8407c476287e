"""A database from its URL: SQLite or PostgreSQL."""

from __future__ import annotations

from service.store.database import Database, redacted
from service.store.postgres import PostgresDatabase
from service.store.sqlite import SQLiteDatabase


def connect(url: str, max_connections: int = 10, timeout: float = 5.0, reserve_bytes: int = 0) -> Database:
    """A database from a URL: `sqlite:///relative/path`, `sqlite:////absolute/path`, or
    `postgresql://user:password@host:port/database` (also `postgres://`). `timeout`: seconds an
    operation may wait for the database; `reserve_bytes`: SQLite's full-disk reserve (0: none);
    `max_connections`: SQLite's read connections, PostgreSQL's connections in each pool."""
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(url, url.removeprefix("sqlite:///"), timeout, reserve_bytes, max_connections)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, max_connections, timeout)
    raise ValueError(
        f"unsupported store URL {redacted(url)!r}: use sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE"
    )
