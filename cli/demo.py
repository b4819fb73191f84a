"""The demo: a worker with a few task types, and `taskbroker demo`, which runs it end to end.

`worker` can be run on its own: ``taskbroker worker run cli.demo:worker``.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli._errors import EXIT_INTERRUPTED, CliError
from cli._procs import Child, spawn, stop_all, wait_listening
from worker_sdk import Client, DeadlineExceeded, TaskContext, TaskInfo, TaskState, Worker

CAPACITY = 4
worker = Worker(capacity=CAPACITY, labels={"role": "demo"})


@worker.task("sleep")
async def sleep(ctx: TaskContext) -> dict[str, int]:
    """Sleep for payload ``{"ms": N}`` milliseconds: stands in for I/O-bound work."""
    ms = int(ctx.json()["ms"])
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


@worker.task("hash")
def hash_payload(ctx: TaskContext) -> str:
    """The SHA-256 of the payload, in hex: stands in for CPU-bound work."""
    return hashlib.sha256(ctx.payload).hexdigest()


@worker.task("divide")
def divide(ctx: TaskContext) -> float:
    """Payload ``{"a": x, "b": y}`` gives x / y; the demo sends some b = 0 to show failures."""
    args = ctx.json()
    return float(args["a"]) / float(args["b"])


PRIORITIES = {"high": 10, "normal": 0, "low": -10}
WORKERS = 2
READY_TIMEOUT_S = 15.0
RUN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DemoTask:
    task_type: str
    payload: Any
    priority: int


def make_tasks(count: int, seed: int = 7) -> list[DemoTask]:
    """A reproducible mix: mostly sleeps, some hashes, a few divisions (some by zero)."""
    rng = random.Random(seed)
    tasks = []
    for _ in range(count):
        level = rng.choices(list(PRIORITIES), weights=[2, 5, 3])[0]
        kind = rng.random()
        if kind < 0.6:
            task = DemoTask("sleep", {"ms": rng.randint(100, 300)}, PRIORITIES[level])
        elif kind < 0.9:
            text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=1024))
            task = DemoTask("hash", text, PRIORITIES[level])
        else:
            task = DemoTask("divide", {"a": rng.randint(1, 100), "b": rng.randint(0, 1)}, 0)
        tasks.append(task)
    return tasks


@dataclass
class Tally:
    """What has finished so far, for the live view and the summary: `done` counts the
    tasks that succeeded, `failed` the others (failed, cancelled, dead-lettered)."""

    submitted: Counter[int] = field(default_factory=Counter)
    done: Counter[int] = field(default_factory=Counter)
    failed: Counter[int] = field(default_factory=Counter)
    queued_ms: Counter[int] = field(default_factory=Counter)
    by_worker: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, task: TaskInfo) -> None:
        if task.state is TaskState.SUCCEEDED:
            self.done[task.priority] += 1
        else:
            self.failed[task.priority] += 1
            self.errors[task.error.type if task.error else task.state.value] += 1
        if task.worker_id:
            self.by_worker[task.worker_id] += 1
        if task.created_at and task.assigned_at:
            queued = task.assigned_at - task.created_at
            self.queued_ms[task.priority] += int(queued.total_seconds() * 1000)

    def priority_table(self) -> Table:
        table = Table(title="by priority", title_justify="left")
        for column in ("priority", "submitted", "done", "failed", "avg wait in queue"):
            table.add_column(column, justify="right")
        for name, priority in PRIORITIES.items():
            finished = self.done[priority] + self.failed[priority]
            wait = f"{self.queued_ms[priority] / finished:.0f} ms" if finished else "-"
            table.add_row(
                f"{name} ({priority})",
                str(self.submitted[priority]),
                str(self.done[priority]),
                str(self.failed[priority]),
                wait,
            )
        return table

    def worker_table(self) -> Table:
        table = Table(title="by worker", title_justify="left")
        table.add_column("worker")
        table.add_column("tasks run", justify="right")
        for worker_id, count in sorted(self.by_worker.items()):
            table.add_row(worker_id, str(count))
        return table


def run_demo(count: int = 300, *, dashboard_port: int = 0, stay: bool = False) -> None:
    """Run broker and workers as subprocesses in a temporary directory; always clean up."""
    console = Console(highlight=False)
    workdir = Path(tempfile.mkdtemp(prefix="taskbroker-demo-"))
    brokers: list[Child] = []
    workers: list[Child] = []
    try:
        address = _start(console, workdir, brokers, workers, dashboard_port)
        asyncio.run(_run(console, address, count))
        if stay:
            console.print("[dim]broker and workers stay up; Ctrl-C stops them[/dim]")
            while brokers[0].process.poll() is None:
                time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\ninterrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        console.print("[dim]stopping workers and broker (SIGTERM)...[/dim]")
        stop_all(workers)
        stop_all(brokers)
        shutil.rmtree(workdir, ignore_errors=True)
        console.print(f"[dim]stopped; removed {workdir}[/dim]")


def _start(
    console: Console,
    workdir: Path,
    brokers: list[Child],
    workers: list[Child],
    dashboard_port: int = 0,
) -> str:
    console.print(f"[bold]Taskbroker demo[/bold] in {workdir}")
    db = workdir / "demo.db"
    args = ["serve", "--port", "0", "--db", str(db)]
    token = ""
    if dashboard_port:
        token = secrets.token_urlsafe(18)
        digest = hashlib.sha256(token.encode()).hexdigest()
        (workdir / "dashboard.tokens").write_text(f"{digest} admin demo\n")
        (workdir / "demo.toml").write_text(
            f'[broker]\ndashboard_port = {dashboard_port}\ndashboard_tokens = "dashboard.tokens"\n'
            "metrics_flush_s = 2.0\n"
        )
        args += ["--config", "demo.toml"]
    broker = spawn("broker", args, cwd=workdir)
    brokers.append(broker)
    address = wait_listening(broker, READY_TIMEOUT_S)
    console.print(f"broker listening on {address} (pid {broker.process.pid}, SQLite {db.name})")
    if token:
        console.print(f"dashboard on http://127.0.0.1:{dashboard_port}/ (sign in with {token})")
    for n in range(1, WORKERS + 1):
        args = ["worker", "run", "cli.demo:worker", "--broker", address]
        workers.append(spawn(f"worker-{n}", args, cwd=workdir))
    return address


async def _run(console: Console, address: str, count: int) -> None:
    async with Client(address) as client:
        connected = await _wait_for_workers(client, WORKERS)
        console.print(f"{connected} workers connected (capacity {CAPACITY} each)")
        tasks = make_tasks(count)
        started = time.monotonic()
        # Concurrent submits share the client's one stream, in batches.
        ids = await asyncio.gather(
            *(client.submit(t.task_type, json=t.payload, priority=t.priority) for t in tasks)
        )
        console.print(
            f"submitted {len(ids)} tasks in {time.monotonic() - started:.2f} s "
            f"(priorities high={PRIORITIES['high']}, normal=0, low={PRIORITIES['low']})"
        )
        tally = Tally(submitted=Counter(t.priority for t in tasks))
        await _follow(console, client, ids, tally)
        elapsed = time.monotonic() - started
    _summary(console, tally, count, elapsed)


async def _wait_for_workers(client: Client, expected: int) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        workers = await client.list_workers()
        if len(workers) >= expected:
            return len(workers)
        if time.monotonic() > deadline:
            raise CliError(
                f"only {len(workers)} of {expected} workers connected within {READY_TIMEOUT_S:g} s"
            )
        await asyncio.sleep(0.1)


async def _follow(console: Console, client: Client, ids: list[str], tally: Tally) -> None:
    progress = Progress(
        TextColumn("running"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    bar = progress.add_task("tasks", total=len(ids))

    def view() -> Group:
        return Group(progress, tally.priority_table(), tally.worker_table())

    waits = [asyncio.ensure_future(client.wait(i, timeout=RUN_TIMEOUT_S)) for i in ids]
    try:
        with Live(view(), console=console, refresh_per_second=10) as live:
            for finished in asyncio.as_completed(waits):
                tally.add(await finished)
                progress.advance(bar)
                live.update(view())
        console.print()
    except DeadlineExceeded:
        raise CliError(f"the demo tasks did not finish within {RUN_TIMEOUT_S:g} s") from None
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def _summary(console: Console, tally: Tally, count: int, elapsed: float) -> None:
    failed = sum(tally.failed.values())
    errors = ", ".join(f"{n} {name}" for name, n in tally.errors.items()) or "none"
    console.print(
        f"[bold]done:[/bold] {count} tasks in {elapsed:.1f} s ({count / elapsed:.0f} tasks/s); "
        f"{count - failed} succeeded, {failed} failed on purpose ({errors}); "
        f"{len(tally.by_worker)} workers shared the work."
    )
    console.print(
        "Higher priorities wait less; every 10th dispatch takes the oldest task "
        "whatever its priority, so low priorities are never starved."
    )
