"""Placement hints end to end: real gRPC, real SDK workers with labels, a SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker import Broker
from tests.support.config import make_config
from worker_sdk import TaskContext, Worker
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc


class Fleet:
    """SDK workers in this process, each recording which tasks it ran at the same time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.ran: dict[str, list[str]] = {}
        self.concurrent_groups: list[tuple[str, str]] = []
        self._running: dict[str, list[str]] = {}
        self._workers: list[tuple[Worker, asyncio.Task[None]]] = []

    def start(self, worker_id: str, capacity: int = 4, **labels: str) -> None:
        worker = Worker(capacity=capacity, worker_id=worker_id, labels=labels)
        self.ran[worker_id] = []
        self._running[worker_id] = []

        @worker.task("job")
        async def job(ctx: TaskContext) -> str:
            group = ctx.payload.decode()
            if group and group in self._running[worker_id]:
                self.concurrent_groups.append((worker_id, group))
            self._running[worker_id].append(group)
            self.ran[worker_id].append(ctx.task_id)
            await asyncio.sleep(0.02)
            self._running[worker_id].remove(group)
            return worker_id

        self._workers.append((worker, asyncio.create_task(worker.run(self.address))))

    async def ready(self, stub: _admin_grpc.AdminServiceAsyncStub, count: int) -> None:
        async with asyncio.timeout(10):
            while len((await stub.ListWorkers(_admin.ListWorkersRequest())).workers) < count:
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for worker, run in self._workers:
            await worker.shutdown(grace=2)
            await run


@pytest.fixture
async def fleet(broker: Broker) -> AsyncIterator[Fleet]:
    fleet = Fleet(broker.address)
    yield fleet
    await fleet.stop()


def spec(group: str = "", **placement: object) -> _tasks.TaskSpec:
    return _tasks.TaskSpec(
        task_type="job",
        payload=group.encode(),
        placement=_tasks.Placement(**placement),  # type: ignore[arg-type]
    )


async def submit_and_wait(
    channel: grpc.aio.Channel, specs: list[_tasks.TaskSpec]
) -> list[_tasks.Task]:
    stub = _tasks_grpc.TaskServiceStub(channel)
    ids = (await stub.SubmitBatch(_tasks.SubmitBatchRequest(tasks=specs))).task_ids
    reply = await stub.Wait(_tasks.WaitRequest(task_ids=ids, timeout_s=10))
    return list(reply.tasks)


async def test_required_labels_over_grpc(channel: grpc.aio.Channel, fleet: Fleet) -> None:
    fleet.start("plain")
    fleet.start("gpu-box", gpu="a100")
    await fleet.ready(_admin_grpc.AdminServiceStub(channel), 2)
    tasks = await submit_and_wait(channel, [spec(required_labels={"gpu": "a100"})] * 10)
    assert {t.state for t in tasks} == {_tasks.TASK_STATE_SUCCEEDED}
    assert {t.result for t in tasks} == {b"gpu-box"}
    assert "after required labels gpu=a100" in tasks[0].placement_note


async def test_preferred_labels_over_grpc(channel: grpc.aio.Channel, fleet: Fleet) -> None:
    fleet.start("us", zone="us")
    fleet.start("eu", zone="eu")
    await fleet.ready(_admin_grpc.AdminServiceStub(channel), 2)
    prefer = [_tasks.PreferredLabel(key="zone", value="eu", weight=3)]
    tasks = await submit_and_wait(channel, [spec(preferred_labels=prefer)] * 4)
    assert [t.result for t in tasks] == [b"eu"] * 4  # capacity 4: room for all


async def test_hard_anti_affinity_over_grpc(channel: grpc.aio.Channel, fleet: Fleet) -> None:
    fleet.start("a")
    fleet.start("b")
    await fleet.ready(_admin_grpc.AdminServiceStub(channel), 2)
    tasks = await submit_and_wait(channel, [spec("nightly", anti_affinity_group="nightly")] * 8)
    assert {t.state for t in tasks} == {_tasks.TASK_STATE_SUCCEEDED}
    assert fleet.concurrent_groups == []
    assert len(fleet.ran["a"]) + len(fleet.ran["b"]) == 8


async def test_soft_anti_affinity_spreads_over_grpc(
    channel: grpc.aio.Channel, fleet: Fleet
) -> None:
    fleet.start("a", capacity=8)
    fleet.start("b", capacity=8)
    await fleet.ready(_admin_grpc.AdminServiceStub(channel), 2)
    specs = [spec("spread", anti_affinity_group="spread", anti_affinity_soft=True)] * 4
    await submit_and_wait(channel, specs)
    assert sorted(len(v) for v in fleet.ran.values()) == [2, 2]


async def test_unschedulable_is_visible_and_clears(channel: grpc.aio.Channel, fleet: Fleet) -> None:
    tasks_stub = _tasks_grpc.TaskServiceStub(channel)
    admin = _admin_grpc.AdminServiceStub(channel)
    fleet.start("earth", zone="earth")
    await fleet.ready(admin, 1)
    reply = await tasks_stub.Submit(
        _tasks.SubmitRequest(task=spec(required_labels={"zone": "mars"}))
    )
    async with asyncio.timeout(10):
        while not (
            task := await tasks_stub.Get(_tasks.GetTaskRequest(task_id=reply.task_id))
        ).unschedulable:
            await asyncio.sleep(0.01)
    assert task.state == _tasks.TASK_STATE_PENDING
    assert "no connected worker takes type 'job' and labels zone=mars" in task.placement_note
    stats = await admin.Stats(_admin.StatsRequest())
    assert {p.pool: p.unschedulable for p in stats.pools}["default"] == 1
    fleet.start("rover", zone="mars")
    done = await tasks_stub.Wait(_tasks.WaitRequest(task_ids=[reply.task_id], timeout_s=10))
    assert done.tasks[0].result == b"rover"
    assert not done.tasks[0].unschedulable


async def test_bad_hints_are_invalid_argument(channel: grpc.aio.Channel) -> None:
    stub = _tasks_grpc.TaskServiceStub(channel)
    bad = [
        spec(required_labels={"": "x"}),
        spec(preferred_labels=[_tasks.PreferredLabel(key="zone", value="eu", weight=0)]),
        spec(anti_affinity_group="g" * 500),
    ]
    for one in bad:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(_tasks.SubmitRequest(task=one))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_hints_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with Broker(config) as broker, grpc.aio.insecure_channel(broker.address) as channel:
        stub = _tasks_grpc.TaskServiceStub(channel)
        prefer = [_tasks.PreferredLabel(key="zone", value="eu", weight=2)]
        submitted = await stub.Submit(
            _tasks.SubmitRequest(
                task=spec(
                    "g",
                    required_labels={"gpu": "yes"},
                    preferred_labels=prefer,
                    anti_affinity_group="g",
                )
            )
        )
    async with Broker(config) as broker, grpc.aio.insecure_channel(broker.address) as channel:
        stub = _tasks_grpc.TaskServiceStub(channel)
        task = await stub.Get(_tasks.GetTaskRequest(task_id=submitted.task_id))
    assert dict(task.spec.placement.required_labels) == {"gpu": "yes"}
    assert task.spec.placement.preferred_labels[0].weight == 2
    assert task.spec.placement.anti_affinity_group == "g"
