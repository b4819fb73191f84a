"""Bad input over real gRPC: each gets a clear status, and the broker keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import cast

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo
from grpc_status import rpc_status

from broker import Broker
from tests.support.raw_grpc import register, still_serving, submit_status, worker_stream_error
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc


async def test_unknown_pool_is_not_found(channel: grpc.aio.Channel) -> None:
    error = await submit_status(channel, _tasks.TaskSpec(task_type="x", pool="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "pool 'nope' does not exist" in (error.details() or "")
    await still_serving(channel)


async def test_empty_task_type_is_invalid(channel: grpc.aio.Channel) -> None:
    error = await submit_status(channel, _tasks.TaskSpec(task_type=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "task_type must not be empty" in (error.details() or "")
    await still_serving(channel)


async def test_priority_out_of_range_is_invalid(channel: grpc.aio.Channel) -> None:
    error = await submit_status(channel, _tasks.TaskSpec(task_type="x", priority=5000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority" in (error.details() or "")


async def test_payload_over_the_limit_is_invalid_argument_and_never_retried(
    broker: Broker, channel: grpc.aio.Channel
) -> None:
    """A payload over max_payload_bytes can never be accepted: not RESOURCE_EXHAUSTED
    (which gRPC retry policies retry), and a pushback that says "do not retry" (gRFC A6);
    the details name the field."""
    limit = broker.config.max_payload_bytes
    error = await submit_status(channel, _tasks.TaskSpec(task_type="x", payload=b"x" * (limit + 1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_payload_bytes" in (error.details() or "")
    trailers = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    assert ("grpc-retry-pushback-ms", "-1") in set(trailers)
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info, bad_request = ErrorInfo(), BadRequest()
    assert status.details[0].Unpack(info)
    assert info.reason == "OVER_LIMIT"
    assert status.details[1].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["payload"]
    await still_serving(channel)


async def test_a_bad_task_in_a_batch_rejects_the_whole_batch(channel: grpc.aio.Channel) -> None:
    stub = _tasks_grpc.TaskServiceStub(channel)
    good = _tasks.TaskSpec(task_type="x")
    bad = _tasks.TaskSpec(task_type="x", pool="nope")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitBatch(_tasks.SubmitBatchRequest(tasks=[good, bad]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "task 1:" in (info.value.details() or "")
    listed = await stub.List(_tasks.ListTasksRequest())
    assert list(listed.tasks) == []


async def test_unknown_and_malformed_task_ids(channel: grpc.aio.Channel) -> None:
    stub = _tasks_grpc.TaskServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Get(_tasks.GetTaskRequest(task_id="424242"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Get(_tasks.GetTaskRequest(task_id="abc"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Cancel(_tasks.CancelRequest(task_id="-1"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def assert_broker_details(error: grpc.aio.AioRpcError) -> None:
    """The error carries the broker's google.rpc.Status, as every error it sends does (the
    SDK tells them from gRPC's own by it)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    error_info = ErrorInfo()
    assert status.details[0].Unpack(error_info)
    assert error_info.domain == "taskbroker"


async def test_malformed_request_bytes(channel: grpc.aio.Channel) -> None:
    raw = channel.unary_unary("/taskbroker.v1.TaskService/Submit", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await raw(b"\xff\xff\xff\xff garbage")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (info.value.details() or "")
    assert_broker_details(info.value)
    await still_serving(channel)


async def test_submit_stream_acks_errors_per_batch(channel: grpc.aio.Channel) -> None:
    stub = _tasks_grpc.TaskServiceStub(channel)

    async def requests() -> AsyncIterator[_tasks.SubmitStreamRequest]:
        yield _tasks.SubmitStreamRequest(batch_id=1, tasks=[_tasks.TaskSpec(task_type="")])
        yield _tasks.SubmitStreamRequest(batch_id=2, tasks=[_tasks.TaskSpec(task_type="x")])
        yield _tasks.SubmitStreamRequest(watch_task_ids=["999999", "junk"])

    acks = {}
    not_found: list[str] = []
    async for reply in stub.SubmitStream(requests()):
        if reply.WhichOneof("kind") == "ack":
            acks[reply.ack.batch_id] = reply.ack
        else:
            not_found.extend(reply.completions.not_found)
    assert acks[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "task_type" in acks[1].error_message
    assert acks[2].error_code == 0
    assert len(acks[2].task_ids) == 1
    assert sorted(not_found) == ["999999", "junk"]


async def test_worker_must_register_first(channel: grpc.aio.Channel) -> None:
    heartbeat = _worker.WorkerMessage(heartbeat=_worker.Heartbeat(in_flight=0))
    error = await worker_stream_error(channel, [heartbeat])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "first message" in (error.details() or "")
    await still_serving(channel)


@pytest.mark.parametrize(
    ("fields", "code", "text"),
    [
        ({"pool": "nope"}, grpc.StatusCode.NOT_FOUND, "pool 'nope'"),
        ({"capacity": 10_001}, grpc.StatusCode.INVALID_ARGUMENT, "capacity"),
        ({"task_types": []}, grpc.StatusCode.INVALID_ARGUMENT, "task type"),
    ],
)
async def test_bad_registrations(
    channel: grpc.aio.Channel, fields: dict[str, object], code: grpc.StatusCode, text: str
) -> None:
    error = await worker_stream_error(channel, [register(**fields)])
    assert error.code() == code
    assert text in (error.details() or "")


async def test_registering_twice_on_one_stream(channel: grpc.aio.Channel) -> None:
    error = await worker_stream_error(channel, [register(), register()])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "registered already" in (error.details() or "")


async def test_duplicate_worker_id_is_already_exists(channel: grpc.aio.Channel) -> None:
    stub = _worker_grpc.WorkerServiceStub(channel)
    release = asyncio.Event()

    async def first_requests() -> AsyncIterator[_worker.WorkerMessage]:
        yield register(worker_id="twin")
        await release.wait()

    first = stub.Connect(first_requests())
    ack = await first.read()
    assert isinstance(ack, _worker.BrokerMessage)
    assert ack.register_ack.worker_id == "twin"
    error = await worker_stream_error(channel, [register(worker_id="twin")])
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    release.set()
    first.cancel()


async def test_garbage_on_the_worker_stream(channel: grpc.aio.Channel) -> None:
    raw = channel.stream_stream("/taskbroker.v1.WorkerService/Connect", None, None)

    async def requests() -> AsyncIterator[bytes]:
        yield register().SerializeToString()
        yield b"\xff\xfe not a protobuf"
        await asyncio.sleep(5)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(5):
            async for _ in raw(requests()):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (info.value.details() or "")
    assert_broker_details(info.value)
    await still_serving(channel)
    admin = _admin_grpc.AdminServiceStub(channel)
    workers = await admin.ListWorkers(_admin.ListWorkersRequest())
    assert list(workers.workers) == []


async def test_admin_bad_input(channel: grpc.aio.Channel) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.DrainWorker(_admin.DrainWorkerRequest(worker_id="ghost"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.CreatePool(_admin.CreatePoolRequest(pool=_admin.Pool(name="default")))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.CreatePool(
            _admin.CreatePoolRequest(pool=_admin.Pool(name="gpu", strategy="fastest"))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown strategy" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.CreatePool(_admin.CreatePoolRequest(pool=_admin.Pool(name="")))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.ListWorkers(_admin.ListWorkersRequest(pool="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (_admin.PurgeTasksRequest(older_than_s=-1), "INVALID_ARGUMENT", "older_than_s"),
        (_admin.PurgeTasksRequest(older_than_s=float("nan")), "INVALID_ARGUMENT", "older_than_s"),
        (
            _admin.PurgeTasksRequest(states=[_tasks.TASK_STATE_PENDING]),
            "INVALID_ARGUMENT",
            "pending",
        ),
        (
            _admin.PurgeTasksRequest(states=[_tasks.TASK_STATE_RUNNING]),
            "INVALID_ARGUMENT",
            "running",
        ),
        (
            _admin.PurgeTasksRequest(states=[_tasks.TaskState.ValueType(99)]),
            "INVALID_ARGUMENT",
            "unknown task state",
        ),
        (
            _admin.PurgeTasksRequest(states=[_tasks.TASK_STATE_SUCCEEDED] * 8),
            "INVALID_ARGUMENT",
            "at most 7 states",
        ),
        (_admin.PurgeTasksRequest(pool="p" * 65), "INVALID_ARGUMENT", "at most 64"),
        (_admin.PurgeTasksRequest(pool="nope"), "NOT_FOUND", "nope"),
    ],
)
async def test_purge_bad_input(
    channel: grpc.aio.Channel, request_: _admin.PurgeTasksRequest, code: str, words: str
) -> None:
    tasks = _tasks_grpc.TaskServiceStub(channel)
    await tasks.Submit(_tasks.SubmitRequest(task=_tasks.TaskSpec(task_type="ok")))
    admin = _admin_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await admin.PurgeTasks(request_)
    assert info.value.code() == getattr(grpc.StatusCode, code)
    assert words in (info.value.details() or "")
    await still_serving(channel)


async def test_garbage_on_the_submit_stream_ends_it(channel: grpc.aio.Channel) -> None:
    raw = channel.stream_stream("/taskbroker.v1.TaskService/SubmitStream", None, None)

    async def requests() -> AsyncIterator[bytes]:
        yield b"\xff\xfe not a protobuf"
        await asyncio.sleep(5)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(5):
            async for _ in raw(requests()):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in (info.value.details() or "")
    assert_broker_details(info.value)
    await still_serving(channel)


async def test_completions_are_split_by_size(broker: Broker, channel: grpc.aio.Channel) -> None:
    """Big payloads come back in several Completions messages, each under the 4 MiB limit."""
    from worker_sdk import TaskContext, Worker

    worker = Worker(capacity=8)

    @worker.task("big")
    async def big(ctx: TaskContext) -> bytes:
        return ctx.payload

    run = asyncio.create_task(worker.run(broker.address))
    stub = _tasks_grpc.TaskServiceStub(channel)
    payload = b"x" * 700_000
    done = asyncio.Event()

    async def requests() -> AsyncIterator[_tasks.SubmitStreamRequest]:
        spec = _tasks.TaskSpec(task_type="big", payload=payload)
        yield _tasks.SubmitStreamRequest(batch_id=1, tasks=[spec] * 6, watch=True)
        await done.wait()

    completed = 0
    async with asyncio.timeout(20):
        async for reply in stub.SubmitStream(requests()):
            if reply.WhichOneof("kind") == "completions":
                assert reply.completions.ByteSize() < 4 * 1024 * 1024
                completed += len(reply.completions.tasks)
                if completed == 6:
                    done.set()
    await worker.shutdown(grace=2)
    await run
    assert completed == 6
