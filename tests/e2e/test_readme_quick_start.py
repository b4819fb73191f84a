"""The README's Quick start, run as a new user would: its file, then its commands in
their own processes, each printing what the README shows it printing."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.support.cli_processes import LISTENING, Proc, run, start, wait_for
from worker_sdk import SyncClient, Worker

README = Path(__file__).resolve().parents[2] / "README.md"
COMMAND = ".venv/bin/taskbroker "

pytestmark = pytest.mark.slow


def quick_start() -> str:
    text = README.read_text()
    return text[text.index("## Quick start") : text.index("## The client SDK")]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", quick_start(), re.DOTALL)


def commands() -> list[tuple[list[str], list[str]]]:
    """Each `taskbroker` command of the Quick start's shell blocks (its comment dropped),
    with the lines the README shows below it as its output."""
    found: list[tuple[list[str], list[str]]] = []
    for block in blocks("sh"):
        for line in block.splitlines():
            if line.startswith(COMMAND):
                found.append((shlex.split(line[len(COMMAND) :], comments=True), []))
            elif line.strip() and not line.startswith("make ") and found:
                found[-1][1].append(line)
    return found


def test_the_quick_start_has_what_this_test_runs() -> None:
    assert [args[:2] for args, _ in commands()] == [
        ["serve"],
        ["worker", "run"],
        ["submit", "add"],
    ]
    assert blocks("sh")[0].splitlines()[0] == "make install"
    assert len(blocks("python")) == 2


def test_the_process_handlers_line_builds_a_worker() -> None:
    (line,) = [b for b in blocks("python") if "sync_handlers" in b]
    scope: dict[str, object] = {}
    exec("from worker_sdk import Worker\n" + line, scope)  # the README's own line
    assert isinstance(scope["worker"], Worker)


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    (serve, _), (worker_run, _), (submit, shown) = commands()
    (myworker,) = [b for b in blocks("python") if "sync_handlers" not in b]
    (tmp_path / "myworker.py").write_text(myworker)
    procs: list[Proc] = []
    try:
        # Port 0 rather than 50051, which another broker on this machine may hold; the
        # database is the README's default, taskbroker.db in the current directory.
        broker = start([*serve, "--port", "0"], tmp_path, "broker")
        procs.append(broker)
        match = wait_for(lambda: LISTENING.search(broker.stdout.read_text()), "listening", broker)
        address = match.group(1)
        assert match.group(2) == "taskbroker.db"
        worker = start([*worker_run, "--broker", address], tmp_path, "worker")
        procs.insert(0, worker)
        with SyncClient(address) as client:
            wait_for(client.list_workers, "the worker", worker)
        done = run(*submit, "--broker", address, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        accepted, result = shown
        assert re.fullmatch(accepted.replace("1", r"\d+").replace(".", r"\."), done.stderr.strip())
        assert done.stdout == result + "\n"
        assert (tmp_path / "taskbroker.db").exists()
    finally:
        for proc in procs:  # the worker first, then the broker
            proc.stop()
    assert worker.process.returncode == 0, worker.output()
