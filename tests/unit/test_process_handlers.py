"""Worker(sync_handlers="process"): what it refuses before it starts a child."""

from __future__ import annotations

import asyncio

import pytest

from worker_sdk import TaskContext, Worker


def test_a_handler_that_does_not_pickle_is_refused_when_run_starts() -> None:
    worker = Worker(sync_handlers="process")

    @worker.task("local")
    def local(ctx: TaskContext) -> None:  # a closure in a test: no module-level name
        return None

    with pytest.raises(TypeError, match=r"'local'.* cannot run in a child process"):
        asyncio.run(worker.run("127.0.0.1:1"))
    assert worker.handler_pids == ()


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="sync_handlers must be 'thread' or 'process'"):
        Worker(sync_handlers="fork")  # type: ignore[arg-type]
