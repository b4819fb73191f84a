"""A worker process that dies (SIGKILL) or hangs (SIGSTOP) loses nothing: its tasks run
again on another worker, within the heartbeat timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker import Broker
from tests.support.config import make_config
from worker_sdk import Client, TaskContext, TaskInfo, TaskState, Worker

HEARTBEAT_INTERVAL_S = 0.2
HEARTBEAT_TIMEOUT_S = 1.5
# How late after the timeout the tasks may finish: the reaper runs once per heartbeat
# interval, then the rescuer needs a moment to run and report them (more on a loaded
# machine running the whole suite).
MARGIN_S = 1.5

STUCK_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from worker_sdk import Worker

    worker = Worker(capacity=4, worker_id="doomed")

    @worker.task("job")
    async def job(ctx):
        await asyncio.sleep(3600)

    asyncio.run(worker.run(sys.argv[1]))
    """
)


@pytest.fixture
async def quick_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    config = make_config(
        tmp_path,
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
    )
    async with Broker(config) as running:
        yield running


async def heard_from_since(client: Client, worker_id: str, since: datetime) -> bool:
    for info in await client.list_workers():
        if info.worker_id == worker_id and info.last_heartbeat is not None:
            return info.last_heartbeat > since
    return False


async def run_doomed_worker(
    broker: Broker, tmp_path: Path, fate: signal.Signals
) -> tuple[list[TaskInfo], float]:
    """Four tasks stuck on a worker process that then meets `fate`; they must complete on
    a rescuer. Returns them, and the seconds from the signal to the last completion."""
    script = tmp_path / "stuck_worker.py"
    script.write_text(STUCK_WORKER)
    doomed = subprocess.Popen([sys.executable, str(script), broker.address])
    rescuer = Worker(capacity=4, worker_id="rescuer")

    @rescuer.task("job")
    async def job(ctx: TaskContext) -> str:
        return f"attempt {ctx.attempt}"

    run: asyncio.Task[None] | None = None
    try:
        async with Client(broker.address) as client:
            async with asyncio.timeout(20):
                while not await client.list_workers():
                    await asyncio.sleep(0.02)
            ids = [await client.submit("job", str(i)) for i in range(4)]
            async with asyncio.timeout(20):
                while {(await client.get(i)).state for i in ids} != {TaskState.RUNNING}:
                    await asyncio.sleep(0.02)
            # (The wire rounds times to the millisecond: one more keeps a start notice
            # from passing for a later message.)
            running_at = datetime.now(UTC) + timedelta(milliseconds=1)
            run = asyncio.create_task(rescuer.run(broker.address))
            async with asyncio.timeout(20):
                while len(await client.list_workers()) < 2:
                    await asyncio.sleep(0.02)
                # A heartbeat since all four run, so each task's lease ends with the
                # worker's silence: a lease ending earlier (renewed last by a start
                # notice) would requeue the task while its worker still counts as alive,
                # and it could go back to it, for one more attempt.
                while not await heard_from_since(client, "doomed", running_at):
                    await asyncio.sleep(0.02)
            os.kill(doomed.pid, fate)
            signalled = time.monotonic()
            infos = await client.wait_many(ids, timeout=20)
            elapsed = time.monotonic() - signalled
    finally:
        if run is not None:
            await rescuer.shutdown(grace=2)
            await run
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=10)
    assert all(info.state is TaskState.SUCCEEDED for info in infos)
    assert all(info.worker_id == "rescuer" for info in infos)
    assert all(info.attempts == 2 for info in infos)
    assert [info.result for info in infos] == [b"attempt 2"] * 4
    return infos, elapsed


async def test_a_killed_worker_s_tasks_complete_on_another_after_the_resume_window(
    quick_broker: Broker, tmp_path: Path
) -> None:
    # The stream breaks with the process, but a broken stream looks the same as a broken
    # connection: the tasks are kept for the resume window (the lease, at most the
    # heartbeat timeout), in case the worker reconnects and resumes; then they go.
    _, elapsed = await run_doomed_worker(quick_broker, tmp_path, signal.SIGKILL)
    assert elapsed <= HEARTBEAT_TIMEOUT_S + MARGIN_S


async def test_a_hung_worker_s_tasks_complete_on_another_within_the_timeout(
    quick_broker: Broker, tmp_path: Path
) -> None:
    # A stopped process keeps its connection open: only its silence gives it away.
    _, elapsed = await run_doomed_worker(quick_broker, tmp_path, signal.SIGSTOP)
    assert elapsed <= HEARTBEAT_TIMEOUT_S + MARGIN_S
