"""Resilience end to end: a real broker on loopback, SDK clients and workers, real gRPC.

The engine-level tests (test_resilience.py) pin each rule down with a fake clock; these
check that each one reaches the wire and the SDK: status codes and retry hints, retries
seen by handlers, timeouts that cancel handlers, dead letters requeued by an operator,
idempotent submits, cordons, and the admin calls' errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta
from pathlib import Path
from typing import cast

import grpc
import pytest

from broker import Broker
from broker.domain import BulkheadConfig, PoolConfig
from tests.support.config import make_config
from tests.support.workers import start_worker, until_workers
from worker_sdk import (
    Bulkhead,
    Client,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RetryPolicy,
    TaskContext,
    TaskState,
    Worker,
)
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    config = make_config(tmp_path)
    limited = BulkheadConfig(task_type="t", rate_per_s=1.0, rate_burst=1)
    pools = (
        PoolConfig(name="default"),
        PoolConfig(name="small", max_queue=2),
        PoolConfig(name="limited", bulkheads=(limited,)),
    )
    async with Broker(dataclasses.replace(config, pools=pools)) as running:
        yield running


async def test_a_full_queue_answers_resource_exhausted_with_a_retry_hint(
    broker: Broker,
) -> None:
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _tasks_grpc.TaskServiceStub(channel)
        spec = _tasks.TaskSpec(task_type="t", pool="small")
        await stub.SubmitBatch(_tasks.SubmitBatchRequest(tasks=[spec, spec]))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Submit(_tasks.SubmitRequest(task=spec))
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queue" in (refused.value.details() or "")
        pushback = [
            value
            for key, value in cast(
                Iterable[tuple[str, str | bytes]], refused.value.trailing_metadata() or ()
            )
            if key == "grpc-retry-pushback-ms"
        ]
        assert len(pushback) == 1
        assert int(pushback[0]) > 0
    async with Client(broker.address, max_submit_retries=0) as client:
        with pytest.raises(ResourceExhausted, match="max_queue") as sdk_refused:
            await client.submit("t", pool="small")
        assert sdk_refused.value.retry_after is not None
        assert sdk_refused.value.retry_after > 0


async def test_the_sdk_client_retries_until_the_queue_drains(broker: Broker) -> None:
    worker = Worker("small", capacity=1)

    @worker.task("t")
    async def handle(ctx: TaskContext) -> None:
        await asyncio.sleep(0.02)

    async with Client(broker.address, max_submit_retries=20) as client:
        ids = [await client.submit("t", pool="small") for _ in range(2)]
        pool_full = asyncio.create_task(client.submit("t", pool="small"))
        await asyncio.sleep(0.1)
        assert not pool_full.done()  # refused, and waiting to try again
        run = asyncio.create_task(worker.run(broker.address))
        try:
            ids.append(await asyncio.wait_for(pool_full, 20))
            done = await client.wait_many(ids, timeout=20)
        finally:
            await worker.shutdown(grace=2)
            await run
    assert {info.state for info in done} == {TaskState.SUCCEEDED}
    stats = {s.pool: s for s in (await _stats(broker))}
    assert stats["small"].rejected >= 1


async def test_a_type_over_its_rate_is_refused_with_a_hint(broker: Broker) -> None:
    async with Client(broker.address, max_submit_retries=0) as client:
        await client.submit("t", pool="limited")
        with pytest.raises(ResourceExhausted, match="rate limit") as refused:
            await client.submit("t", pool="limited")
        assert refused.value.retry_after is not None
        assert 0 < refused.value.retry_after <= 1.0


async def test_failed_attempts_are_retried_and_the_handler_sees_the_attempt(
    broker: Broker,
) -> None:
    worker = Worker(capacity=2)
    seen: list[int] = []

    @worker.task("flaky")
    async def flaky(ctx: TaskContext) -> str:
        seen.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return f"done on attempt {ctx.attempt}"

    run = asyncio.create_task(worker.run(broker.address))
    try:
        async with Client(broker.address) as client:
            policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
            task_id = await client.submit("flaky", retry=policy)
            info = await client.wait(task_id, timeout=20)
    finally:
        await worker.shutdown(grace=2)
        await run
    assert info.state is TaskState.SUCCEEDED
    assert info.attempts == 3
    assert info.result == b"done on attempt 3"
    assert seen == [1, 2, 3]


async def test_dead_letters_are_requeued_by_an_operator(broker: Broker) -> None:
    worker = Worker(capacity=2)
    healthy = asyncio.Event()

    @worker.task("poison")
    async def poison(ctx: TaskContext) -> str:
        if not healthy.is_set():
            raise RuntimeError("bad day")
        return "fine now"

    run = asyncio.create_task(worker.run(broker.address))
    try:
        async with Client(broker.address) as client:
            policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
            task_id = await client.submit("poison", retry=policy)
            dead = await client.wait(task_id, timeout=20)
            assert dead.state is TaskState.DEAD_LETTER
            assert dead.error is not None
            assert dead.error.type == "RuntimeError"
            listed = await client.list_tasks(states=[TaskState.DEAD_LETTER])
            assert [t.id for t in listed] == [task_id]
            healthy.set()
            (retried,) = await client.retry(dead_letter_pool="default")
            assert (retried.id, retried.state) == (task_id, TaskState.PENDING)
            done = await client.wait(task_id, timeout=20)
            assert done.state is TaskState.SUCCEEDED
            assert done.result == b"fine now"
    finally:
        await worker.shutdown(grace=2)
        await run


async def test_an_attempt_past_its_timeout_is_cancelled_on_the_worker(broker: Broker) -> None:
    worker = Worker(capacity=1)
    cancelled = asyncio.Event()
    deadlines = []

    @worker.task("slow")
    async def slow(ctx: TaskContext) -> None:
        deadlines.append(ctx.deadline)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    run = asyncio.create_task(worker.run(broker.address))
    try:
        async with Client(broker.address) as client:
            task_id = await client.submit("slow", execution_timeout=0.3)
            info = await client.wait(task_id, timeout=20)
            async with asyncio.timeout(10):
                await cancelled.wait()
    finally:
        await worker.shutdown(grace=2)
        await run
    assert info.state is TaskState.FAILED
    assert info.error is not None
    assert info.error.type == "Timeout"
    assert deadlines[0] is not None


async def test_cancelling_a_running_task_cancels_its_handler(broker: Broker) -> None:
    worker = Worker(capacity=1)
    started, cancelled = asyncio.Event(), asyncio.Event()

    @worker.task("long")
    async def long(ctx: TaskContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    run = asyncio.create_task(worker.run(broker.address))
    try:
        async with Client(broker.address) as client:
            task_id = await client.submit("long")
            async with asyncio.timeout(10):
                await started.wait()
            info = await client.cancel(task_id)
            async with asyncio.timeout(10):
                await cancelled.wait()
    finally:
        await worker.shutdown(grace=2)
        await run
    assert info.state is TaskState.CANCELLED


async def test_a_repeated_idempotency_key_gives_the_first_task(broker: Broker) -> None:
    async with Client(broker.address) as client:
        first = await client.submit("t", idempotency_key="order-7")
        again = await client.submit("t", idempotency_key="order-7")
        other = await client.submit("t", idempotency_key="order-8")
    assert again == first
    assert other != first
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _tasks_grpc.TaskServiceStub(channel)
        spec = _tasks.TaskSpec(task_type="t", idempotency_key="order-7")
        answer = await stub.Submit(_tasks.SubmitRequest(task=spec))
        assert (answer.task_id, answer.existing) == (first, True)


async def test_a_delayed_task_runs_no_sooner_than_asked(broker: Broker) -> None:
    worker = Worker(capacity=1)

    @worker.task("t")
    async def handle(ctx: TaskContext) -> None:
        return None

    run = asyncio.create_task(worker.run(broker.address))
    try:
        async with Client(broker.address) as client:
            task_id = await client.submit("t", delay=0.3)
            waiting = await client.get(task_id)
            assert waiting.state is TaskState.PENDING
            assert waiting.not_before is not None
            done = await client.wait(task_id, timeout=20)
    finally:
        await worker.shutdown(grace=2)
        await run
    assert done.state is TaskState.SUCCEEDED
    assert done.started_at is not None
    # The delay counts from the client's submit, so the time to compare with is not_before.
    assert done.started_at >= waiting.not_before - timedelta(milliseconds=1)


async def test_a_cordoned_worker_gets_no_work_until_uncordoned(broker: Broker) -> None:
    worker = Worker(capacity=2, worker_id="w1")

    @worker.task("t")
    async def handle(ctx: TaskContext) -> None:
        return None

    run = asyncio.create_task(worker.run(broker.address))
    try:
        async with Client(broker.address) as client:
            await until_workers(client, 1)
            status = await client.cordon_worker("w1")
            assert status.cordoned
            task_id = await client.submit("t")
            await asyncio.sleep(0.2)
            assert (await client.get(task_id)).state is TaskState.PENDING
            assert (await client.uncordon_worker("w1")).cordoned is False
            done = await client.wait(task_id, timeout=20)
            assert done.state is TaskState.SUCCEEDED
            (listed,) = await client.list_workers()
            assert (listed.breaker, listed.cordoned) == ("closed", False)
            with pytest.raises(NotFound, match="ghost"):
                await client.cordon_worker("ghost")
    finally:
        await worker.shutdown(grace=2)
        await run


async def test_bad_limits_are_invalid_arguments_and_change_nothing(broker: Broker) -> None:
    async with Client(broker.address) as client:
        with pytest.raises(InvalidArgument, match="max_queue"):
            await client.update_pool("small", max_queue=20_000_000)
        with pytest.raises(InvalidArgument, match="client_rate_per_s"):
            await client.update_pool("small", client_rate_per_s=-1.0)
        with pytest.raises(InvalidArgument, match="rate_mode"):
            await client.update_pool("small", rate_mode="drop")
        with pytest.raises(NotFound):
            await client.update_pool("nope", max_queue=5)
        pool = next(p for p in await client.list_pools() if p.name == "small")
        assert pool.max_queue == 2
        updated = await client.update_pool(
            "small", max_queue=50, bulkheads=(Bulkhead(task_type="t", max_inflight=1),)
        )
        assert updated.max_queue == 50
        assert updated.bulkheads == (Bulkhead(task_type="t", max_inflight=1),)


async def _stats(broker: Broker) -> list[_admin.PoolStats]:
    async with grpc.aio.insecure_channel(broker.address) as channel:
        answer = await _admin_grpc.AdminServiceStub(channel).Stats(_admin.StatsRequest())
    return list(answer.pools)


async def test_one_type_s_handler_errors_do_not_open_the_breaker_for_the_worker_s_others(
    broker: Broker,
) -> None:
    worker = Worker(capacity=1, worker_id="both")

    @worker.task("a")
    async def a(ctx: TaskContext) -> None:
        raise ValueError("a bad payload")

    @worker.task("b")
    async def b(ctx: TaskContext) -> bytes:
        return b"b done"

    run = await start_worker(worker, broker.address)
    try:
        async with Client(broker.address) as client:
            failing = [await client.submit("a", str(i)) for i in range(5)]
            infos = await client.wait_many(failing, timeout=20)
            assert {(i.state, i.error.type if i.error else "") for i in infos} == {
                (TaskState.FAILED, "ValueError")
            }
            (listed,) = await client.list_workers()
            assert (listed.breaker, listed.consecutive_failures) == ("closed", 5)
            other = await client.submit("b")
            (done,) = await client.wait_many([other], timeout=5)
            assert (done.state, done.result) == (TaskState.SUCCEEDED, b"b done")
    finally:
        await worker.shutdown(grace=2)
        await run
