"""Sticky keys, run-time pool settings and learned statistics, end to end over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from broker import Broker
from tests.support.config import make_config
from worker_sdk import TaskContext, Worker
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc


class Hold:
    """Tasks whose payload is "hold" wait until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()


Running = list[tuple[Worker, asyncio.Task[None]]]


async def start_workers(address: str, hold: Hold, *names: str) -> Running:
    started = []
    for name in names:
        worker = Worker(capacity=1, worker_id=name)

        @worker.task("job")
        async def job(ctx: TaskContext, name: str = name) -> str:
            if ctx.payload == b"hold":
                await hold.release.wait()
            return name

        started.append((worker, asyncio.create_task(worker.run(address))))
    return started


async def stop_workers(workers: Running) -> None:
    for worker, run in workers:
        await worker.shutdown(grace=2)
        await run


async def until_workers(channel: grpc.aio.Channel, count: int) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    async with asyncio.timeout(10):
        while len((await admin.ListWorkers(_admin.ListWorkersRequest())).workers) < count:
            await asyncio.sleep(0.01)


def sticky_spec(key: str, payload: bytes = b"", pool: str = "") -> _tasks.TaskSpec:
    return _tasks.TaskSpec(
        task_type="job", payload=payload, pool=pool, placement=_tasks.Placement(sticky_key=key)
    )


async def run(channel: grpc.aio.Channel, spec: _tasks.TaskSpec) -> _tasks.Task:
    stub = _tasks_grpc.TaskServiceStub(channel)
    task_id = (await stub.Submit(_tasks.SubmitRequest(task=spec))).task_id
    reply = await stub.Wait(_tasks.WaitRequest(task_ids=[task_id], timeout_s=10))
    return reply.tasks[0]


@pytest.fixture
async def hold() -> AsyncIterator[Hold]:
    hold = Hold()
    yield hold
    hold.release.set()


async def test_a_sticky_key_keeps_going_to_its_worker(
    broker: Broker, channel: grpc.aio.Channel, hold: Hold
) -> None:
    workers = await start_workers(broker.address, hold, "a", "b", "c")
    try:
        await until_workers(channel, 3)
        first = await run(channel, sticky_spec("user-42"))
        for _ in range(5):
            again = await run(channel, sticky_spec("user-42"))
            assert again.result == first.result
            assert "sticky: key 'user-42' stays on" in again.placement_note
        stats = await _admin_grpc.AdminServiceStub(channel).Stats(_admin.StatsRequest())
        (default,) = [p for p in stats.pools if p.pool == "default"]
        assert (default.sticky_hits, default.sticky_misses) == (5, 1)
    finally:
        await stop_workers(workers)


async def test_a_sticky_task_falls_back_after_the_timeout(
    broker: Broker, channel: grpc.aio.Channel, hold: Hold
) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    await admin.CreatePool(
        _admin.CreatePoolRequest(pool=_admin.Pool(name="quick", sticky_timeout_s=0.3))
    )
    tasks = _tasks_grpc.TaskServiceStub(channel)
    workers: Running = []
    for name in ("a", "b"):
        worker = Worker(pool="quick", capacity=1, worker_id=name)

        @worker.task("job")
        async def job(ctx: TaskContext, name: str = name) -> str:
            if ctx.payload == b"hold":
                await hold.release.wait()
            return name

        workers.append((worker, asyncio.create_task(worker.run(broker.address))))
    try:
        await until_workers(channel, 2)
        owner = (await run(channel, sticky_spec("k", pool="quick"))).result
        # Keep the key's worker busy; the next task with the key waits, then moves.
        busy = await tasks.Submit(
            _tasks.SubmitRequest(task=sticky_spec("k", b"hold", pool="quick"))
        )
        get_busy = _tasks.GetTaskRequest(task_id=busy.task_id)
        async with asyncio.timeout(10):
            while (await tasks.Get(get_busy)).state != _tasks.TASK_STATE_RUNNING:
                await asyncio.sleep(0.01)
        waiting = await tasks.Submit(_tasks.SubmitRequest(task=sticky_spec("k", pool="quick")))
        get_waiting = _tasks.GetTaskRequest(task_id=waiting.task_id)
        async with asyncio.timeout(5):
            while "waits for worker" not in (await tasks.Get(get_waiting)).placement_note:
                await asyncio.sleep(0.01)
        moved = await tasks.Wait(_tasks.WaitRequest(task_ids=[waiting.task_id], timeout_s=10))
        assert moved.tasks[0].result != owner
        hold.release.set()
        after = await run(channel, sticky_spec("k", pool="quick"))
        assert after.result == moved.tasks[0].result  # the key moved with it
    finally:
        hold.release.set()
        await stop_workers(workers)


async def test_pool_settings_change_at_run_time(channel: grpc.aio.Channel) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    changed = await admin.UpdatePool(
        _admin.UpdatePoolRequest(
            pool=_admin.Pool(
                name="default",
                strategy="least_loaded",
                ab_strategy="round_robin",
                ab_percent=25,
                sticky_timeout_s=1.5,
            )
        )
    )
    assert (changed.strategy, changed.ab_percent) == ("least_loaded", 25)
    pools = {p.name: p for p in (await admin.ListPools(_admin.ListPoolsRequest())).pools}
    assert pools["default"].strategy == "least_loaded"
    assert pools["default"].sticky_timeout_s == 1.5
    bad = [
        (_admin.Pool(name="default", strategy="fastest"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            _admin.Pool(name="default", ab_percent=150, ab_strategy="round_robin"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        # Without a mask only the fields sent change, and ab_strategy is set already;
        # with one, an ab_strategy sent empty clears it, and a split needs one.
        (_admin.Pool(name="default", ab_percent=10), grpc.StatusCode.INVALID_ARGUMENT),
        (_admin.Pool(name="default", sticky_timeout_s=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (_admin.Pool(name="nope"), grpc.StatusCode.NOT_FOUND),
    ]
    for pool, code in bad:
        mask = FieldMask(paths=["ab_percent", "ab_strategy"]) if pool.ab_percent == 10 else None
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.UpdatePool(_admin.UpdatePoolRequest(pool=pool, update_mask=mask))
        assert info.value.code() == code
    pools = {p.name: p for p in (await admin.ListPools(_admin.ListPoolsRequest())).pools}
    assert pools["default"].strategy == "least_loaded"  # the old setting stays


async def test_learned_statistics_and_sticky_keys_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    hold = Hold()
    async with Broker(config) as broker, grpc.aio.insecure_channel(broker.address) as channel:
        workers = await start_workers(broker.address, hold, "a", "b")
        try:
            await until_workers(channel, 2)
            owner = (await run(channel, sticky_spec("user-7"))).result
            for _ in range(4):
                await run(channel, _tasks.TaskSpec(task_type="job"))
            stats = await _admin_grpc.AdminServiceStub(channel).Stats(_admin.StatsRequest())
        finally:
            await stop_workers(workers)
    (default,) = [p for p in stats.pools if p.pool == "default"]
    (runtime,) = default.runtimes
    assert (runtime.task_type, runtime.samples) == ("job", 5)
    assert runtime.predictions == 5
    assert default.arms[0].finished == 5
    async with Broker(config) as broker, grpc.aio.insecure_channel(broker.address) as channel:
        stats = await _admin_grpc.AdminServiceStub(channel).Stats(_admin.StatsRequest())
        (default,) = [p for p in stats.pools if p.pool == "default"]
        assert default.runtimes[0].samples == 5
        workers = await start_workers(broker.address, hold, "a", "b")
        try:
            await until_workers(channel, 2)
            again = await run(channel, sticky_spec("user-7"))
            assert again.result == owner
            assert "sticky" in again.placement_note
        finally:
            await stop_workers(workers)


async def test_keyed_tasks_hash_to_one_worker(broker: Broker, channel: grpc.aio.Channel) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    await admin.CreatePool(
        _admin.CreatePoolRequest(pool=_admin.Pool(name="keyed", strategy="consistent_hash"))
    )
    workers: Running = []
    for name in ("a", "b", "c"):
        worker = Worker(pool="keyed", capacity=4, worker_id=name)

        @worker.task("job")
        async def job(ctx: TaskContext, name: str = name) -> str:
            return name

        workers.append((worker, asyncio.create_task(worker.run(broker.address))))
    try:
        await until_workers(channel, 3)
        where: dict[str, set[bytes]] = {}
        for key in ("tenant-1", "tenant-2", "tenant-3", "tenant-4"):
            for _ in range(5):  # one at a time: the load bound never pushes a key away
                spec = _tasks.TaskSpec(
                    task_type="job", pool="keyed", placement=_tasks.Placement(routing_key=key)
                )
                done = await run(channel, spec)
                assert done.spec.placement.routing_key == key
                where.setdefault(key, set()).add(done.result)
        assert all(len(ran_on) == 1 for ran_on in where.values()), where
    finally:
        await stop_workers(workers)


async def test_an_adaptive_pool_says_which_strategy_it_runs(
    broker: Broker, channel: grpc.aio.Channel
) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    await admin.CreatePool(
        _admin.CreatePoolRequest(pool=_admin.Pool(name="smart", strategy="adaptive"))
    )
    worker = Worker(pool="smart", capacity=2, worker_id="only")

    @worker.task("job")
    async def job(ctx: TaskContext) -> str:
        return "done"

    running = asyncio.create_task(worker.run(broker.address))
    try:
        await until_workers(channel, 1)
        done = await run(channel, _tasks.TaskSpec(task_type="job", pool="smart"))
        assert done.placement_note.startswith(("least_loaded", "adaptive"))
        stats = await admin.Stats(_admin.StatsRequest())
        (smart,) = [p for p in stats.pools if p.pool == "smart"]
        assert smart.strategy == "adaptive"
        assert any("adaptive: active" in note for note in smart.strategy_notes)
    finally:
        await worker.shutdown(grace=2)
        await running
