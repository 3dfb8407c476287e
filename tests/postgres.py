"""A throwaway PostgreSQL cluster from Debian's `postgresql` package, for the store's tests.

`initdb` into a temporary directory and `pg_ctl start` on a free loopback port, as an
unprivileged user (PostgreSQL refuses to run as root: under root the cluster runs as the
`postgres` user the package creates). Where the binaries are absent, tests skip and say why.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import free_port

MISSING = "PostgreSQL's server binaries are absent: apt-get install postgresql (.ci/run installs it)"


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner(command: list[str], user: str | None) -> list[str]:
    return command if user is None else ["runuser", "-u", user, "--", *command]


@contextmanager
def cluster(fsync: bool = False) -> Iterator[str]:
    """A running cluster; yields the URL of its `postgres` database (trust authentication on loopback).
    `fsync`: PostgreSQL's default durability, for benchmarks; tests turn it off."""
    bindir = binaries()
    assert bindir is not None, MISSING
    user = "postgres" if os.geteuid() == 0 else None
    directory = Path(tempfile.mkdtemp(prefix="loss-service-postgres-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    data, port = directory / "data", free_port()
    subprocess.run(
        _as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], user),
        check=True,
        capture_output=True,
    )
    # fsync off for tests: these clusters hold test data only, and a killed loss-service process
    # cannot undo a commit either way.
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
    if not fsync:
        options += " -c fsync=off"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start"]
    subprocess.run(_as_owner(start, user), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_owner(stop, user), check=False, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new, empty database on the cluster; returns its URL."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"
