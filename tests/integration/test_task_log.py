"""The task log: at debug level, a real broker writes a submit and a completion per task to
the JSON log, with the task's fields; at info, neither."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker import Broker
from broker.observability.logs import configure
from tests.support.config import make_config
from tests.support.workers import start_worker
from worker_sdk import Client, TaskContext, Worker


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in ("aiosqlite", "asyncio", "grpc")}
    yield
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def echo_worker() -> Worker:
    worker = Worker(capacity=2, worker_id="w-log")

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    return worker


async def run_one(tmp_path: Path, level: str) -> tuple[str, list[dict[str, Any]]]:
    out = io.StringIO()
    configure("json", level, out)
    async with Broker(make_config(tmp_path)) as broker, Client(broker.address) as client:
        worker = echo_worker()
        run = await start_worker(worker, broker.address)
        task_id = await client.submit("echo", b"hi")
        await client.wait_many([task_id], timeout=10)
        await worker.shutdown(grace=2)
        await run
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    return task_id, [e for e in entries if e["logger"] == "taskbroker.tasks"]


@pytest.mark.usefixtures("restore_logging")
async def test_a_submit_and_a_completion_are_in_the_json_log(tmp_path: Path) -> None:
    task_id, entries = await run_one(tmp_path, "debug")
    mine = [e for e in entries if str(e.get("task_id")) == task_id]
    assert [(e["level"], e["message"].split()[2]) for e in mine] == [
        ("debug", "submitted"),
        ("debug", "succeeded"),
    ], mine
    done = mine[1]
    assert done["message"].startswith(f"task {task_id} succeeded after 1 attempt(s)")
    assert (done["pool"], done["task_type"], done["worker_id"]) == ("default", "echo", "w-log")


@pytest.mark.usefixtures("restore_logging")
async def test_at_info_a_task_that_succeeds_is_not_logged(tmp_path: Path) -> None:
    _, entries = await run_one(tmp_path, "info")
    assert entries == []
