"""Waits ride out a broker restart: a real broker restarted on the same port and file while
a client waits on a task a real worker holds."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from broker import Broker
from tests.support.config import make_config
from worker_sdk import Client, DeadlineExceeded, TaskContext, TaskState, Worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_wait_rides_out_a_broker_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path, port=free_port())
    started = asyncio.Event()
    release = asyncio.Event()
    worker = Worker(capacity=2, reconnect_initial_s=0.01, reconnect_max_s=0.1)

    @worker.task("gate")
    async def gate(ctx: TaskContext) -> bytes:
        started.set()
        await release.wait()
        return b"through"

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    broker = Broker(config)
    await broker.start()
    run = asyncio.create_task(worker.run(broker.address))
    try:
        async with Client(broker.address) as client:
            quick = await client.submit("echo", b"before")
            held = await client.submit("gate")
            async with asyncio.timeout(10):
                await started.wait()
            assert (await client.wait(quick, timeout=10)).result == b"before"
            waits = asyncio.create_task(client.wait_many([quick, held], timeout=60))
            one = asyncio.create_task(client.wait(held, timeout=60))
            result = asyncio.create_task(client.result(held, timeout=60))
            await broker.shutdown(grace=0)
            broker = Broker(config)  # the same port and file
            await broker.start()
            release.set()
            infos = await waits
            assert [i.state for i in infos] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED]
            assert [i.result for i in infos] == [b"before", b"through"]
            assert (await one).result == b"through"
            assert await result == b"through"
            # The task was acknowledged once: it is still one task, and it is finished.
            assert [t.id for t in await client.list_tasks(limit=10)] == [held, quick]
    finally:
        await worker.shutdown(grace=1)
        await run
        await broker.shutdown(grace=0)


async def test_a_wait_still_times_out_while_the_broker_stays_down(tmp_path: Path) -> None:
    config = make_config(tmp_path, port=free_port())
    async with Broker(config) as broker, Client(broker.address) as client:
        task_id = await client.submit("nobody-runs-this")
        waiting = asyncio.create_task(client.wait(task_id, timeout=1.5))
        begun = time.monotonic()
        await broker.shutdown(grace=0)
        with pytest.raises(DeadlineExceeded, match=f"task {task_id} did not finish within 1.5s"):
            await waiting
        assert 1.0 < time.monotonic() - begun < 4.0
