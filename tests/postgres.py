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


class Cluster:
    """A throwaway cluster that a test may stop and start again (on the same port and data)."""

    def __init__(self, fsync: bool = False) -> None:
        bindir = binaries()
        assert bindir is not None, MISSING
        self.bindir = bindir
        self.user = "postgres" if os.geteuid() == 0 else None
        self.directory = Path(tempfile.mkdtemp(prefix="loss-service-postgres-"))
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.data, self.port = self.directory / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run(
            _as_owner(
                [str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                self.user,
            ),
            check=True,
            capture_output=True,
        )
        # fsync off for tests: these clusters hold test data only, and a killed loss-service process
        # cannot undo a commit either way.
        self.options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not fsync:
            self.options += " -c fsync=off"

    def _pg_ctl(self, *arguments: str, check: bool = True) -> None:
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), *arguments]
        subprocess.run(_as_owner(command, self.user), check=check, capture_output=True)

    def start(self) -> None:
        self._pg_ctl("-o", self.options, "-l", str(self.directory / "log"), "-w", "start")

    def stop(self, mode: str = "fast", check: bool = True) -> None:
        """`fast`: roll back open transactions and disconnect the clients; `immediate`: as a crash."""
        self._pg_ctl("-m", mode, "-w", "stop", check=check)

    def remove(self) -> None:
        self.stop("immediate", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def running_cluster(fsync: bool = False) -> Iterator[Cluster]:
    """A running cluster, removed afterwards."""
    server = Cluster(fsync)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@contextmanager
def cluster(fsync: bool = False) -> Iterator[str]:
    """A running cluster; yields the URL of its `postgres` database (trust authentication on loopback).
    `fsync`: PostgreSQL's default durability, for benchmarks; tests turn it off."""
    with running_cluster(fsync) as server:
        yield server.url


def fresh_database(server_url: str) -> str:
    """A new, empty database on the cluster; returns its URL."""
    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"
