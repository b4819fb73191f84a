"""`taskbroker serve` that cannot start: one `error:` line on stderr, exit 1, and nothing
left behind (no traceback from a store thread, no database file after a port in use)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli_processes import run


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_database_in_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    done = run("serve", "--port", "0", "--db", "/proc/nope/x.db", cwd=tmp_path)
    line = one_error_line(done)
    assert line.startswith("error: cannot open the database /proc/nope/x.db: "), line


def test_a_database_sqlite_cannot_open_is_one_line_every_time(tmp_path: Path) -> None:
    # A directory: the lock file beside it can be made, SQLite then fails. The store's
    # thread used to outlive the event loop now and then and print tracebacks.
    (tmp_path / "adir").mkdir()
    for _ in range(6):
        done = run("serve", "--port", "0", "--db", "adir", cwd=tmp_path)
        line = one_error_line(done)
        assert line == "error: cannot open the database adir: unable to open database file"


def test_a_port_in_use_is_one_line_and_creates_no_database(tmp_path: Path, taken_port: int) -> None:
    done = run("serve", "--port", str(taken_port), "--db", "new.db", cwd=tmp_path)
    line = one_error_line(done)
    assert line == f"error: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
