"""The worker stream's contract as the .proto files state it, driven message by message
the way a worker written in another language would: a real broker on loopback, a real
SQLite file, raw gRPC.

Registration with zero credit, the limits in RegisterAck, dropped results answered,
cancels that name the attempt, session resumption (and who may resume), Drain with a
deadline, the broker's own clock for start and finish times, a worker's word on
whether its failure is retryable, and the content types the SDK states.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker import Broker
from broker.clock import FakeClock
from broker.core.validation import MAX_CAPACITY, MAX_TASK_IDS
from tests.support.config import make_config
from tests.support.worker_stream import RawWorker
from tests.support.workers import until_workers
from worker_sdk import Client, RetryPolicy, TaskContext, TaskInfo, TaskState, Worker
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker

LEASE_S = 2.0  # under the heartbeat timeout (5 s): a lease runs out before the worker does


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock(start=time.time())


@pytest.fixture
async def broker(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Broker]:
    config = make_config(tmp_path, drain_timeout_s=30.0, max_result_bytes=4096)
    async with Broker(config, clock=clock) as running:
        yield running


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[Client]:
    async with Client(broker.address) as connected:
        yield connected


@pytest.fixture
async def channel(broker: Broker) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(broker.address) as chan:
        yield chan


# -- registration ----------------------------------------------------------------------


async def test_a_worker_registers_paused_and_gets_work_once_it_gives_credit(
    broker: Broker, client: Client, channel: grpc.aio.Channel
) -> None:
    worker = RawWorker(channel)
    ack = await worker.register(worker_id="paused", capacity=0)
    assert ack.worker_id == "paused"
    (status,) = broker.service.list_workers()
    assert status.capacity == 0
    task_id = await client.submit("t", b"x")
    assert (await client.get(task_id)).state is TaskState.PENDING
    worker.send(_worker.WorkerMessage(credit=_worker.Credit(capacity=1)))
    assignment = await worker.assignment()
    assert (assignment.task_id, assignment.attempt) == (task_id, 1)


async def test_the_register_ack_states_every_limit_and_rule(
    broker: Broker, channel: grpc.aio.Channel
) -> None:
    ack = await RawWorker(channel).register()
    config = broker.config
    assert ack.heartbeat_interval_s == config.heartbeat_interval_s
    assert ack.heartbeat_timeout_s == config.heartbeat_timeout_s
    assert ack.lease_s == config.heartbeat_timeout_s  # the pool sets none
    assert ack.results_renew_liveness
    assert ack.max_result_bytes == 4096
    assert ack.max_message_bytes == config.max_message_bytes
    assert ack.max_task_ids == MAX_TASK_IDS
    assert ack.max_batch_size == config.max_batch_size
    assert ack.max_wait_ids == config.max_batch_size
    assert ack.max_traceback_chars == config.max_traceback_chars
    assert ack.max_capacity == MAX_CAPACITY
    assert ack.resume_token
    assert ack.resume_window_s == config.heartbeat_timeout_s
    assert not ack.resumed


# -- results the broker does not take, and cancels --------------------------------------


async def test_dropped_results_are_answered_with_why(
    client: Client, channel: grpc.aio.Channel
) -> None:
    worker = RawWorker(channel)
    await worker.register(capacity=1)
    task_id = await client.submit("t")
    assignment = await worker.assignment()

    worker.result(assignment, attempt=assignment.attempt + 1)
    worker.result(assignment, task_id="999999")
    first = (await worker.next_of("results_dropped")).results_dropped.results
    if len(first) < 2:
        first.extend((await worker.next_of("results_dropped")).results_dropped.results)
    assert [(r.task_id, r.attempt, r.reason) for r in first] == [
        (task_id, 2, _worker.DROP_REASON_WRONG_ATTEMPT),
        ("999999", 1, _worker.DROP_REASON_UNKNOWN_TASK),
    ]
    assert all(r.message for r in first)

    await client.cancel(task_id)
    cancel = (await worker.next_of("cancel")).cancel
    assert list(cancel.task_ids) == [task_id]
    assert [(t.task_id, t.attempt) for t in cancel.tasks] == [(task_id, 1)]
    worker.result(assignment)  # crossed the cancel
    (late,) = (await worker.next_of("results_dropped")).results_dropped.results
    assert (late.task_id, late.attempt, late.reason) == (task_id, 1, _worker.DROP_REASON_CANCELLED)
    assert (await client.get(task_id)).state is TaskState.CANCELLED


async def test_a_cancel_after_a_lease_expiry_names_the_attempt_it_stops(
    broker: Broker, clock: FakeClock, client: Client, channel: grpc.aio.Channel
) -> None:
    await client.create_pool("leased", lease_s=LEASE_S)
    worker = RawWorker(channel)
    await worker.register(pool="leased", capacity=1)
    task_id = await client.submit("t", pool="leased")
    first = await worker.assignment()
    clock.advance(LEASE_S + 1)  # no heartbeat renewed the lease
    broker.engine.reap()
    cancel = (await worker.next_of("cancel")).cancel
    assert [(t.task_id, t.attempt) for t in cancel.tasks] == [(task_id, 1)]
    again = await worker.assignment()  # the only worker: the same task, the next attempt
    assert (again.task_id, first.attempt, again.attempt) == (task_id, 1, 2)


# -- resumption ------------------------------------------------------------------------


async def test_a_worker_resumes_its_session_on_a_new_stream_and_the_task_runs_once(
    client: Client, channel: grpc.aio.Channel, broker: Broker
) -> None:
    old = RawWorker(channel)
    ack = await old.register(worker_id="w1", capacity=1)
    task_id = await client.submit("t")
    assignment = await old.assignment()
    old.call.cancel()  # the connection breaks while the task runs

    async with grpc.aio.insecure_channel(broker.address) as other:
        new = RawWorker(other)
        resumed = await new.register(worker_id="w1", capacity=1, resume_token=ack.resume_token)
        assert resumed.resumed
        assert resumed.resume_token
        assert resumed.resume_token != ack.resume_token
        new.heartbeat(task_id)
        new.result(assignment, result=b"once")
        task = await client.wait(task_id, timeout=10)
    assert (task.state, task.result, task.attempts) == (TaskState.SUCCEEDED, b"once", 1)


async def test_a_stale_stream_is_replaced_with_the_token_and_kept_without_it(
    client: Client, channel: grpc.aio.Channel, broker: Broker
) -> None:
    old = RawWorker(channel)
    ack = await old.register(worker_id="w1", capacity=1)
    task_id = await client.submit("t")
    assignment = await old.assignment()

    async with grpc.aio.insecure_channel(broker.address) as other:
        stranger = RawWorker(other)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stranger.register(worker_id="w1")
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        guesser = RawWorker(other)
        with pytest.raises(grpc.aio.AioRpcError) as guessed:
            await guesser.register(worker_id="w1", resume_token="not-the-token")
        assert guessed.value.code() is grpc.StatusCode.ALREADY_EXISTS

        new = RawWorker(other)
        assert (await new.register(worker_id="w1", resume_token=ack.resume_token)).resumed
        assert await old.ended() is grpc.StatusCode.ALREADY_EXISTS  # replaced
        new.result(assignment)
        task = await client.wait(task_id, timeout=10)
    assert (task.state, task.attempts) == (TaskState.SUCCEEDED, 1)


async def test_a_broken_stream_not_resumed_in_time_has_its_tasks_requeued(
    broker: Broker, clock: FakeClock, client: Client, channel: grpc.aio.Channel
) -> None:
    old = RawWorker(channel)
    ack = await old.register(worker_id="w1", capacity=1)
    task_id = await client.submit("t")
    await old.assignment()
    old.call.cancel()
    async with grpc.aio.insecure_channel(broker.address) as other:
        new = RawWorker(other)
        # A new session (no token) for the id of a broken stream: what it held is
        # requeued first, never handed over.
        assert not (await new.register(worker_id="w1", capacity=1)).resumed
        again = await new.assignment()
        assert (again.task_id, again.attempt) == (task_id, 2)
        late = RawWorker(other)
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the old token is worth nothing
            await late.register(worker_id="w1", resume_token=ack.resume_token)
        assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS


# -- drain -----------------------------------------------------------------------------


async def test_a_drained_worker_is_told_the_deadline_and_its_stream_ends_at_it(
    broker: Broker, clock: FakeClock, client: Client, channel: grpc.aio.Channel
) -> None:
    worker = RawWorker(channel)
    await worker.register(worker_id="w1", capacity=1)
    task_id = await client.submit("t")
    await worker.assignment()
    await client.drain_worker("w1")
    drain = (await worker.next_of("drain")).drain
    assert drain.kind == _worker.DRAIN_REASON_OPERATOR
    assert drain.deadline_ms == round((clock.now() + 30.0) * 1000)
    clock.advance(31.0)  # the task is still running
    broker.engine.reap()
    assert await worker.ended() is grpc.StatusCode.OK
    task = await client.get(task_id)
    assert (task.state, task.attempts) == (TaskState.PENDING, 1)


async def test_a_drained_worker_that_holds_nothing_more_is_disconnected(
    client: Client, channel: grpc.aio.Channel
) -> None:
    worker = RawWorker(channel)
    await worker.register(worker_id="w1", capacity=1)
    task_id = await client.submit("t")
    assignment = await worker.assignment()
    await client.drain_worker("w1")
    await worker.next_of("drain")
    worker.result(assignment)
    assert await worker.ended() is grpc.StatusCode.OK
    assert (await client.get(task_id)).state is TaskState.SUCCEEDED


# -- times -----------------------------------------------------------------------------


async def test_the_workers_clock_is_not_trusted_for_start_and_finish(
    client: Client, channel: grpc.aio.Channel, clock: FakeClock
) -> None:
    worker = RawWorker(channel)
    await worker.register(capacity=1)
    task_id = await client.submit("t")
    assignment = await worker.assignment()
    clock.advance(2.0)
    arrival = clock.now()
    worker.result(assignment, started_at_ms=1000, finished_at_ms=4_102_444_800_000)  # 2100
    task = await client.wait(task_id, timeout=10)
    assert task.started_at is not None
    assert task.assigned_at is not None
    assert task.finished_at is not None
    assert task.started_at == task.assigned_at  # clamped, not 1970
    assert task.finished_at.timestamp() == pytest.approx(arrival, abs=0.01)  # not 2100


# -- a worker's word on its failure ----------------------------------------------------


def _failure(type_: str, retryable: bool | None, task_fault: bool = False) -> _tasks.TaskError:
    error = _tasks.TaskError(type=type_, message="it failed", task_fault=task_fault)
    if retryable is not None:
        error.retryable = retryable
    return error


@pytest.mark.parametrize(
    ("policy", "error_type", "retryable", "retried"),
    [
        # A policy that retries everything: the worker says this one is hopeless.
        (RetryPolicy(max_attempts=3, initial_backoff_s=0.001), "BadInput", False, False),
        # A policy that retries only Flaky: the worker says this one may pass next time.
        (
            RetryPolicy(max_attempts=3, initial_backoff_s=0.001, retryable_errors=("Flaky",)),
            "Timeoutish",
            True,
            True,
        ),
        # The policy's own lists win over the worker.
        (
            RetryPolicy(max_attempts=3, initial_backoff_s=0.001, non_retryable_errors=("Flaky",)),
            "Flaky",
            True,
            False,
        ),
        (
            RetryPolicy(max_attempts=3, initial_backoff_s=0.001, retryable_errors=("Flaky",)),
            "Flaky",
            False,
            True,
        ),
    ],
)
async def test_a_worker_saying_whether_its_failure_is_retryable_is_honoured(
    broker: Broker,
    clock: FakeClock,
    client: Client,
    channel: grpc.aio.Channel,
    policy: RetryPolicy,
    error_type: str,
    retryable: bool,
    retried: bool,
) -> None:
    worker = RawWorker(channel)
    await worker.register(capacity=1)
    task_id = await client.submit("t", retry=policy)
    first = await worker.assignment()
    worker.result(first, success=False, error=_failure(error_type, retryable))
    task = await until_not_held(client, task_id)
    if retried:
        assert task.state is TaskState.PENDING
        clock.advance(1.0)  # past the backoff
        broker.engine.tick()
        again = await worker.assignment()
        assert (again.task_id, again.attempt) == (task_id, 2)
    else:
        assert (task.state, task.attempts) == (TaskState.FAILED, 1)
        assert task.error is not None
        assert task.error.type == error_type


async def until_not_held(client: Client, task_id: str) -> TaskInfo:
    """The task once the worker's report of it has been taken."""
    async with asyncio.timeout(10):
        while (task := await client.get(task_id)).state is TaskState.ASSIGNED:
            await asyncio.sleep(0.01)
    return task


async def test_the_brokers_own_error_types_are_marked_on_the_wire(
    client: Client, channel: grpc.aio.Channel
) -> None:
    worker = RawWorker(channel)
    await worker.register(capacity=1)
    task_id = await client.submit("t")
    await worker.assignment()
    await client.cancel(task_id)
    task = await _tasks_grpc.TaskServiceStub(channel).Get(_tasks.GetTaskRequest(task_id=task_id))
    assert task.error.type == "Cancelled"
    assert task.error.broker_type == _tasks.TaskError.BROKER_TYPE_CANCELLED


# -- content types ---------------------------------------------------------------------


async def test_the_sdk_states_the_content_type_of_payloads_and_results(
    broker: Broker, client: Client, channel: grpc.aio.Channel
) -> None:
    worker = Worker(capacity=1)
    seen: list[str] = []

    @worker.task("t")
    async def t(ctx: TaskContext) -> object:
        return ctx.json() if ctx.payload.startswith(b"{") else ctx.payload.decode()

    run = asyncio.create_task(worker.run(broker.address))
    try:
        await until_workers(client)
        as_json = await client.submit("t", json={"n": 1})
        as_text = await client.submit("t", "text")
        as_bytes = await client.submit("t", b"\x00")
        await client.wait_many([as_json, as_text, as_bytes], timeout=10)
        stub = _tasks_grpc.TaskServiceStub(channel)
        for task_id in (as_json, as_text, as_bytes):
            task = await stub.Get(_tasks.GetTaskRequest(task_id=task_id))
            seen.append(f"{task.spec.payload_content_type} -> {task.result_content_type}")
    finally:
        await worker.shutdown(grace=2)
        await run
    assert seen == [
        "application/json -> application/json",
        "text/plain; charset=utf-8 -> text/plain; charset=utf-8",
        "application/octet-stream -> text/plain; charset=utf-8",
    ]
