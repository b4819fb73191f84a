"""Real `taskbroker` processes for end-to-end tests: a broker, workers and CLI commands,
each in a process of its own, with waits that say what they waited for."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker_sdk import SyncClient

WAIT_S = 20.0
LISTENING = re.compile(r"^taskbroker listening on (\S+) \(db (.+)\)$", re.MULTILINE)

WORKER_MODULE = """
from worker_sdk import TaskContext, Worker

worker = Worker(capacity=2, labels={"suite": "cli", "zone": "eu"})


@worker.task("upper")
def upper(ctx: TaskContext) -> str:
    return ctx.json()["text"].upper()


@worker.task("boom")
async def boom(ctx: TaskContext) -> None:
    raise ValueError("kaboom")
"""


def taskbroker(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("COLUMNS", None)  # tables as piped output has them, whatever the terminal
    return env


@dataclass
class Proc:
    """A background process whose stdout and stderr go to files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return f"stdout:\n{self.stdout.read_text()}\nstderr:\n{self.stderr.read_text()}"

    def stop(self, timeout: float = WAIT_S) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start(args: list[str], cwd: Path, name: str) -> Proc:
    stdout, stderr = cwd / f"{name}.out", cwd / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            taskbroker(*args), cwd=cwd, env=clean_env(), stdout=out, stderr=err
        )
    return Proc(process, stdout, stderr)


def wait_for(condition: Callable[[], Any], what: str, proc: Proc | None = None) -> Any:
    """Poll `condition` until it returns something truthy; fail after WAIT_S seconds."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.process.poll() is not None:
            pytest.fail(
                f"process exited ({proc.process.returncode}) before {what}\n{proc.output()}"
            )
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}" + (f"\n{proc.output()}" if proc else ""))


def start_broker(workdir: Path, name: str = "broker") -> tuple[Proc, str]:
    db = workdir / f"{name}.db"
    proc = start(["serve", "--port", "0", "--db", str(db)], workdir, name)
    match = wait_for(lambda: LISTENING.search(proc.stdout.read_text()), "listening", proc)
    assert match.group(2) == str(db)
    return proc, match.group(1)


def start_worker(workdir: Path, address: str, name: str) -> tuple[Proc, str]:
    """A worker process running WORKER_MODULE; returns it and its worker id."""
    (workdir / "cli_e2e_worker.py").write_text(WORKER_MODULE)
    with SyncClient(address) as client:
        before = {w.worker_id for w in client.list_workers()}
        proc = start(["worker", "run", "cli_e2e_worker:worker", "--broker", address], workdir, name)
        new = wait_for(
            lambda: {w.worker_id for w in client.list_workers()} - before, "the worker", proc
        )
    return proc, new.pop()


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        taskbroker(*args),
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
