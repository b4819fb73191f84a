"""Child processes for tests that need real ones (crashes, overload): spawn with a log
file, a clean environment, one shared time budget, and a stop that never leaves one behind."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n{text[-4000:]}"


def spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> Process:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    return Process(name, popen, log)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without TASKBROKER_* settings, unbuffered, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("COLUMNS", None)  # tables as piped output has them, whatever the terminal
    env.update(extra or {})
    return env


def logs(processes: Sequence[Process]) -> str:
    return "\n".join(process.output() for process in processes)


def stop_all(processes: Sequence[Process]) -> None:
    """SIGTERM every process still running, in order, then SIGKILL what is left after 5 s."""
    for process in processes:
        if process.popen.poll() is None:
            process.popen.terminate()
    deadline = time.monotonic() + 5.0
    for process in processes:
        try:
            process.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait()


class Deadline:
    """A test's time budget, shared by all its waits."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._end = time.monotonic() + seconds

    def left_s(self) -> float:
        """Seconds left (negative once out of time)."""
        return self._end - time.monotonic()

    def left(self, what: str) -> float:
        """Seconds left before `what` must have happened; fails the test if none are."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"out of time ({self._seconds:g} s) before {what}")
        return left
