"""Child `taskbroker` processes for the demo: start, wait until ready, stop in order."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cli._errors import CliError

LISTENING = re.compile(r"taskbroker listening on (\S+)")


@dataclass
class Child:
    """A running `taskbroker` subprocess whose stdout and stderr go to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def last_log_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return next((line.strip() for line in reversed(lines) if line.strip()), "")


def cli_command(*args: str) -> list[str]:
    """The argv that runs `taskbroker ARGS...` with this same Python."""
    return [sys.executable, "-m", "cli.main", *args]


def clean_env() -> dict[str, str]:
    """This environment without TASKBROKER_* settings, so a child sees only its flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(name: str, args: list[str], *, cwd: Path) -> Child:
    """Start `taskbroker ARGS...` in `cwd`, logging to `cwd/NAME.log`.

    A new session keeps the terminal's Ctrl-C away from the child, so that the
    parent stops its children in order (workers, then the broker).
    """
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cli_command(*args),
            cwd=cwd,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def wait_listening(child: Child, timeout: float) -> str:
    """The address from the child's "taskbroker listening on" line, waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        match = LISTENING.search(child.log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        code = child.process.poll()
        if code is not None:
            raise CliError(
                f"the {child.name} exited with code {code} before it was ready: "
                f"{child.last_log_line() or 'no output'}"
            )
        if time.monotonic() > deadline:
            raise CliError(f"the {child.name} was not ready within {timeout:g} s")
        time.sleep(0.05)


def stop_all(children: list[Child], timeout: float = 5.0) -> None:
    """SIGTERM the children together, wait up to `timeout` s, then SIGKILL stragglers."""
    try:
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
    finally:  # also on a second Ctrl-C: leave nothing running
        for child in children:
            if child.process.poll() is None:
                child.process.kill()
                child.process.wait()
