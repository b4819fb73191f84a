"""Running SDK workers against a real broker in the test's process."""

from __future__ import annotations

import asyncio

from worker_sdk import Client, Worker


async def until_workers(client: Client, count: int = 1, pool: str | None = None) -> None:
    """Return once the broker has at least `count` workers (in `pool`); TimeoutError after
    ten seconds."""
    async with asyncio.timeout(10):
        while len(await client.list_workers(pool)) < count:
            await asyncio.sleep(0.01)


async def start_worker(worker: Worker, address: str) -> asyncio.Task[None]:
    """Run the worker in a task; return it once the broker has the worker (the first one
    there). The caller shuts the worker down and awaits the task."""
    run = asyncio.create_task(worker.run(address))
    async with Client(address) as client:
        await until_workers(client)
    return run
