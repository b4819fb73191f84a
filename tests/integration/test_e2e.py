"""End to end in one process: a real broker on loopback, real SDK workers and clients."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import Broker
from broker.core.states import BrokerState
from tests.support.config import make_config
from tests.support.workers import start_worker
from worker_sdk import (
    Client,
    NotFound,
    TaskContext,
    TaskFailed,
    TaskRequest,
    TaskState,
    Worker,
)


def demo_worker(capacity: int = 8, worker_id: str | None = None) -> Worker:
    worker = Worker(capacity=capacity, worker_id=worker_id)

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    @worker.task("add")
    def add(ctx: TaskContext) -> object:
        numbers = ctx.json()
        return {"sum": sum(numbers), "thread": threading.get_ident()}

    @worker.task("boom")
    async def boom(ctx: TaskContext) -> None:
        raise ValueError(f"cannot handle {ctx.payload!r}")

    @worker.task("wait")
    async def wait(ctx: TaskContext) -> None:
        await asyncio.sleep(30)

    return worker


@pytest.fixture
async def running_worker(broker: Broker) -> AsyncIterator[Worker]:
    worker = demo_worker()
    run = await start_worker(worker, broker.address)
    yield worker
    await worker.shutdown(grace=2)
    await run


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[Client]:
    async with Client(broker.address) as c:
        yield c


@pytest.mark.usefixtures("running_worker")
async def test_submit_and_get_the_result(client: Client) -> None:
    task_id = await client.submit("echo", b"hello")
    assert await client.result(task_id, timeout=10) == b"hello"
    info = await client.get(task_id)
    assert info.state is TaskState.SUCCEEDED
    assert info.attempts == 1
    assert info.worker_id
    assert info.created_at is not None
    assert info.finished_at is not None


@pytest.mark.usefixtures("running_worker")
async def test_sync_handler_runs_off_the_loop_with_json(client: Client) -> None:
    task_id = await client.submit("add", json=[1, 2, 3])
    info = await client.wait(task_id, timeout=10)
    assert info.state is TaskState.SUCCEEDED
    assert info.json()["sum"] == 6
    assert info.json()["thread"] != threading.get_ident()


@pytest.mark.usefixtures("running_worker")
async def test_failure_carries_type_message_and_traceback(client: Client) -> None:
    task_id = await client.submit("boom", b"x")
    with pytest.raises(TaskFailed) as info:
        await client.result(task_id, timeout=10)
    error = info.value.task.error
    assert info.value.task.state is TaskState.FAILED
    assert error is not None
    assert error.type == "ValueError"
    assert "cannot handle" in error.message
    assert "Traceback" in error.traceback


@pytest.mark.usefixtures("running_worker")
async def test_thousands_of_tasks_over_the_stream(client: Client) -> None:
    ids = await asyncio.gather(*(client.submit("echo", str(i)) for i in range(3000)))
    assert len(set(ids)) == 3000
    infos = await asyncio.gather(*(client.wait(i, timeout=30) for i in ids))
    assert [info.result for info in infos] == [str(i).encode() for i in range(3000)]


@pytest.mark.usefixtures("running_worker")
async def test_batch_submit_and_list(client: Client) -> None:
    ids = await client.submit_many(
        [TaskRequest(task_type="echo", payload=b"a", priority=p) for p in (1, 2)]
    )
    await client.wait_many(ids, timeout=10)
    listed = await client.list_tasks(states=[TaskState.SUCCEEDED])
    assert {t.id for t in listed} >= set(ids)


@pytest.mark.usefixtures("running_worker")
async def test_cancel_a_running_task(client: Client) -> None:
    task_id = await client.submit("wait")
    async with asyncio.timeout(10):
        while (await client.get(task_id)).state is not TaskState.RUNNING:
            await asyncio.sleep(0.01)
    cancelled = await client.cancel(task_id)
    assert cancelled.state is TaskState.CANCELLED
    (worker,) = await client.list_workers()
    assert worker.in_flight == 0


async def test_priorities_order_the_queue(broker: Broker, client: Client) -> None:
    low = [await client.submit("record", b"low", priority=-5) for _ in range(3)]
    high = [await client.submit("record", b"high", priority=5) for _ in range(3)]
    order: list[bytes] = []
    worker = Worker(capacity=1)

    @worker.task("record")
    async def record(ctx: TaskContext) -> None:
        order.append(ctx.payload)

    run = asyncio.create_task(worker.run(broker.address))
    await client.wait_many(low + high, timeout=10)
    await worker.shutdown(grace=2)
    await run
    assert order == [b"high"] * 3 + [b"low"] * 3


async def test_drain_makes_the_worker_finish_and_leave(broker: Broker, client: Client) -> None:
    worker = demo_worker(worker_id="drain-me")
    run = await start_worker(worker, broker.address)
    status = await client.drain_worker("drain-me")
    assert status.draining
    async with asyncio.timeout(10):
        await run
    assert await client.list_workers() == []


async def test_wait_many_watches_more_task_ids_than_one_message_holds(
    client: Client, running_worker: Worker
) -> None:
    # A stream message holds at most 10,000 watch_task_ids; the client sends the rest after.
    ids: list[str] = []
    for start in range(0, 10_050, 1000):
        count = min(1000, 10_050 - start)
        ids += await client.submit_many(TaskRequest("echo", b"") for _ in range(count))
    infos = await client.wait_many(ids, timeout=60)
    assert [info.id for info in infos] == ids
    assert {info.state for info in infos} == {TaskState.SUCCEEDED}


@pytest.mark.usefixtures("running_worker")
async def test_run_returns_each_task_finished(client: Client) -> None:
    done = await client.run(TaskRequest("echo", b"one"))
    assert (done.state, done.result) == (TaskState.SUCCEEDED, b"one")
    failed = await client.run(TaskRequest("boom", b"two"))
    assert failed.state is TaskState.FAILED
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    many = await asyncio.gather(*(client.run(TaskRequest("echo", b"%d" % i)) for i in range(200)))
    assert [info.result for info in many] == [str(i).encode() for i in range(200)]


async def test_unknown_task_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        await client.get("123456")
    with pytest.raises(NotFound):
        await client.wait("123456", timeout=1)


async def test_restart_completes_every_task_exactly_once(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with Broker(config) as broker, Client(broker.address) as client:
        ids = await asyncio.gather(*(client.submit("echo", str(i)) for i in range(200)))
    async with Broker(config) as broker, Client(broker.address) as client:
        stats = await client.stats()
        assert {p.pool: p.pending for p in stats.pools}["default"] == 200
        worker = demo_worker(capacity=16)
        run = asyncio.create_task(worker.run(broker.address))
        infos = await client.wait_many(ids, timeout=30)
        await worker.shutdown(grace=2)
        await run
    assert all(info.state is TaskState.SUCCEEDED for info in infos)
    assert all(info.attempts == 1 for info in infos)
    assert [info.result for info in infos] == [str(i).encode() for i in range(200)]
    async with Broker(config) as broker, Client(broker.address) as client:
        listed = await client.list_tasks(limit=1000)
        assert len(listed) == 200
        assert {t.state for t in listed} == {TaskState.SUCCEEDED}
        (default,) = [p for p in (await client.stats()).pools if p.pool == "default"]
        assert (default.pending, default.active, default.succeeded) == (0, 0, 200)


async def test_graceful_shutdown_lets_held_work_finish(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    release = asyncio.Event()
    worker = Worker(capacity=4)

    @worker.task("slow")
    async def slow(ctx: TaskContext) -> str:
        await release.wait()
        return "finished"

    broker = Broker(config)
    await broker.start()
    run = asyncio.create_task(worker.run(broker.address))
    async with Client(broker.address) as client:
        task_id = await client.submit("slow")
        async with asyncio.timeout(10):
            while (await client.get(task_id)).state is not TaskState.RUNNING:
                await asyncio.sleep(0.01)
    stopping = asyncio.create_task(broker.shutdown(grace=5))
    async with asyncio.timeout(5):
        while broker.state is not BrokerState.DRAINING:
            await asyncio.sleep(0)
    assert not stopping.done()  # draining: it waits for the held task
    release.set()
    await stopping
    await worker.shutdown(grace=1)
    await run
    async with Broker(config) as broker, Client(broker.address) as client:
        info = await client.get(task_id)
    assert info.state is TaskState.SUCCEEDED
    assert info.result == b"finished"


async def test_submit_to_a_stopped_broker_is_unavailable(tmp_path: Path) -> None:
    from worker_sdk import Unavailable

    config = make_config(tmp_path)
    async with Broker(config) as broker:
        address = broker.address
    async with Client(address) as client:
        with pytest.raises(Unavailable):
            await client.submit("echo")
