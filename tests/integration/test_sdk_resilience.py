"""The SDK's side of retries, delays, timeouts, limits and back-pressure: conversion of the new
fields both ways, the client's resend of submits refused for overload and its identity header,
and what the worker's heartbeats tell the broker it holds.

What the broker does with these (queue bounds, Retry, cordon) is tested against the real
broker; the fakes here only refuse submits and record what the SDK sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import grpc.aio
import pytest

import worker_sdk
from broker.errors import BrokerError
from broker.server.status import rich_status
from tests.support.fake_broker import (
    FakeAdminService,
    FakeSession,
    FakeTaskService,
    FakeWorkerService,
    Outbox,
    running,
    serve,
    serve_services,
)
from worker_sdk import (
    Bulkhead,
    BulkheadStats,
    Client,
    NotFound,
    PoolInfo,
    ResourceExhausted,
    RetryPolicy,
    SyncClient,
    TaskbrokerError,
    TaskContext,
    TaskRequest,
    TaskState,
    Unavailable,
    Worker,
    _convert,
)
from worker_sdk._errors import error_for_code
from worker_sdk._messages import AssignmentsReceived, SubmitAcked, TaskOutcome
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._worker import _Session

_Context = grpc.aio.ServicerContext[object, object]
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
PUSHBACK = "grpc-retry-pushback-ms"
T0 = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
T0_MS = 1_704_164_645_678


# -- conversion: tasks ----------------------------------------------------------------------


def test_new_types_are_exported() -> None:
    assert {"RetryPolicy", "Bulkhead", "BulkheadStats"} <= set(worker_sdk.__all__)
    assert TaskState("dead_letter") is TaskState.DEAD_LETTER
    assert TaskState.DEAD_LETTER.terminal


def test_retry_policy_defaults_and_checks() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff_s, policy.max_backoff_s) == (1, 1.0, 300.0)
    assert (policy.backoff_multiplier, policy.retryable_errors, policy.non_retryable_errors) == (
        2.0,
        (),
        (),
    )
    listed = RetryPolicy(3, retryable_errors=["OSError"])  # type: ignore[arg-type]
    assert listed.retryable_errors == ("OSError",)
    assert hash(listed) == hash(RetryPolicy(3, retryable_errors=("OSError",)))
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="initial_backoff_s"):
        RetryPolicy(initial_backoff_s=0)
    with pytest.raises(ValueError, match="backoff_multiplier"):
        RetryPolicy(backoff_multiplier=0.5)
    with pytest.raises(TypeError, match="not a str"):
        RetryPolicy(non_retryable_errors="KeyError")  # type: ignore[arg-type]


POLICY = RetryPolicy(
    max_attempts=4,
    initial_backoff_s=0.5,
    max_backoff_s=30.0,
    backoff_multiplier=3.0,
    retryable_errors=("TimeoutError", "OSError"),
    non_retryable_errors=("ValueError",),
)


def test_task_spec_carries_every_delivery_option() -> None:
    spec = _convert.task_spec(
        TaskRequest(
            "t",
            retry=POLICY,
            not_before=T0,
            start_timeout=2.5,
            execution_timeout=60,
            idempotency_key="order-7",
            fairness_key="tenant-a",
        )
    )
    assert spec.retry == _tasks.RetryPolicy(
        max_attempts=4,
        initial_backoff_s=0.5,
        max_backoff_s=30.0,
        backoff_multiplier=3.0,
        retryable_errors=["TimeoutError", "OSError"],
        non_retryable_errors=["ValueError"],
    )
    assert spec.not_before_ms == T0_MS
    assert (spec.start_timeout_s, spec.execution_timeout_s) == (2.5, 60.0)
    assert (spec.idempotency_key, spec.fairness_key) == ("order-7", "tenant-a")
    plain = _convert.task_spec(TaskRequest("t"))
    assert not plain.HasField("retry")
    assert plain == _tasks.TaskSpec(task_type="t", pool="default")


def test_delay_counts_from_the_submit_and_excludes_not_before() -> None:
    now = T0_MS / 1000
    assert _convert.task_spec(TaskRequest("t", delay=1.5), now=now).not_before_ms == T0_MS + 1500
    assert _convert.task_spec(TaskRequest("t", delay=0), now=now).not_before_ms == T0_MS
    # Another time zone, the same instant.
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert _convert.task_spec(TaskRequest("t", not_before=plus_two)).not_before_ms == T0_MS
    with pytest.raises(ValueError, match="delay or not_before, not both"):
        _convert.task_spec(TaskRequest("t", delay=1, not_before=T0))
    with pytest.raises(ValueError, match="timezone-aware"):
        _convert.task_spec(TaskRequest("t", not_before=datetime(2024, 1, 2)))
    with pytest.raises(ValueError, match="delay"):
        _convert.task_spec(TaskRequest("t", delay=-1))
    with pytest.raises(TypeError, match="delay"):
        _convert.task_spec(TaskRequest("t", delay="5"))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["start_timeout", "execution_timeout"])
@pytest.mark.parametrize("value", [0, -1.0, float("inf")])
def test_timeouts_must_be_positive(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        if name == "start_timeout":
            _convert.task_spec(TaskRequest("t", start_timeout=value))
        else:
            _convert.task_spec(TaskRequest("t", execution_timeout=value))


def test_task_request_with_delivery_options_stays_hashable() -> None:
    request = TaskRequest("t", retry=POLICY, delay=3, idempotency_key="k")
    assert {request, request} == {request}
    assert request != TaskRequest("t", retry=POLICY, delay=3)


def test_task_info_reads_every_delivery_option() -> None:
    spec = _convert.task_spec(
        TaskRequest(
            "t",
            retry=POLICY,
            not_before=T0,
            start_timeout=2.5,
            execution_timeout=60,
            idempotency_key="order-7",
            fairness_key="tenant-a",
        )
    )
    info = _convert.task_info(_tasks.Task(id="1", spec=spec, state=_tasks.TASK_STATE_PENDING))
    assert info.retry == POLICY
    assert info.not_before == T0
    assert (info.start_timeout, info.execution_timeout) == (2.5, 60.0)
    assert (info.idempotency_key, info.fairness_key) == ("order-7", "tenant-a")
    # The broker's own not-before (a retry's backoff, a rate limit) wins over the submit's.
    later = _tasks.Task(id="1", spec=spec, not_before_ms=T0_MS + 2000)
    assert _convert.task_info(later).not_before == T0 + timedelta(seconds=2)
    plain = _convert.task_info(_tasks.Task(id="1", spec=_tasks.TaskSpec(task_type="t")))
    assert (plain.retry, plain.not_before, plain.start_timeout, plain.execution_timeout) == (
        None,
        None,
        None,
        None,
    )
    assert (plain.idempotency_key, plain.fairness_key) == (None, None)


def test_retry_policy_zeros_on_the_wire_read_as_the_defaults() -> None:
    assert _convert.retry_policy(_tasks.RetryPolicy()) == RetryPolicy()
    wire = _tasks.RetryPolicy(max_attempts=5, non_retryable_errors=["KeyError"])
    assert _convert.retry_policy(wire) == RetryPolicy(5, non_retryable_errors=("KeyError",))


def test_dead_letter_state_both_ways() -> None:
    task = _convert.task_info(_tasks.Task(id="1", state=_tasks.TASK_STATE_DEAD_LETTER))
    assert task.state is TaskState.DEAD_LETTER
    assert task.done
    request = _convert.list_tasks_request(
        pool=None, states=[TaskState.DEAD_LETTER], task_type=None, limit=1, before_id=None
    )
    assert list(request.states) == [_tasks.TASK_STATE_DEAD_LETTER]


def test_retry_request() -> None:
    assert _convert.retry_request(["1", "2"], None, None) == _tasks.RetryRequest(
        task_ids=["1", "2"]
    )
    assert _convert.retry_request([], "gpu", 50) == _tasks.RetryRequest(
        dead_letter_pool="gpu", limit=50
    )
    response = _tasks.RetryResponse(tasks=[_tasks.Task(id="1", state=_tasks.TASK_STATE_PENDING)])
    assert [t.id for t in _convert.retried_tasks(response)] == ["1"]


# -- conversion: pools, workers, statistics -------------------------------------------------

FULL_POOL = PoolInfo(
    "gpu",
    "least_loaded",
    "adaptive",
    20,
    2.0,
    max_inflight=40,
    max_queue=1000,
    client_rate_per_s=50.0,
    client_rate_burst=100,
    rate_mode="queue",
    breaker_failures=3,
    breaker_failure_rate=0.5,
    breaker_window=10,
    breaker_cooldown_s=15.0,
    lease_s=20.0,
    bulkheads=(Bulkhead("render", 4, 100, 2.5, 5), Bulkhead("thumb", max_queue=10)),
    fairness_weights={"tenant-a": 3, "tenant-b": 1},
)
FULL_SETTINGS: dict[str, object] = {
    "strategy": "least_loaded",
    "ab_strategy": "adaptive",
    "ab_percent": 20,
    "sticky_timeout_s": 2.0,
    "max_inflight": 40,
    "max_queue": 1000,
    "client_rate_per_s": 50.0,
    "client_rate_burst": 100,
    "rate_mode": "queue",
    "breaker_failures": 3,
    "breaker_failure_rate": 0.5,
    "breaker_window": 10,
    "breaker_cooldown_s": 15.0,
    "lease_s": 20.0,
    "bulkheads": FULL_POOL.bulkheads,
    "fairness_weights": FULL_POOL.fairness_weights,
}


def test_pool_settings_round_trip() -> None:
    request = _convert.create_pool_request("gpu", FULL_SETTINGS)
    wire = request.pool
    assert (wire.max_inflight, wire.max_queue, wire.rate_mode, wire.lease_s) == (
        40,
        1000,
        "queue",
        20.0,
    )
    assert wire.bulkheads[0] == _admin.Bulkhead(
        task_type="render", max_inflight=4, max_queue=100, rate_per_s=2.5, rate_burst=5
    )
    assert dict(wire.fairness_weights) == {"tenant-a": 3, "tenant-b": 1}
    assert _convert.pool_info(wire) == FULL_POOL
    assert _convert.pool_info(wire).fairness_weights == FULL_POOL.fairness_weights
    # A broker that leaves rate_mode empty means its default.
    assert _convert.pool_info(_admin.Pool(name="p")).rate_mode == "reject"
    with pytest.raises(TypeError, match="unknown pool setting 'colour'"):
        _convert.create_pool_request("p", {"colour": "red"})
    with pytest.raises(TypeError, match="Bulkhead"):
        _convert.create_pool_request("p", {"bulkheads": [{"task_type": "x"}]})
    with pytest.raises(ValueError, match="out of range"):
        _convert.create_pool_request("p", {"max_queue": -1})


def test_update_pool_request_replaces_only_what_is_given() -> None:
    listed = _admin.ListPoolsResponse(
        pools=[_convert.create_pool_request("gpu", FULL_SETTINGS).pool]
    )
    request = _convert.update_pool_request(
        listed, "gpu", {"max_queue": 5, "bulkheads": (Bulkhead("only"),), "fairness_weights": {}}
    )
    assert request is not None
    assert _convert.pool_info(request.pool) == PoolInfo(
        **{
            **{f: getattr(FULL_POOL, f) for f in PoolInfo.__dataclass_fields__},
            "max_queue": 5,
            "bulkheads": (Bulkhead("only"),),
            "fairness_weights": {},
        }
    )
    assert _convert.update_pool_request(listed, "cpu", {"max_queue": 5}) is None


def test_worker_status_and_cordon_request() -> None:
    worker = _convert.worker_info(
        _admin.WorkerStatus(
            worker_id="w", cordoned=True, breaker="half_open", consecutive_failures=4
        )
    )
    assert (worker.cordoned, worker.breaker, worker.consecutive_failures) == (True, "half_open", 4)
    assert _convert.worker_info(_admin.WorkerStatus(worker_id="w")).breaker == "closed"
    assert _convert.cordon_worker_request("w", True) == _admin.CordonWorkerRequest(
        worker_id="w", cordon=True
    )
    assert not _convert.cordon_worker_request("w", False).cordon


def test_pool_stats_counters_and_bulkheads() -> None:
    counters = {
        "delayed": 1,
        "dead_letter": 2,
        "rejected": 3,
        "rate_limited": 4,
        "retried": 5,
        "timed_out": 6,
        "expired": 7,
        "lease_expired": 8,
        "reconciled": 9,
        "deduplicated": 10,
        "max_queue": 11,
        "max_inflight": 12,
    }
    wire = _admin.PoolStats(
        pool="p",
        bulkheads=[
            _admin.BulkheadStats(
                task_type="render", pending=3, in_flight=2, max_queue=10, max_inflight=4
            )
        ],
        **counters,  # type: ignore[arg-type]
    )
    (stats,) = _convert.stats(_admin.StatsResponse(pools=[wire])).pools
    assert {name: getattr(stats, name) for name in counters} == counters
    assert stats.bulkheads == (BulkheadStats("render", 3, 2, 10, 4),)
    empty = _convert.pool_stats(_admin.PoolStats(pool="p"))
    assert (empty.dead_letter, empty.bulkheads) == (0, ())


# -- conversion: errors and stream messages -------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...]) -> None:
        self._code = code
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "queue full"

    def trailing_metadata(self) -> Any:
        return self._trailers


@pytest.mark.parametrize(
    ("trailers", "retry_after"),
    [
        (((PUSHBACK, "1500"),), 1.5),
        (((PUSHBACK, "0"),), 0.0),
        ((("other", "1"), (PUSHBACK, "20")), 0.02),
        ((), None),
        (((PUSHBACK, "-1"),), None),  # gRPC's "do not retry"
        (((PUSHBACK, "soon"),), None),
    ],
)
def test_resource_exhausted_carries_the_pushback_hint(
    trailers: tuple[tuple[str, str], ...], retry_after: float | None
) -> None:
    error = _convert.rpc_error(FakeRpcError(_EXHAUSTED, trailers), "addr")
    assert type(error) is ResourceExhausted
    assert str(error) == "queue full"
    assert error.retry_after == retry_after


def test_an_internal_error_without_the_broker_s_details_is_a_lost_call() -> None:
    def aio_error(trailers: grpc.aio.Metadata, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(
            grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailers, details, None
        )

    # What grpc.aio raises when the call broke under it: no trailers at all.
    lost = _convert.rpc_error(aio_error(grpc.aio.Metadata(), "Internal error from Core"), "b:1")
    assert type(lost) is Unavailable
    assert str(lost) == "the call to the broker at b:1 broke: Internal error from Core"
    # The broker's own INTERNAL comes with its status details: an error, not a loss.
    status = rich_status(BrokerError("the store is corrupt"))
    sent = _convert.rpc_error(aio_error(grpc.aio.Metadata(*status.trailing_metadata), "x"), "b:1")
    assert type(sent) is TaskbrokerError
    assert str(sent) == "x"


def test_error_table_keeps_the_hint() -> None:
    error = error_for_code(_EXHAUSTED.value[0], "slow down", 0.25)
    assert isinstance(error, ResourceExhausted)
    assert error.retry_after == 0.25
    assert ResourceExhausted("x").retry_after is None
    assert not hasattr(error_for_code(5, "gone"), "retry_after")


def test_submit_ack_retry_after() -> None:
    refused = _tasks.SubmitAck(batch_id=3, error_code=8, error_message="full", retry_after_ms=250)
    event = _convert.submit_stream_event(_tasks.SubmitStreamResponse(ack=refused))
    assert event == SubmitAcked(3, [], 8, "full", 0.25)
    accepted = _tasks.SubmitStreamResponse(ack=_tasks.SubmitAck(batch_id=4, task_ids=["1"]))
    assert _convert.submit_stream_event(accepted) == SubmitAcked(4, ["1"], 0, "", None)


def test_worker_stream_messages() -> None:
    beat = _convert.heartbeat_message(2, 0.5, ["a", "b"], 7).heartbeat
    assert beat == _worker.Heartbeat(
        in_flight=2, load=0.5, held_task_ids=["a", "b"], assignments_seen=7
    )
    event = _convert.broker_event(
        _worker.BrokerMessage(
            assignments=_worker.Assignments(
                seq=9,
                assignments=[
                    _worker.Assignment(task_id="1", attempt=2, task_type="t", deadline_ms=T0_MS),
                    _worker.Assignment(task_id="2", attempt=1, task_type="t"),
                ],
            )
        )
    )
    assert isinstance(event, AssignmentsReceived)
    assert event.seq == 9
    assert [(a.attempt, a.deadline) for a in event.assignments] == [(2, T0), (1, None)]


def test_task_context_deadline() -> None:
    ctx = TaskContext(
        task_id="1", task_type="t", attempt=1, priority=0, payload=b"", worker_id="w", deadline=T0
    )
    assert ctx.deadline == T0
    assert TaskContext.__doc__ is not None
    assert "1-based" in TaskContext.__doc__


# -- the client: identity -------------------------------------------------------------------


def call_metadata(context: Any) -> dict[str, str]:
    """The metadata a call came with, as text (every key we send is ASCII)."""
    return {str(key): str(value) for key, value in context.invocation_metadata() or ()}


class RecordingTaskService(FakeTaskService):
    """The fake broker, recording call metadata, and refusing submits for overload on request.

    `refuse_batches` unary SubmitBatch calls fail with RESOURCE_EXHAUSTED and the pushback
    trailer `pushback_ms` (none if None); `refuse_stream` stream messages are refused with
    the ack's `retry_after_ms` (only those whose first payload starts with `refuse_prefix`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[tuple[str, dict[str, str]]] = []
        self.refuse_batches = 0
        self.refuse_stream = 0
        self.refuse_prefix = b""
        self.pushback_ms: str | None = "250"
        self.retry_after_ms = 250
        self.batch_requests: list[_tasks.SubmitBatchRequest] = []

    def _record(self, method: str, context: Any) -> None:
        self.metadata.append((method, call_metadata(context)))

    async def SubmitBatch(
        self, request: _tasks.SubmitBatchRequest, context: _Context
    ) -> _tasks.SubmitBatchResponse:
        self._record("SubmitBatch", context)
        self.batch_requests.append(request)
        if self.refuse_batches:
            self.refuse_batches -= 1
            if self.pushback_ms is not None:
                context.set_trailing_metadata(((PUSHBACK, self.pushback_ms),))
            await context.abort(_EXHAUSTED, "queue full")
        return await super().SubmitBatch(request, context)

    async def SubmitStream(  # type: ignore[override]
        self, request_iterator: AsyncIterator[_tasks.SubmitStreamRequest], context: _Context
    ) -> None:
        self._record("SubmitStream", context)
        await super().SubmitStream(request_iterator, context)

    def _handle(
        self,
        request: _tasks.SubmitStreamRequest,
        outbox: Outbox,
    ) -> None:
        first = request.tasks[0].payload if request.tasks else None
        if self.refuse_stream and first is not None and first.startswith(self.refuse_prefix):
            self.refuse_stream -= 1
            ack = _tasks.SubmitAck(
                batch_id=request.batch_id,
                error_code=_EXHAUSTED.value[0],
                error_message="rate limited",
                retry_after_ms=self.retry_after_ms,
            )
            outbox.put_nowait(_tasks.SubmitStreamResponse(ack=ack))
            return
        super()._handle(request, outbox)

    async def Get(self, request: _tasks.GetTaskRequest, context: _Context) -> _tasks.Task:
        self._record("Get", context)
        return await super().Get(request, context)


class RecordingAdminService(FakeAdminService):
    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[tuple[str, dict[str, str]]] = []

    async def Stats(self, request: _admin.StatsRequest, context: _Context) -> _admin.StatsResponse:
        self.metadata.append(("Stats", call_metadata(context)))
        return await super().Stats(request, context)


@pytest.fixture
def tasks() -> RecordingTaskService:
    return RecordingTaskService()


@pytest.fixture
def admin() -> RecordingAdminService:
    return RecordingAdminService()


@pytest.fixture
async def address(tasks: RecordingTaskService, admin: RecordingAdminService) -> AsyncIterator[str]:
    async with serve_services(tasks, admin) as address:
        yield address


class Sleeps:
    """Stands in for the client's backoff sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def backoff_client(address: str, **kwargs: Any) -> AsyncIterator[tuple[Client, Sleeps]]:
    """A client whose backoff sleeps are recorded, not slept, and whose jitter is its top
    (so each wait is max(hint, min(cap, 0.1 * 2**n)), to the millisecond)."""
    sleeps = Sleeps()
    async with Client(address, **kwargs) as client:
        client._backoff.sleep = sleeps
        client._backoff.random = lambda: 1.0
        yield client, sleeps
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("taskbroker-")]
    assert leftovers == []


async def test_every_call_carries_the_client_id(
    address: str, tasks: RecordingTaskService, admin: RecordingAdminService
) -> None:
    async with Client(address, client_id="billing-7") as client:
        assert client.client_id == "billing-7"
        task_id = await client.submit("echo")
        await client.submit_many([TaskRequest("echo")])
        await client.get(task_id)
        await client.stats()
    seen = {method: metadata.get("x-taskbroker-client") for method, metadata in tasks.metadata}
    assert seen == {"SubmitStream": "billing-7", "SubmitBatch": "billing-7", "Get": "billing-7"}
    assert admin.metadata == [("Stats", admin.metadata[0][1])]
    assert admin.metadata[0][1]["x-taskbroker-client"] == "billing-7"


async def test_the_default_client_id_is_host_and_pid(
    address: str, tasks: RecordingTaskService
) -> None:
    async with Client(address) as client:
        await client.get(await client.submit("echo"))
    expected = f"{socket.gethostname()}:{os.getpid()}"
    assert client.client_id == expected
    assert {m["x-taskbroker-client"] for _, m in tasks.metadata} == {expected}
    with pytest.raises(ValueError, match="client_id"):
        Client(address, client_id="")
    with pytest.raises(ValueError, match="client_id"):
        Client(address, client_id="caf\u00e9\n")


def test_client_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_submit_retries"):
        Client(max_submit_retries=-1)
    with pytest.raises(ValueError, match="max_submit_backoff_s"):
        Client(max_submit_backoff_s=-0.5)


# -- the client: unary submits refused for overload ---------------------------------------


async def test_a_refused_batch_is_resent_after_the_hint(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_batches = 3
    async with backoff_client(address) as (client, sleeps):
        ids = await client.submit_many([TaskRequest("a", b"1"), TaskRequest("b", b"2")])
    assert [tasks.tasks[i].spec.payload for i in ids] == [b"1", b"2"]
    assert len(tasks.batch_requests) == 4
    assert all(r == tasks.batch_requests[0] for r in tasks.batch_requests)  # resent as it was
    # max(hint 0.25, backoff 0.1, 0.2, 0.4)
    assert sleeps.delays == pytest.approx([0.25, 0.25, 0.4])


async def test_each_wait_is_capped_and_jittered(address: str, tasks: RecordingTaskService) -> None:
    tasks.refuse_batches = 2
    tasks.pushback_ms = "60000"
    async with backoff_client(address, max_submit_backoff_s=2.0) as (client, sleeps):
        await client.submit_many([TaskRequest("a")])
    assert sleeps.delays == [2.0, 2.0]  # the broker asked for a minute
    tasks.refuse_batches = 5
    tasks.pushback_ms = "0"
    async with backoff_client(address, max_submit_backoff_s=0.5) as (client, sleeps):
        client._backoff.random = iter([0.5, 0.0, 1.0, 1.0, 1.0]).__next__
        await client.submit_many([TaskRequest("a")])
    # Full jitter: uniform in [0, min(cap, 0.1 * 2**n)].
    assert sleeps.delays == pytest.approx([0.05, 0.0, 0.4, 0.5, 0.5])


async def test_unary_submit_gives_up_after_max_retries(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_batches = 100
    async with backoff_client(address, max_submit_retries=3) as (client, sleeps):
        with pytest.raises(ResourceExhausted, match=r"queue full \(gave up after 3 retries\)") as e:
            await client.submit_many([TaskRequest("a")])
    assert e.value.retry_after == 0.25
    assert len(tasks.batch_requests) == 4
    assert len(sleeps.delays) == 3
    assert tasks.tasks == {}


async def test_zero_max_retries_never_resends(address: str, tasks: RecordingTaskService) -> None:
    tasks.refuse_batches = 1
    async with backoff_client(address, max_submit_retries=0) as (client, sleeps):
        with pytest.raises(ResourceExhausted) as raised:
            await client.submit_many([TaskRequest("a")])
    assert str(raised.value) == "queue full"
    assert raised.value.retry_after == 0.25
    assert (len(tasks.batch_requests), sleeps.delays) == (1, [])


async def test_a_refusal_without_a_hint_is_not_resent(
    address: str, tasks: RecordingTaskService
) -> None:
    # E.g. a payload over the broker's size limit: waiting does not make it smaller.
    tasks.refuse_batches = 1
    tasks.pushback_ms = None
    async with backoff_client(address) as (client, sleeps):
        with pytest.raises(ResourceExhausted) as raised:
            await client.submit_many([TaskRequest("a")])
        assert raised.value.retry_after is None
        assert (len(tasks.batch_requests), sleeps.delays) == (1, [])
        # Other errors are not resent either.
        with pytest.raises(NotFound):
            await client.submit_many([TaskRequest("a", pool="missing")])
    assert len(tasks.batch_requests) == 2


# -- the client: stream submits refused for overload ---------------------------------------


async def test_a_refused_stream_batch_is_resent_whole_and_acks_keep_their_order(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_stream = 2
    async with backoff_client(address) as (client, sleeps):
        ids = await asyncio.gather(*(client.submit("echo", str(i)) for i in range(20)))
    assert [tasks.tasks[i].spec.payload for i in ids] == [str(i).encode() for i in range(20)]
    first = [t.payload for t in tasks.stream_requests[0].tasks]
    assert [[t.payload for t in r.tasks] for r in tasks.stream_requests[:3]] == [first] * 3
    assert len({r.batch_id for r in tasks.stream_requests}) == len(tasks.stream_requests)
    assert sleeps.delays == pytest.approx([0.25, 0.25])
    assert tasks.streams_opened == 1


async def test_only_the_refused_stream_batch_waits(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_stream = 1
    tasks.refuse_prefix = b"a"
    async with backoff_client(address, batch_size=5) as (client, sleeps):
        payloads = [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
        ids = await asyncio.gather(*(client.submit("echo", p) for p in payloads))
    assert [tasks.tasks[i].spec.payload.decode() for i in ids] == payloads
    sent = [[t.payload.decode() for t in r.tasks] for r in tasks.stream_requests]
    assert sent == [payloads[:5], payloads[5:], payloads[:5]]
    # The b-batch was accepted first, so its tasks got the lower ids.
    assert ids[5:] < ids[:5]
    assert sleeps.delays == [0.25]


async def test_stream_submit_gives_up_after_max_retries(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_stream = 100
    tasks.retry_after_ms = 1500
    async with backoff_client(address, max_submit_retries=2) as (client, sleeps):
        outcomes = await asyncio.gather(
            *(client.submit("echo", str(i)) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(o, ResourceExhausted) for o in outcomes)
        error = outcomes[0]
        assert isinstance(error, ResourceExhausted)
        assert str(error) == "rate limited (gave up after 2 retries)"
        assert error.retry_after == 1.5
        assert sleeps.delays == [1.5, 1.5]
        # The stream itself is fine: the next submit goes through on it.
        tasks.refuse_stream = 0
        assert await client.submit("echo")
    assert tasks.streams_opened == 1


async def test_stream_refusal_without_a_hint_fails_at_once(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_stream = 1
    tasks.retry_after_ms = 0
    async with backoff_client(address) as (client, sleeps):
        with pytest.raises(ResourceExhausted, match=r"^rate limited$") as raised:
            await client.submit("echo")
    assert raised.value.retry_after is None
    assert sleeps.delays == []


async def test_a_caller_that_leaves_during_the_backoff_is_not_resent(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_stream = 1
    release = asyncio.Event()
    backing_off = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        backing_off.set()
        await release.wait()

    async with Client(address) as client:
        client._backoff.sleep = held_sleep
        leaving = asyncio.create_task(client.submit("echo", "leaves"))
        staying = asyncio.create_task(client.submit("echo", "stays"))
        await backing_off.wait()
        leaving.cancel()
        release.set()
        task_id = await staying
        assert leaving.cancelled()
    sent = [[t.payload for t in r.tasks] for r in tasks.stream_requests]
    assert sent == [[b"leaves", b"stays"], [b"stays"]]
    assert tasks.tasks[task_id].spec.payload == b"stays"


async def test_close_during_a_backoff_fails_the_submit_and_leaves_nothing(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_stream = 1
    backing_off = asyncio.Event()

    async def endless_sleep(seconds: float) -> None:
        backing_off.set()
        await asyncio.Event().wait()

    client = Client(address)
    client._backoff.sleep = endless_sleep
    submitting = asyncio.create_task(client.submit("echo"))
    await backing_off.wait()
    await client.close()
    with pytest.raises(Unavailable, match="closed"):
        await submitting
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("taskbroker-")]
    assert leftovers == []


async def test_submit_sends_the_delivery_options(address: str, tasks: RecordingTaskService) -> None:
    async with Client(address) as client:
        task_id = await client.submit(
            "echo",
            retry=RetryPolicy(3),
            delay=30,
            start_timeout=5,
            execution_timeout=9.5,
            idempotency_key="k",
            fairness_key="f",
        )
        with pytest.raises(ValueError, match="not both"):
            await client.submit("echo", delay=1, not_before=T0)
        info = await client.get(task_id)
    spec = tasks.tasks[task_id].spec
    assert spec.retry.max_attempts == 3
    assert spec.not_before_ms > 0
    assert (spec.start_timeout_s, spec.execution_timeout_s) == (5.0, 9.5)
    assert (spec.idempotency_key, spec.fairness_key) == ("k", "f")
    assert info.retry == RetryPolicy(3)
    assert info.not_before is not None
    assert info.not_before > datetime.now(UTC) + timedelta(seconds=20)
    assert (info.start_timeout, info.execution_timeout) == (5.0, 9.5)


# -- the client: Retry and CordonWorker ------------------------------------------------------


async def test_retry_and_cordon_check_their_arguments(
    address: str, tasks: RecordingTaskService
) -> None:
    async with Client(address) as client:
        assert await client.retry() == []  # nothing asked, nothing sent
        with pytest.raises(TypeError, match="not one str"):
            await client.retry("42")
        with pytest.raises(ValueError, match="give both"):
            await client.retry(["1"], limit=5)
        with pytest.raises(ValueError, match="at least 1"):
            await client.retry(dead_letter_pool="p", limit=0)
        # The fake broker has neither call; the real one is tested with the broker.
        with pytest.raises(TaskbrokerError, match="does not implement"):
            await client.retry(["1"])
        with pytest.raises(TaskbrokerError, match="does not implement"):
            await client.cordon_worker("w-1")
        with pytest.raises(TaskbrokerError, match="does not implement"):
            await client.uncordon_worker("w-1")


async def test_pool_settings_reach_the_broker(address: str, admin: RecordingAdminService) -> None:
    async with Client(address) as client:
        created = await client.create_pool(
            "gpu",
            "least_loaded",
            ab_strategy="adaptive",
            ab_percent=20,
            sticky_timeout_s=2.0,
            max_inflight=40,
            max_queue=1000,
            client_rate_per_s=50.0,
            client_rate_burst=100,
            rate_mode="queue",
            breaker_failures=3,
            breaker_failure_rate=0.5,
            breaker_window=10,
            breaker_cooldown_s=15.0,
            lease_s=20.0,
            bulkheads=FULL_POOL.bulkheads,
            fairness_weights=FULL_POOL.fairness_weights,
        )
        assert created == FULL_POOL
        updated = await client.update_pool(
            "gpu", max_inflight=8, bulkheads=(), fairness_weights={"t": 2}, rate_mode="reject"
        )
    assert updated.max_inflight == 8
    assert (updated.bulkheads, updated.fairness_weights) == ((), {"t": 2})
    assert updated.rate_mode == "reject"
    assert (updated.max_queue, updated.lease_s, updated.breaker_failures) == (1000, 20.0, 3)
    assert admin.pools["gpu"].max_inflight == 8


async def test_sync_client_passes_the_new_options(
    address: str, tasks: RecordingTaskService
) -> None:
    tasks.refuse_batches = 1

    def use_it() -> tuple[str, str, list[float]]:
        with SyncClient(address, client_id="script", max_submit_retries=1) as client:
            sleeps = Sleeps()
            client._client._backoff.sleep = sleeps
            task_id = client.submit("echo", fairness_key="f", retry=POLICY, delay=1)
            (batched,) = client.submit_many([TaskRequest("echo", idempotency_key="k")])
            pool = client.create_pool("p", max_queue=3, bulkheads=[Bulkhead("echo", 1)])
            assert pool.bulkheads == (Bulkhead("echo", 1),)
            assert client.update_pool("p", lease_s=4.0).lease_s == 4.0
            with pytest.raises(TaskbrokerError, match="does not implement"):
                client.retry(dead_letter_pool="p")
            assert client.client_id == "script"
            return task_id, batched, sleeps.delays

    task_id, batched, delays = await asyncio.to_thread(use_it)
    assert tasks.tasks[task_id].spec.fairness_key == "f"
    assert tasks.tasks[task_id].spec.retry.max_attempts == 4
    assert tasks.tasks[batched].spec.idempotency_key == "k"
    assert len(delays) == 1
    assert {m["x-taskbroker-client"] for _, m in tasks.metadata} == {"script"}


# -- the worker: heartbeats, deadlines, cancels --------------------------------------------


class Beats:
    """Stands in for the worker's heartbeat sleep: one heartbeat goes out per `beat()`.
    `asked` records each sleep's length, as the worker asked for it."""

    def __init__(self) -> None:
        self._ticks: asyncio.Queue[None] = asyncio.Queue()
        self.asked: list[float] = []
        self._asking = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        self._asking.set()
        await self._ticks.get()

    async def until_asked(self, predicate: Callable[[list[float]], bool]) -> None:
        """Wait until the sleeps asked for so far satisfy `predicate`."""
        while not predicate(self.asked):
            self._asking.clear()
            await self._asking.wait()

    def beat(self) -> None:
        self._ticks.put_nowait(None)


def make_worker(beats: Beats, capacity: int = 8) -> Worker:
    worker = Worker(capacity=capacity, reconnect_initial_s=0.002, reconnect_max_s=0.005)
    worker._heartbeat_sleep = beats.sleep
    return worker


def assign(session: FakeSession, seq: int, *tasks: str, **fields: Any) -> None:
    """Send one Assignments message of tasks (task_id:task_type) with this seq."""
    session.outbox.put_nowait(
        _worker.BrokerMessage(
            assignments=_worker.Assignments(
                seq=seq,
                assignments=[
                    _worker.Assignment(
                        task_id=spec.split(":")[0],
                        task_type=spec.split(":")[1],
                        attempt=fields.get("attempt", 1),
                        deadline_ms=fields.get("deadline_ms", 0),
                    )
                    for spec in tasks
                ],
            )
        )
    )


async def next_heartbeat(session: FakeSession, beats: Beats) -> _worker.Heartbeat:
    before = len(session.of_kind("heartbeat"))
    beats.beat()
    await session.until(lambda: len(session.of_kind("heartbeat")) > before)
    return session.of_kind("heartbeat")[before].heartbeat


async def test_a_worker_holding_nothing_beats_at_the_idle_interval_until_a_task_comes() -> None:
    beats = Beats()
    worker = make_worker(beats, capacity=2)
    gate = asyncio.Event()

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> str:
        await gate.wait()
        return ctx.task_id

    service = FakeWorkerService(heartbeat_interval_s=5.0, idle_heartbeat_interval_s=30.0)
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        await beats.until_asked(lambda asked: asked == [30.0])  # idle: the idle interval
        assign(session, 1, "t1:hold")
        # The task wakes the heartbeat: the next beat is due within the usual interval.
        await beats.until_asked(lambda asked: asked == [30.0, 5.0])
        assert session.of_kind("heartbeat") == []
        beat = await next_heartbeat(session, beats)
        assert list(beat.held_task_ids) == ["t1"]
        assert beats.asked[-1] == 5.0  # still holding it: the usual pace
        gate.set()
        await session.until(lambda: "t1" in session.results)
        # Holding nothing again once the result is written: the idle interval (a beat
        # or two may still come at the usual pace while the write finishes).
        for _ in range(5):
            count = len(beats.asked)
            await next_heartbeat(session, beats)
            await beats.until_asked(lambda asked: len(asked) > count)  # noqa: B023
            if beats.asked[-1] == 30.0:
                break
        assert beats.asked[-1] == 30.0


async def test_a_worker_told_no_idle_interval_beats_at_the_usual_one() -> None:
    beats = Beats()
    worker = make_worker(beats)

    @worker.task("noop")
    async def noop(ctx: TaskContext) -> None:
        return None

    service = FakeWorkerService(heartbeat_interval_s=5.0)  # an older broker: no idle interval
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        await next_heartbeat(session, beats)
        await beats.until_asked(lambda asked: len(asked) == 2)
        assert beats.asked == [5.0, 5.0]


async def test_heartbeats_list_held_tasks_and_the_last_assignments_seq() -> None:
    beats = Beats()
    worker = make_worker(beats, capacity=4)
    gates = {name: asyncio.Event() for name in ("t1", "t2", "t3")}

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> str:
        await gates[ctx.task_id].wait()
        return ctx.task_id

    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        first = await next_heartbeat(session, beats)
        assert (list(first.held_task_ids), first.assignments_seen, first.in_flight) == ([], 0, 0)
        assign(session, 1, "t1:hold", "t2:hold")
        assign(session, 2, "t3:hold")
        await session.until(lambda: len(session.started) == 3)
        beat = await next_heartbeat(session, beats)
        assert sorted(beat.held_task_ids) == ["t1", "t2", "t3"]
        assert (beat.assignments_seen, beat.in_flight, beat.load) == (2, 3, 0.75)
        gates["t1"].set()
        await session.until(lambda: "t1" in session.results)
        beat = await next_heartbeat(session, beats)
        assert sorted(beat.held_task_ids) == ["t2", "t3"]
        assert beat.assignments_seen == 2
        gates["t2"].set()
        gates["t3"].set()
        await session.until(lambda: len(session.results) == 3)
        beat = await next_heartbeat(session, beats)
        assert (list(beat.held_task_ids), beat.in_flight) == ([], 0)


async def test_a_finished_task_is_held_until_its_result_is_written() -> None:
    beats = Beats()
    worker = make_worker(beats)
    gate = asyncio.Event()

    @worker.task("quick")
    async def quick(ctx: TaskContext) -> str:
        await gate.wait()
        beats.beat()  # the heartbeat falls due as the result enters the buffer
        return "done"

    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        assign(session, 1, "b:quick")
        await session.until(lambda: "b" in session.started)
        gate.set()
        await session.until(lambda: "b" in session.results and bool(session.of_kind("heartbeat")))

    kinds = [
        (m.WhichOneof("kind"), m)
        for m in session.messages
        if m.WhichOneof("kind") == "heartbeat"
        or (m.WhichOneof("kind") == "results" and m.results.results)
    ]
    beat_at = next(i for i, (kind, _) in enumerate(kinds) if kind == "heartbeat")
    result_at = next(i for i, (kind, _) in enumerate(kinds) if kind == "results")
    assert beat_at < result_at  # the heartbeat went out first...
    assert list(kinds[beat_at][1].heartbeat.held_task_ids) == ["b"]  # ...and listed b


async def test_a_buffered_result_counts_as_held_and_a_cancel_drops_it() -> None:
    # Between a handler's end and the writer's next message, its result waits in the buffer.
    class NoCall:
        def __aiter__(self) -> NoCall:
            return self

        async def __anext__(self) -> None:
            raise StopAsyncIteration

    worker = Worker()
    session = _Session(worker, NoCall(), None, "addr")  # type: ignore[arg-type]
    outcome = TaskOutcome("done", 1, True, b"", None, 1, 2)
    session._held.outcomes.append(outcome)
    assert session._held_task_ids() == ["done"]
    assert list(session._heartbeat().heartbeat.held_task_ids) == ["done"]
    session._cancel(["done"], {"done": 2})  # another attempt: this one stays
    assert session._held.outcomes == [outcome]
    session._cancel(["done"], {"done": 1})
    assert session._held.outcomes == []
    assert session._held_task_ids() == []


async def test_assignments_seen_starts_over_on_a_new_connection() -> None:
    beats = Beats()
    worker = make_worker(beats)

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> None:
        await asyncio.Event().wait()

    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        first = await service.sessions.get()
        assign(first, 4, "t1:hold")
        await first.until(lambda: "t1" in first.started)
        beat = await next_heartbeat(first, beats)
        assert (list(beat.held_task_ids), beat.assignments_seen) == (["t1"], 4)
        first.outbox.put_nowait(None)  # the broker ends the stream; the worker reconnects
        second = await asyncio.wait_for(service.sessions.get(), 10)
        beat = await next_heartbeat(second, beats)
        assert (list(beat.held_task_ids), beat.assignments_seen, beat.in_flight) == ([], 0, 0)


async def test_context_has_the_attempt_and_the_deadline() -> None:
    beats = Beats()
    worker = make_worker(beats)
    seen: list[tuple[int, datetime | None]] = []

    @worker.task("look")
    async def look(ctx: TaskContext) -> None:
        seen.append((ctx.attempt, ctx.deadline))

    service = FakeWorkerService()
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        assign(session, 1, "a:look", attempt=3, deadline_ms=T0_MS)
        assign(session, 2, "b:look")
        await session.until(lambda: len(session.results) == 2)
    assert seen == [(3, T0), (1, None)]
    assert session.results["a"].attempt == 3


async def test_cancels_of_tasks_not_held_are_ignored_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    beats = Beats()
    worker = make_worker(beats)
    sync_cancelled = threading.Event()
    release_sync = threading.Event()

    @worker.task("hold")
    async def hold(ctx: TaskContext) -> None:
        await asyncio.Event().wait()

    @worker.task("poll")
    def poll(ctx: TaskContext) -> None:
        while not ctx.cancelled:
            release_sync.wait(0.001)
        sync_cancelled.set()
        assert release_sync.wait(10)  # keeps its thread (and slot) a while after the cancel

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    service = FakeWorkerService()
    caplog.set_level(logging.DEBUG, logger="taskbroker.worker")
    async with serve(service) as (address, _), running(worker, address):
        session = await service.sessions.get()
        assign(session, 1, "a:hold", "s:poll", "e:echo")
        await session.until(lambda: {"a", "s"} <= set(session.started) and "e" in session.results)
        session.cancel("nobody", "e")  # one never assigned, one already reported
        session.cancel("a", "s")
        await asyncio.to_thread(sync_cancelled.wait, 10)
        beat = await next_heartbeat(session, beats)
        # The sync handler still runs (and counts in in_flight), but is no longer held.
        assert (list(beat.held_task_ids), beat.in_flight) == ([], 1)
        release_sync.set()
        assign(session, 2, "e2:echo")
        await session.until(lambda: "e2" in session.results)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "does not hold" in caplog.text
    assert {"a", "s"}.isdisjoint(session.results)


def test_reexported_error_keeps_one_line_docs() -> None:
    assert ResourceExhausted.__doc__ is not None
    assert "\n" not in ResourceExhausted.__doc__.strip()
