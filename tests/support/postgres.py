"""A private PostgreSQL server for the tests: initdb in a temporary directory, started with
pg_ctl on a free loopback port, stopped at the end of the session.

`server()` starts it on first use (one per test process, so each xdist worker has its own)
and the session fixture in tests/conftest.py stops it. `fresh_database()` gives each test
an empty database of its own. The binaries are found on PATH or under
/usr/lib/postgresql/*/bin; `make test` installs them from the system's packages when
neither has them. PostgreSQL refuses to run as root: under root, the server runs as the
`postgres` user the package creates.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

SUPERUSER = "taskbroker"
_counter = itertools.count(1)


def find_binary(name: str) -> str:
    """The path of a PostgreSQL program (initdb, pg_ctl); RuntimeError if not installed."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    raise RuntimeError(
        f"PostgreSQL's {name} is not installed: `make test` installs it"
        " (apt-get install postgresql)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    """`argv`, run as `owner` when we are root (initdb and postgres refuse root)."""
    if owner is None:
        return argv
    return ["setpriv", f"--reuid={owner}", f"--regid={owner}", "--init-groups", *argv]


@dataclass
class PostgresServer:
    """One running server: connect to `dsn(database)` as the superuser, no password."""

    directory: Path
    port: int
    owner: str | None  # the user it runs as, when we are root
    fsync: bool

    @classmethod
    def start(cls, *, fsync: bool = False) -> PostgresServer:
        """initdb a new cluster in a temporary directory and start it on a free port.

        Without fsync (the tests' default) a commit is not forced to disk: the tests check
        what the broker does, not the disk.
        """
        owner = None
        if os.geteuid() == 0:
            owner = "postgres"
            pwd.getpwnam(owner)  # KeyError if the package did not create the user
        directory = Path(tempfile.mkdtemp(prefix="taskbroker-pg-"))
        if owner is not None:
            record = pwd.getpwnam(owner)
            os.chown(directory, record.pw_uid, record.pw_gid)
        data = directory / "data"
        subprocess.run(
            _as_owner(
                [
                    find_binary("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                owner,
            ),
            check=True,
            capture_output=True,
        )
        port = free_port()
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {directory}"
            f" -c fsync={'on' if fsync else 'off'} -c max_connections=200"
            " -c shared_buffers=64MB"
        )
        subprocess.run(
            _as_owner(
                [
                    find_binary("pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(directory / "log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
                owner,
            ),
            check=True,
            capture_output=True,
        )
        return cls(directory, port, owner, fsync)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    async def create_database(self, name: str) -> str:
        """Create an empty database; its URL."""
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.dsn(name)

    async def create_schema(self, name: str) -> str:
        """Create an empty schema in the server's one test database; the URL of that
        database with the schema first on the search path, so that everything a store
        creates goes there. Cheaper than a database each (no 7 MB copy of a template)."""
        conn = await asyncpg.connect(self.dsn())
        try:
            await conn.execute(f'CREATE SCHEMA "{name}"')
        finally:
            await conn.close()
        return f"{self.dsn()}?search_path={name}"

    def stop(self) -> None:
        """Stop the server (at once: the tests are over) and delete its files."""
        if not self.directory.exists():
            return
        subprocess.run(
            _as_owner(
                [
                    find_binary("pg_ctl"),
                    "-D",
                    str(self.directory / "data"),
                    "-m",
                    "immediate",
                    "stop",
                ],
                self.owner,
            ),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


_server: PostgresServer | None = None


def server() -> PostgresServer:
    """This process's test server, started on first use."""
    global _server
    if _server is None:
        _server = PostgresServer.start()
        atexit.register(_server.stop)  # if the session fixture did not get to it
    return _server


def stop_server() -> None:
    """Stop this process's test server, if one was started."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None


async def fresh_database() -> str:
    """The URL of a new, empty database on this process's test server (a schema of its
    own, as far as a store can tell)."""
    return await server().create_schema(f"t{os.getpid()}_{next(_counter)}")
