"""A broker with its dashboard on, real worker processes, and headless Chromium driven by
Playwright: what the dashboard's browser tests share."""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page

from broker.http import hash_token
from tests.support.processes import Deadline, Process, child_env, logs, spawn
from worker_sdk import SyncClient

# Debian's chromium: Playwright drives it through executable_path (make install puts it
# there when it is missing).
CHROMIUM = "/usr/bin/chromium"
# Set to a directory to have the tests write screenshots of the pages there (the
# README's images: deploy/screenshots).
SCREENSHOTS_ENV = "TASKBROKER_SCREENSHOTS"
LISTENING = re.compile(r"taskbroker listening on (\S+) \(db ")
START_S = 30.0

WORKER_MODULE = """
import os
import pathlib

from worker_sdk import TaskContext, Worker

worker = Worker(
    capacity=2,
    worker_id=os.environ["DASHBOARD_WORKER_ID"],
    labels={"zone": os.environ["DASHBOARD_ZONE"], "owner": "<b>ops</b>"},
)
FAIL_WHILE = pathlib.Path(os.environ["DASHBOARD_FAIL_WHILE"])


@worker.task("echo")
def echo(ctx: TaskContext) -> bytes:
    return ctx.payload


@worker.task("boom")
def boom(ctx: TaskContext) -> None:
    raise ValueError(ctx.payload.decode(errors="replace"))


@worker.task("flaky")
def flaky(ctx: TaskContext) -> bytes:
    if FAIL_WHILE.exists():
        raise RuntimeError("the downstream service is down")
    return b"ok now"
"""


@dataclass
class Stack:
    """A running broker (address, dashboard URL), its workers and the tokens."""

    workdir: Path
    address: str
    url: str
    broker: Process
    workers: list[Process]
    admin_token: str
    read_token: str
    fail_while: Path  # the `flaky` task fails while this file exists

    def logs(self) -> str:
        return logs([self.broker, *self.workers])


class ThreadedClient:
    """A SyncClient on a thread of its own: Playwright's sync API runs an event loop in the
    test's thread, where a SyncClient refuses to run. Its methods block as SyncClient's do."""

    def __init__(self, address: str) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sdk-client")
        self._client = self._thread.submit(SyncClient, address).result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._thread.submit(method, *args, **kwargs).result()

        return call

    def close(self) -> None:
        self._thread.submit(self._client.close).result()
        self._thread.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_stack(workdir: Path, worker_ids: tuple[str, ...] = ("w-a", "w-b")) -> Stack:
    """A broker process serving its dashboard, with a `batch` pool no worker serves, and
    one worker process per id in pool `default`."""
    admin_token, read_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = workdir / "dashboard.tokens"
    tokens.write_text(
        f"# sha256 role name\n{hash_token(admin_token)} admin ops\n"
        f"{hash_token(read_token)} read viewer\n"
    )
    port = free_port()
    config = workdir / "broker.toml"
    config.write_text(
        f'[broker]\ndashboard_port = {port}\ndashboard_tokens = "{tokens}"\n'
        "metrics_flush_s = 1.0\n\n[pools.batch]\n"
    )
    argv = [sys.executable, "-m", "cli.main", "serve", "--config", str(config)]
    argv += ["--port", "0", "--db", str(workdir / "broker.db")]
    broker = spawn("broker", argv, workdir, child_env())
    deadline = Deadline(START_S)
    address = _wait(lambda: _listening(broker), "the broker listens", deadline, [broker])
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _answers(f"{url}/login"), "the dashboard answers", deadline, [broker])
    (workdir / "dashboard_worker.py").write_text(WORKER_MODULE)
    fail_while = workdir / "fail-while"
    workers = []
    for n, worker_id in enumerate(worker_ids):
        env = child_env(
            {
                "DASHBOARD_WORKER_ID": worker_id,
                "DASHBOARD_ZONE": f"zone-{n}",
                "DASHBOARD_FAIL_WHILE": str(fail_while),
            }
        )
        argv = [sys.executable, "-m", "cli.main", "worker", "run", "dashboard_worker:worker"]
        workers.append(spawn(worker_id, [*argv, "--broker", address], workdir, env))
    return Stack(workdir, address, url, broker, workers, admin_token, read_token, fail_while)


def _listening(process: Process) -> str | None:
    match = LISTENING.search(process.log.read_text(errors="replace"))
    return match.group(1) if match else None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait(
    condition: Callable[[], Any], what: str, deadline: Deadline, processes: list[Process]
) -> Any:
    while not (value := condition()):
        for process in processes:
            if process.popen.poll() is not None:
                raise AssertionError(f"exited before {what}\n{logs(processes)}")
        deadline.left(what)
        time.sleep(0.05)
    return value


def sign_in(browser: Browser, url: str, token: str) -> Page:
    """A fresh browser context signed in with `token`, on the overview."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(f"{url}/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    return page


def screenshot(page: Page, name: str) -> None:
    """Save the page as NAME.png in $TASKBROKER_SCREENSHOTS, when that is set."""
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    return ticks / os.sysconf("SC_CLK_TCK")
