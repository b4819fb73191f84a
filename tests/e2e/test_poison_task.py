"""A task whose handler kills its worker process (os._exit) is not delivered forever:
each lost worker is a failed attempt (WorkerLost), and after max_deliveries the task is
dead-lettered, while other tasks of its type still run on the restarted worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import Broker
from tests.support.config import make_config
from worker_sdk import Client, TaskState

# Real processes for seconds: make test runs it, make test-fast skips it.
pytestmark = pytest.mark.slow

MAX_DELIVERIES = 3
MAX_RESTARTS = 6  # the supervisor gives up after this many (the defect: forever)

WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from worker_sdk import Worker

    worker = Worker(capacity=1, worker_id=f"w-{sys.argv[2]}")

    @worker.task("job")
    async def job(ctx):
        if ctx.payload == b"poison":
            os._exit(1)  # as a segfault or the OOM killer would
        return b"done"

    asyncio.run(worker.run(sys.argv[1]))
    """
)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    config = make_config(
        tmp_path,
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=1.5,
        max_deliveries=MAX_DELIVERIES,
    )
    async with Broker(config) as running:
        yield running


async def test_a_task_that_kills_its_worker_is_dead_lettered_after_max_deliveries(
    broker: Broker, tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        async with Client(broker.address) as client:
            poison = await client.submit("job", b"poison")
            # The supervisor: restart the worker whenever it dies, a bounded number of times.
            while len(workers) <= MAX_RESTARTS:
                workers.append(
                    subprocess.Popen(
                        [sys.executable, str(script), broker.address, str(len(workers))]
                    )
                )
                async with asyncio.timeout(30):
                    while workers[-1].poll() is None:
                        if (await client.get(poison)).state.terminal:
                            break
                        await asyncio.sleep(0.05)
                if workers[-1].poll() is None:
                    break  # the task ended: this worker lives on
            info = await client.get(poison)
            assert info.state is TaskState.DEAD_LETTER, info
            assert info.attempts == MAX_DELIVERIES
            assert info.error is not None
            assert info.error.type == "WorkerLost"
            assert [w.returncode for w in workers[:-1]] == [1] * MAX_DELIVERIES
            # Another task of the same type, submitted afterwards, still runs.
            good = await client.submit("job", b"fine")
            (done,) = await client.wait_many([good], timeout=20)
            assert (done.state, done.result) == (TaskState.SUCCEEDED, b"done")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
