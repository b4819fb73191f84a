"""Raw gRPC calls for bad-input tests: a submit's error status, a worker stream's, a
register message, and a check that the broker still serves afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc


async def submit_status(channel: grpc.aio.Channel, spec: _tasks.TaskSpec) -> grpc.aio.AioRpcError:
    stub = _tasks_grpc.TaskServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Submit(_tasks.SubmitRequest(task=spec))
    return info.value


async def still_serving(channel: grpc.aio.Channel) -> None:
    stub = _tasks_grpc.TaskServiceStub(channel)
    reply = await stub.Submit(_tasks.SubmitRequest(task=_tasks.TaskSpec(task_type="ok")))
    task = await stub.Get(_tasks.GetTaskRequest(task_id=reply.task_id))
    assert task.state == _tasks.TASK_STATE_PENDING


async def worker_stream_error(
    channel: grpc.aio.Channel, messages: list[_worker.WorkerMessage]
) -> grpc.aio.AioRpcError:
    stub = _worker_grpc.WorkerServiceStub(channel)

    async def requests() -> AsyncIterator[_worker.WorkerMessage]:
        for message in messages:
            yield message
        await asyncio.sleep(5)  # keep the stream open until the broker ends it

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(5):
            async for _ in stub.Connect(requests()):
                pass
    return info.value


def register(**fields: object) -> _worker.WorkerMessage:
    values: dict[str, object] = {"pool": "default", "capacity": 2, "task_types": ["x"]}
    values.update(fields)
    return _worker.WorkerMessage(register=_worker.Register(**values))  # type: ignore[arg-type]
