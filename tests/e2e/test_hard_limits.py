"""Handlers that ignore ctx.cancelled, under `taskbroker worker run` as a real process: a
hard execution timeout with sync_handlers="process", and a second SIGTERM that stops the
worker at once while such a handler holds a thread."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli_processes import WAIT_S, Proc, start, start_broker, wait_for
from worker_sdk import SyncClient, TaskState

SPIN_MODULE = """
import os
import time
from pathlib import Path

from worker_sdk import TaskContext, Worker

worker = Worker(capacity=1{options})


@worker.task("spin")
def spin(ctx: TaskContext) -> None:
    Path(ctx.json()["pid_file"]).write_text(str(os.getpid()))
    while True:  # never looks at ctx.cancelled
        time.sleep(0.01)


@worker.task("quick")
def quick(ctx: TaskContext) -> int:
    return os.getpid()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.process.poll() is None:
            proc.process.kill()
            proc.process.wait()


def _start(tmp_path: Path, procs: list[Proc], options: str = "") -> tuple[str, Proc]:
    broker, address = start_broker(tmp_path)
    procs.append(broker)
    (tmp_path / "spin_worker.py").write_text(SPIN_MODULE.format(options=options))
    worker = start(["worker", "run", "spin_worker:worker", "--broker", address], tmp_path, "w")
    procs.insert(0, worker)
    with SyncClient(address) as client:
        wait_for(lambda: client.list_workers(), "the worker to register", worker)
    return address, worker


def test_process_handlers_are_killed_at_their_execution_timeout(
    tmp_path: Path, procs: list[Proc]
) -> None:
    address, worker = _start(tmp_path, procs, ', sync_handlers="process"')
    pid_file = tmp_path / "spin.pid"
    with SyncClient(address) as client:
        spun = client.submit("spin", json={"pid_file": str(pid_file)}, execution_timeout=1.0)
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), "spin", worker))
        task = client.wait(spun, timeout=WAIT_S)
        assert task.state is TaskState.FAILED, task
        assert task.error is not None, task
        assert task.error.type == "Timeout", task.error
        wait_for(lambda: not _alive(pid), f"the handler process {pid} to be killed", worker)

        quick = client.submit("quick")
        done = client.wait(quick, timeout=WAIT_S)
        assert done.state is TaskState.SUCCEEDED, (done, worker.output())
        assert int(done.json()) not in (pid, worker.process.pid)  # a new child ran it
        assert done.started_at is not None, done
        assert done.finished_at is not None, done
        assert (done.finished_at - done.started_at).total_seconds() < 1.0, done


def test_a_second_sigterm_stops_the_worker_while_a_thread_spins(
    tmp_path: Path, procs: list[Proc]
) -> None:
    address, worker = _start(tmp_path, procs)  # sync handlers in threads, the default
    pid_file = tmp_path / "spin.pid"
    with SyncClient(address) as client:
        client.submit("spin", json={"pid_file": str(pid_file)})
        wait_for(pid_file.exists, "the handler to start", worker)
    worker.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "finishing in-flight tasks" in worker.stderr.read_text(), "shutdown", worker)
    worker.process.send_signal(signal.SIGTERM)
    try:
        code = worker.process.wait(5.0)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a second SIGTERM did not stop the worker\n{worker.output()}")
    assert code == 130, worker.output()
    assert "SIGTERM received again: stopping now" in worker.stderr.read_text()
