"""Over-limit strings and lists over real gRPC: each is refused with INVALID_ARGUMENT
naming the field and its limit, and the broker keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from broker import Broker
from tests.support.raw_grpc import (
    register,
    still_serving,
    submit_status,
    worker_stream_error,
)
from worker_sdk import Client
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker

LONG = "x" * 201  # one over the 200 characters of names and keys
IDS = [str(i + 1) for i in range(10_001)]  # one over the 10,000 ids of a message


def assert_refused(error: grpc.aio.AioRpcError, *texts: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    for text in texts:
        assert text in (error.details() or ""), error.details()


# Task specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "texts"),
    [
        ({"pool": LONG}, ("pool is longer than 200",)),
        ({"placement": _tasks.Placement(sticky_key=LONG)}, ("sticky_key is longer than 200",)),
        ({"placement": _tasks.Placement(routing_key=LONG)}, ("routing_key is longer than 200",)),
        (
            {"retry": _tasks.RetryPolicy(max_attempts=3, retryable_errors=[LONG])},
            ("retryable_errors is longer than 200",),
        ),
        (
            {"retry": _tasks.RetryPolicy(max_attempts=3, non_retryable_errors=[LONG])},
            ("non_retryable_errors is longer than 200",),
        ),
        (
            {
                "retry": _tasks.RetryPolicy(
                    max_attempts=3, retryable_errors=[f"E{i}" for i in range(65)]
                )
            },
            ("retryable_errors holds more than 64",),
        ),
    ],
    ids=["pool", "sticky_key", "routing_key", "retryable", "non_retryable", "retryable_count"],
)
async def test_over_limit_task_fields(
    channel: grpc.aio.Channel, fields: dict[str, Any], texts: tuple[str, ...]
) -> None:
    error = await submit_status(channel, _tasks.TaskSpec(task_type="x", **fields))
    assert_refused(error, *texts)
    await still_serving(channel)


# Wait ---------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_s", [-1.0, float("nan"), float("inf")])
async def test_wait_refuses_negative_nan_and_infinite_timeouts(
    channel: grpc.aio.Channel, timeout_s: float
) -> None:
    stub = _tasks_grpc.TaskServiceStub(channel)
    reply = await stub.Submit(_tasks.SubmitRequest(task=_tasks.TaskSpec(task_type="x")))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Wait(
            _tasks.WaitRequest(task_ids=[reply.task_id], timeout_s=timeout_s), timeout=5
        )
    assert_refused(info.value, "timeout_s must be a finite number")
    await still_serving(channel)


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
async def test_sdk_wait_refuses_negative_nan_and_infinite_timeouts(
    broker: Broker, seconds: float
) -> None:
    async with Client(broker.address) as client:
        task_id = await client.submit("x")
        with pytest.raises(ValueError, match="finite number"):
            await client.wait(task_id, timeout=seconds)
        with pytest.raises(ValueError, match="finite number"):
            await client.wait_many([task_id], timeout=seconds)


async def test_submit_stream_refuses_too_many_watched_ids(channel: grpc.aio.Channel) -> None:
    stub = _tasks_grpc.TaskServiceStub(channel)

    async def requests() -> AsyncIterator[_tasks.SubmitStreamRequest]:
        yield _tasks.SubmitStreamRequest(watch_task_ids=IDS)
        await asyncio.sleep(5)  # keep the stream open until the broker ends it

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(5):
            async for _ in stub.SubmitStream(requests()):
                pass
    assert_refused(info.value, "watch_task_ids holds more than 10000")
    await still_serving(channel)


# Task queries and commands ------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "texts"),
    [
        (("List", _tasks.ListTasksRequest(pool=LONG)), ("pool is longer than 200",)),
        (("List", _tasks.ListTasksRequest(task_type=LONG)), ("task_type is longer than 200",)),
        (
            ("List", _tasks.ListTasksRequest(states=[_tasks.TASK_STATE_PENDING] * 17)),
            ("states holds more than 16",),
        ),
        (("Retry", _tasks.RetryRequest(task_ids=IDS)), ("task_ids holds more than 10000",)),
        (
            ("Retry", _tasks.RetryRequest(dead_letter_pool=LONG)),
            ("dead_letter_pool is longer than 200",),
        ),
    ],
    ids=["list_pool", "list_task_type", "list_states", "retry_ids", "retry_pool"],
)
async def test_over_limit_task_requests(
    channel: grpc.aio.Channel, call: tuple[str, Any], texts: tuple[str, ...]
) -> None:
    method, request = call
    stub = _tasks_grpc.TaskServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, method)(request)
    assert_refused(info.value, *texts)
    await still_serving(channel)


# Workers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "texts"),
    [
        ({"pool": LONG}, ("pool is longer than 200",)),
        ({"labels": {LONG: "v"}}, ("label key is longer than 200",)),
        ({"labels": {"k": LONG}}, ("label value is longer than 200",)),
        ({"task_types": [f"t{i}" for i in range(257)]}, ("task_types holds more than 256",)),
        ({"sdk_version": LONG}, ("sdk_version is longer than 200",)),
    ],
    ids=["pool", "label_key", "label_value", "task_types", "sdk_version"],
)
async def test_over_limit_registrations(
    channel: grpc.aio.Channel, fields: dict[str, object], texts: tuple[str, ...]
) -> None:
    error = await worker_stream_error(channel, [register(**fields)])
    assert_refused(error, *texts)
    await still_serving(channel)


def failed_result(error_type: str) -> _worker.TaskResult:
    return _worker.TaskResult(
        task_id="1", attempt=1, success=False, error=_tasks.TaskError(type=error_type)
    )


@pytest.mark.parametrize(
    ("message", "texts"),
    [
        (
            _worker.WorkerMessage(results=_worker.Results(results=[failed_result(LONG)])),
            ("error type is longer than 200",),
        ),
        (
            _worker.WorkerMessage(results=_worker.Results(results=[failed_result("E")] * 10_001)),
            ("results holds more than 10000",),
        ),
        (
            _worker.WorkerMessage(results=_worker.Results(started_task_ids=IDS)),
            ("started_task_ids holds more than 10000",),
        ),
        (
            _worker.WorkerMessage(heartbeat=_worker.Heartbeat(held_task_ids=IDS)),
            ("held_task_ids holds more than 10000",),
        ),
        (
            _worker.WorkerMessage(heartbeat=_worker.Heartbeat(load=float("nan"))),
            ("load must be a finite number",),
        ),
    ],
    ids=["error_type", "results", "started", "held", "load"],
)
async def test_over_limit_worker_messages(
    channel: grpc.aio.Channel, message: _worker.WorkerMessage, texts: tuple[str, ...]
) -> None:
    error = await worker_stream_error(channel, [register(), message])
    assert_refused(error, *texts)
    await still_serving(channel)


# Admin --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "texts"),
    [
        (("ListWorkers", _admin.ListWorkersRequest(pool=LONG)), ("pool is longer than 200",)),
        (
            ("DrainWorker", _admin.DrainWorkerRequest(worker_id=LONG)),
            ("worker_id is longer than 200",),
        ),
        (
            ("CordonWorker", _admin.CordonWorkerRequest(worker_id=LONG, cordon=True)),
            ("worker_id is longer than 200",),
        ),
        (
            ("CreatePool", _admin.CreatePoolRequest(pool=_admin.Pool(name=LONG))),
            ("pool name is longer than 200",),
        ),
        (
            (
                "UpdatePool",
                _admin.UpdatePoolRequest(pool=_admin.Pool(name="default", strategy=LONG)),
            ),
            ("strategy is longer than 200",),
        ),
        (
            (
                "CreatePool",
                _admin.CreatePoolRequest(
                    pool=_admin.Pool(
                        name="p", bulkheads=[_admin.Bulkhead(task_type=f"t{i}") for i in range(257)]
                    )
                ),
            ),
            ("bulkheads holds more than 256",),
        ),
        (
            (
                "CreatePool",
                _admin.CreatePoolRequest(
                    pool=_admin.Pool(name="p", bulkheads=[_admin.Bulkhead(task_type=LONG)])
                ),
            ),
            ("bulkhead task_type is longer than 200",),
        ),
        (
            (
                "CreatePool",
                _admin.CreatePoolRequest(
                    pool=_admin.Pool(name="p", fairness_weights={f"k{i}": 1 for i in range(1001)})
                ),
            ),
            ("fairness_weights holds more than 1000",),
        ),
        (
            (
                "CreatePool",
                _admin.CreatePoolRequest(pool=_admin.Pool(name="p", fairness_weights={LONG: 1})),
            ),
            ("fairness_weights is longer than 200",),
        ),
        (
            ("MetricsHistory", _admin.MetricsHistoryRequest(task_type=LONG)),
            ("task_type is longer than 200",),
        ),
        (
            ("MetricsHistory", _admin.MetricsHistoryRequest(worker_id=LONG)),
            ("worker_id is longer than 200",),
        ),
        (("Recommend", _admin.RecommendRequest(pool=LONG)), ("pool is longer than 200",)),
        (
            ("ConfigHistory", _admin.ConfigHistoryRequest(pool=LONG)),
            ("pool is longer than 200",),
        ),
    ],
    ids=[
        "list_workers",
        "drain",
        "cordon",
        "create_name",
        "update_strategy",
        "bulkhead_count",
        "bulkhead_type",
        "fairness_count",
        "fairness_key",
        "history_type",
        "history_worker",
        "recommend",
        "config_history",
    ],
)
async def test_over_limit_admin_requests(
    channel: grpc.aio.Channel, call: tuple[str, Any], texts: tuple[str, ...]
) -> None:
    method, request = call
    stub = _admin_grpc.AdminServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, method)(request)
    assert_refused(info.value, *texts)
    await still_serving(channel)
    pools = await stub.ListPools(_admin.ListPoolsRequest())
    assert "p" not in [p.name for p in pools.pools]
