"""A lease the worker is told at registration, and heartbeats that keep a long task alive:
a real broker on loopback, real SQLite, a real SDK worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broker import Broker
from tests.support.config import make_config
from tests.support.workers import until_workers
from worker_sdk import Client, TaskContext, TaskState, Worker

LEASE_S = 1.0
RUN_S = 2.5  # longer than two leases


async def test_a_task_longer_than_its_lease_finishes_once(tmp_path: Path) -> None:
    # The pool was made with a 1 s lease when the broker beat every 0.25 s; the broker now
    # asks for a heartbeat only every 2 s. The worker must still renew the lease in time.
    first = Broker(make_config(tmp_path, heartbeat_interval_s=0.25))
    async with first, Client(first.address) as client:
        await client.create_pool("long", lease_s=LEASE_S)
    config = make_config(tmp_path, heartbeat_interval_s=2.0, heartbeat_timeout_s=10.0)
    async with Broker(config) as broker:
        runs = 0
        worker = Worker(capacity=1, pool="long")

        @worker.task("slow")
        async def slow(ctx: TaskContext) -> str:
            nonlocal runs
            runs += 1
            await asyncio.sleep(RUN_S)
            return "done"

        run = asyncio.create_task(worker.run(broker.address))
        try:
            async with Client(broker.address) as client:
                await until_workers(client, pool="long")
                task_id = await client.submit("slow", pool="long")
                task = await client.wait(task_id, timeout=4 * RUN_S)
                (stats,) = [p for p in (await client.stats()).pools if p.pool == "long"]
        finally:
            await worker.shutdown(grace=2)
            await run
    assert (task.state, task.result, runs) == (TaskState.SUCCEEDED, b"done", 1)
    assert stats.lease_expired == 0
    assert worker.lease_s == LEASE_S  # as told at registration


async def test_a_pool_without_a_lease_tells_the_heartbeat_timeout(tmp_path: Path) -> None:
    config = make_config(tmp_path, heartbeat_interval_s=0.5, heartbeat_timeout_s=3.0)
    async with Broker(config) as broker:
        worker = Worker(capacity=1)

        @worker.task("t")
        async def t(ctx: TaskContext) -> None:
            return None

        assert worker.lease_s is None
        run = asyncio.create_task(worker.run(broker.address))
        try:
            async with asyncio.timeout(10):  # until the worker has read the registration
                while worker.lease_s is None:
                    await asyncio.sleep(0.01)
            assert worker.lease_s == 3.0
        finally:
            await worker.shutdown(grace=2)
            await run
