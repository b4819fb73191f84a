"""The read, admin and error side of the wire contract, over real gRPC as a client built
from the .proto files alone would use it: reads within the advertised size, page tokens,
update masks and etags, google.rpc error details, strict ids, an ack for every
SubmitStream message, idempotency conflicts, terminal states, enums and reflection v1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from google.rpc.status_pb2 import Status
from grpc_reflection.v1alpha import reflection_pb2 as _reflection
from grpc_status import rpc_status

from broker import Broker
from tests.support.config import make_config
from worker_sdk import AlreadyExists, Client
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc

MIB = 1024 * 1024
# What a client gets from gRPC unless it asks for more.
DEFAULT_RECEIVE_LIMIT = 4 * MIB


def _details(error: grpc.aio.AioRpcError) -> Status:
    status: Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    assert status.code == error.code().value[0]
    return status


def _error_info(error: grpc.aio.AioRpcError) -> ErrorInfo:
    for detail in _details(error).details:
        info = ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "taskbroker"
            return info
    raise AssertionError("no ErrorInfo")


def _violations(error: grpc.aio.AioRpcError) -> list[str]:
    for detail in _details(error).details:
        bad = BadRequest()
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    return []


def _trailers(error: grpc.aio.AioRpcError) -> dict[str, str]:
    pairs = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    return {key: str(value) for key, value in pairs}


async def _fails(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def _next(stream: Any) -> _tasks.SubmitStreamResponse:
    message = await stream.read()
    assert isinstance(message, _tasks.SubmitStreamResponse)
    return message


@pytest.fixture
async def small_client(broker: Broker) -> AsyncIterator[grpc.aio.Channel]:
    """A client with gRPC's default 4 MiB receive limit, said out loud."""
    options = [("grpc.max_receive_message_length", DEFAULT_RECEIVE_LIMIT)]
    async with grpc.aio.insecure_channel(broker.address, options=options) as channel:
        yield channel


# -- reads within max_response_bytes -------------------------------------------------------


async def test_34_tasks_of_1_mib_are_read_by_a_client_with_a_4_mib_receive_limit(
    broker: Broker, small_client: grpc.aio.Channel
) -> None:
    assert broker.config.max_response_bytes <= DEFAULT_RECEIVE_LIMIT
    tasks = _tasks_grpc.TaskServiceStub(small_client)
    payloads = [bytes([i]) * MIB for i in range(34)]
    submitted = await tasks.SubmitBatch(
        _tasks.SubmitBatchRequest(
            tasks=[_tasks.TaskSpec(task_type="big", payload=p) for p in payloads]
        )
    )
    ids = list(submitted.task_ids)

    # A v1 List (a limit, nothing new) answers; pages stop short of the limit, and the
    # token (or before_id, as before) leads on through all 34, payloads whole.
    listed: list[_tasks.Task] = []
    request = _tasks.ListTasksRequest(limit=100)
    while True:
        page = await tasks.List(request)
        assert page.ByteSize() <= broker.config.max_response_bytes
        listed.extend(page.tasks)
        if not page.next_page_token:
            break
        request = _tasks.ListTasksRequest(limit=100, page_token=page.next_page_token)
    assert [t.id for t in listed] == ids[::-1]
    assert all(t.spec.payload == payloads[ids.index(t.id)] for t in listed)
    assert {t.view for t in listed} == {_tasks.TASK_VIEW_FULL}

    # A v1 Wait answers too: in full as far as the size allows, the rest without payload
    # (and says so); Get reads those one by one.
    waited = await tasks.Wait(_tasks.WaitRequest(task_ids=ids, timeout_s=0.01))
    assert waited.ByteSize() <= broker.config.max_response_bytes
    assert [t.id for t in waited.tasks] == ids
    basic = [t for t in waited.tasks if t.view == _tasks.TASK_VIEW_BASIC]
    assert basic
    assert all(not t.spec.payload for t in basic)
    assert waited.tasks[0].spec.payload == payloads[0]
    one = await tasks.Get(_tasks.GetTaskRequest(task_id=basic[-1].id))
    assert one.spec.payload == payloads[ids.index(basic[-1].id)]

    # Asking for the basic view: every task in one page, no payload.
    light = await tasks.List(_tasks.ListTasksRequest(page_size=50, view=_tasks.TASK_VIEW_BASIC))
    assert len(light.tasks) == 34
    assert not light.next_page_token
    assert all(not t.spec.payload and t.view == _tasks.TASK_VIEW_BASIC for t in light.tasks)


async def test_the_sdk_follows_pages_and_can_list_without_payloads(
    broker: Broker, small_client: grpc.aio.Channel
) -> None:
    tasks = _tasks_grpc.TaskServiceStub(small_client)
    specs = [_tasks.TaskSpec(task_type="big", payload=b"x" * MIB) for _ in range(6)]
    await tasks.SubmitBatch(_tasks.SubmitBatchRequest(tasks=specs))
    async with Client(broker.address) as client:
        full = await client.list_tasks(limit=6)
        light = await client.list_tasks(limit=6, payloads=False)
        assert len(await client.list_tasks(limit=4)) == 4
    assert [len(t.payload) for t in full] == [MIB] * 6  # from more than one page
    assert [t.id for t in light] == [t.id for t in full]
    assert all(t.payload == b"" for t in light)


async def test_list_pages_by_token_and_refuses_a_token_for_other_filters(
    channel: grpc.aio.Channel,
) -> None:
    tasks = _tasks_grpc.TaskServiceStub(channel)
    specs = [_tasks.TaskSpec(task_type="t") for _ in range(5)]
    ids = list((await tasks.SubmitBatch(_tasks.SubmitBatchRequest(tasks=specs))).task_ids)
    seen: list[str] = []
    token = ""
    for _ in range(3):
        page = await tasks.List(_tasks.ListTasksRequest(page_size=2, page_token=token))
        seen.extend(t.id for t in page.tasks)
        token = page.next_page_token
    assert seen == ids[::-1]
    assert not token  # the last page says so: no empty page after it
    first = await tasks.List(_tasks.ListTasksRequest(page_size=2))
    other = tasks.List(
        _tasks.ListTasksRequest(page_size=2, task_type="t", page_token=first.next_page_token)
    )
    error = await _fails(other)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(error) == ["page_token"]
    error = await _fails(tasks.List(_tasks.ListTasksRequest(page_token="not a token")))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_completion_notices_leave_payloads_out_when_asked(
    channel: grpc.aio.Channel,
) -> None:
    tasks = _tasks_grpc.TaskServiceStub(channel)
    outbox: asyncio.Queue[_tasks.SubmitStreamRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[_tasks.SubmitStreamRequest]:
        while (message := await outbox.get()) is not None:
            yield message

    stream = tasks.SubmitStream(requests())
    spec = _tasks.TaskSpec(task_type="t", payload=b"p" * 1000)
    await outbox.put(
        _tasks.SubmitStreamRequest(
            batch_id=1, tasks=[spec], watch=True, completion_view=_tasks.TASK_VIEW_BASIC
        )
    )
    ack = (await _next(stream)).ack
    (task_id,) = ack.task_ids
    await tasks.Cancel(_tasks.CancelRequest(task_id=task_id))
    completions = (await _next(stream)).completions
    (done,) = completions.tasks
    assert (done.id, done.state, done.terminal) == (task_id, _tasks.TASK_STATE_CANCELLED, True)
    assert (done.view, done.spec.payload) == (_tasks.TASK_VIEW_BASIC, b"")
    await outbox.put(None)


async def test_a_lower_max_response_bytes_bounds_every_read(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_response_bytes=300 * 1024)
    async with Broker(config) as broker, grpc.aio.insecure_channel(broker.address) as channel:
        tasks = _tasks_grpc.TaskServiceStub(channel)
        limits = (await _admin_grpc.AdminServiceStub(channel).Stats(_admin.StatsRequest())).limits
        assert (limits.max_response_bytes, limits.max_payload_bytes) == (300 * 1024, MIB)
        outbox: asyncio.Queue[_tasks.SubmitStreamRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[_tasks.SubmitStreamRequest]:
            while (message := await outbox.get()) is not None:
                yield message

        stream = tasks.SubmitStream(requests())
        specs = [_tasks.TaskSpec(task_type="t", payload=b"x" * 120_000) for _ in range(5)]
        await outbox.put(_tasks.SubmitStreamRequest(batch_id=1, tasks=specs, watch=True))
        ids = list((await _next(stream)).ack.task_ids)
        page = await tasks.List(_tasks.ListTasksRequest(limit=5))
        assert len(page.tasks) == 2  # 120 kB each: a third would pass 300 KiB
        assert page.next_page_token
        assert page.ByteSize() <= config.max_response_bytes
        waited = await tasks.Wait(_tasks.WaitRequest(task_ids=ids, timeout_s=0.01))
        assert [t.view for t in waited.tasks] == [_tasks.TASK_VIEW_FULL] * 2 + [
            _tasks.TASK_VIEW_BASIC
        ] * 3
        # A completion notice too big for the limit comes without its payload.
        await tasks.Cancel(_tasks.CancelRequest(task_id=ids[0]))
        (done,) = (await _next(stream)).completions.tasks
        assert (done.id, done.view, done.spec.payload) == (ids[0], _tasks.TASK_VIEW_BASIC, b"")
        await outbox.put(None)


# -- SubmitStream acks ---------------------------------------------------------------------


async def test_every_submit_stream_message_is_acked_even_one_without_tasks(
    channel: grpc.aio.Channel,
) -> None:
    tasks = _tasks_grpc.TaskServiceStub(channel)
    existing = await tasks.Submit(_tasks.SubmitRequest(task=_tasks.TaskSpec(task_type="t")))
    outbox: asyncio.Queue[_tasks.SubmitStreamRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[_tasks.SubmitStreamRequest]:
        while (message := await outbox.get()) is not None:
            yield message

    stream = tasks.SubmitStream(requests())
    await outbox.put(_tasks.SubmitStreamRequest(batch_id=7))
    await outbox.put(_tasks.SubmitStreamRequest(batch_id=8, watch_task_ids=[existing.task_id]))
    acks: list[_tasks.SubmitAck] = []
    async with asyncio.timeout(10):
        while len(acks) < 2:
            acks.append((await _next(stream)).ack)
    assert sorted((a.batch_id, list(a.task_ids), a.error_code) for a in acks) == [
        (7, [], 0),
        (8, [], 0),
    ]
    await outbox.put(None)


# -- strict ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["013", "01", "+1", " 1", "1 ", "\u0661", "0x1", "-1", ""])
async def test_a_task_id_is_read_one_way_only(channel: grpc.aio.Channel, text: str) -> None:
    tasks = _tasks_grpc.TaskServiceStub(channel)
    reply = await tasks.Submit(_tasks.SubmitRequest(task=_tasks.TaskSpec(task_type="t")))
    assert reply.task_id == "1"
    error = await _fails(tasks.Get(_tasks.GetTaskRequest(task_id=text)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(error) == ["task_id"]
    assert (await tasks.Get(_tasks.GetTaskRequest(task_id="1"))).id == "1"


# -- idempotency ------------------------------------------------------------------------------


async def test_an_idempotency_key_reused_for_another_task_is_refused(
    channel: grpc.aio.Channel,
) -> None:
    tasks = _tasks_grpc.TaskServiceStub(channel)

    async def submit(payload: bytes) -> _tasks.SubmitResponse:
        spec = _tasks.TaskSpec(task_type="t", payload=payload, idempotency_key="order-1")
        return await tasks.Submit(_tasks.SubmitRequest(task=spec))

    first = await submit(b"a")
    again = await submit(b"a")
    assert (again.task_id, again.existing) == (first.task_id, True)
    error = await _fails(submit(b"b"))
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert _error_info(error).reason == "IDEMPOTENCY_KEY_REUSED"
    assert _violations(error) == ["idempotency_key"]
    assert first.task_id in (error.details() or "")
    listed = await tasks.List(_tasks.ListTasksRequest())
    assert [t.id for t in listed.tasks] == [first.task_id]  # nothing new was made


async def test_the_sdk_fails_only_the_submit_that_reuses_a_key(broker: Broker) -> None:
    async with Client(broker.address) as client:
        first = await client.submit("t", b"a", idempotency_key="order-1")
        # Sent at once, these share one SubmitStream message; only one reuses the key.
        reused, fresh = await asyncio.gather(
            client.submit("t", b"b", idempotency_key="order-1"),
            client.submit("t", b"c"),
            return_exceptions=True,
        )
        assert isinstance(reused, AlreadyExists)
        assert first in str(reused)
        assert isinstance(fresh, str)
        assert fresh != first


# -- UpdatePool: masks and etags -----------------------------------------------------------


async def _pool(admin: _admin_grpc.AdminServiceAsyncStub, name: str) -> _admin.Pool:
    (pool,) = [
        p for p in (await admin.ListPools(_admin.ListPoolsRequest())).pools if p.name == name
    ]
    return pool


async def test_an_older_client_read_modify_write_keeps_settings_it_does_not_know(
    channel: grpc.aio.Channel,
) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    await admin.UpdatePool(
        _admin.UpdatePoolRequest(
            pool=_admin.Pool(name="default", rate_per_s=50.0),
            update_mask=FieldMask(paths=["rate_per_s"]),
        )
    )
    # A client one revision behind reads the pool, changes max_queue and sends it back:
    # it has no rate_per_s, so none goes back, and it knows nothing of masks.
    read = await _pool(admin, "default")
    read.ClearField("rate_per_s")
    read.ClearField("etag")
    read.max_queue = 500
    await admin.UpdatePool(_admin.UpdatePoolRequest(pool=read))
    now = await _pool(admin, "default")
    assert (now.rate_per_s, now.max_queue) == (50.0, 500)
    # With a mask a setting goes back to 0, and only what the mask names changes.
    await admin.UpdatePool(
        _admin.UpdatePoolRequest(
            pool=_admin.Pool(name="default", max_queue=0, max_inflight=9),
            update_mask=FieldMask(paths=["rate_per_s"]),
        )
    )
    now = await _pool(admin, "default")
    assert (now.rate_per_s, now.max_queue, now.max_inflight) == (0.0, 500, 0)
    error = await _fails(
        admin.UpdatePool(
            _admin.UpdatePoolRequest(
                pool=_admin.Pool(name="default"), update_mask=FieldMask(paths=["speed"])
            )
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(error) == ["update_mask"]


async def test_an_update_with_a_stale_etag_is_aborted(channel: grpc.aio.Channel) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    read = await _pool(admin, "default")
    assert read.etag

    async def update(pool: _admin.Pool) -> _admin.Pool:
        return await admin.UpdatePool(_admin.UpdatePoolRequest(pool=pool, etag=read.etag))

    # Two admins edit the pool they both read, at once: one wins, the other is told.
    outcomes = await asyncio.gather(
        update(_admin.Pool(name="default", max_queue=10)),
        update(_admin.Pool(name="default", max_inflight=20)),
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    (won,) = [o for o in outcomes if isinstance(o, _admin.Pool)]
    (lost,) = errors
    assert lost.code() is grpc.StatusCode.ABORTED
    assert _error_info(lost).reason == "ETAG_MISMATCH"
    assert won.etag != read.etag
    now = await _pool(admin, "default")
    assert now.etag == won.etag
    assert (now.max_queue, now.max_inflight) in ((10, 0), (0, 20))
    # The current etag works; no etag means no check.
    again = await admin.UpdatePool(
        _admin.UpdatePoolRequest(pool=_admin.Pool(name="default", max_queue=30), etag=now.etag)
    )
    assert again.max_queue == 30
    await admin.UpdatePool(_admin.UpdatePoolRequest(pool=_admin.Pool(name="default", max_queue=31)))


async def test_pools_workers_and_config_history_page_by_token(channel: grpc.aio.Channel) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    for name in ("c", "a", "b"):
        await admin.CreatePool(_admin.CreatePoolRequest(pool=_admin.Pool(name=name)))
    names: list[str] = []
    token = ""
    while True:
        page = await admin.ListPools(_admin.ListPoolsRequest(page_size=2, page_token=token))
        assert len(page.pools) <= 2
        names.extend(p.name for p in page.pools)
        if not (token := page.next_page_token):
            break
    assert names == ["a", "b", "c", "default", "other"]
    everything = await admin.ListPools(_admin.ListPoolsRequest())  # a v1 client: all
    assert [p.name for p in everything.pools] == names
    assert not everything.next_page_token

    history = await admin.ConfigHistory(_admin.ConfigHistoryRequest())
    changes = [(c.pool, c.at_ms) for c in history.changes]
    paged: list[tuple[str, int]] = []
    token = ""
    while True:
        step = await admin.ConfigHistory(_admin.ConfigHistoryRequest(limit=2, page_token=token))
        paged.extend((c.pool, c.at_ms) for c in step.changes)
        if not (token := step.next_page_token):
            break
    assert paged == changes
    assert len(changes) >= 3
    first = await admin.ConfigHistory(_admin.ConfigHistoryRequest(limit=1))
    error = await _fails(
        admin.ConfigHistory(_admin.ConfigHistoryRequest(pool="a", page_token=first.next_page_token))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT

    workers = await admin.ListWorkers(_admin.ListWorkersRequest(page_size=10))
    assert (list(workers.workers), workers.next_page_token) == ([], "")


# -- the error model ----------------------------------------------------------------------


async def test_errors_carry_google_rpc_details(channel: grpc.aio.Channel) -> None:
    tasks = _tasks_grpc.TaskServiceStub(channel)
    admin = _admin_grpc.AdminServiceStub(channel)
    missing = await _fails(tasks.Get(_tasks.GetTaskRequest(task_id="999")))
    assert missing.code() is grpc.StatusCode.NOT_FOUND
    assert _error_info(missing).reason == "NOT_FOUND"

    # Overload: RESOURCE_EXHAUSTED with the pushback trailer and RetryInfo saying the same.
    await admin.CreatePool(_admin.CreatePoolRequest(pool=_admin.Pool(name="tiny", max_queue=1)))
    spec = _tasks.TaskSpec(task_type="t", pool="tiny")
    await tasks.Submit(_tasks.SubmitRequest(task=spec))
    full = await _fails(tasks.Submit(_tasks.SubmitRequest(task=spec)))
    assert full.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _error_info(full).reason == "QUEUE_FULL"
    pushback = _trailers(full)["grpc-retry-pushback-ms"]
    retry = RetryInfo()
    assert any(d.Unpack(retry) for d in _details(full).details)
    assert retry.retry_delay.ToMilliseconds() == int(pushback) > 0

    # A batch the queue can never hold is not overload: INVALID_ARGUMENT, and a pushback
    # that says "do not retry".
    never = await _fails(tasks.SubmitBatch(_tasks.SubmitBatchRequest(tasks=[spec, spec])))
    assert never.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _error_info(never).reason == "OVER_LIMIT"
    assert _trailers(never)["grpc-retry-pushback-ms"] == "-1"


# -- terminal states and enums -------------------------------------------------------------


async def test_tasks_say_whether_they_are_terminal(channel: grpc.aio.Channel) -> None:
    tasks = _tasks_grpc.TaskServiceStub(channel)
    reply = await tasks.Submit(_tasks.SubmitRequest(task=_tasks.TaskSpec(task_type="t")))
    pending = await tasks.Get(_tasks.GetTaskRequest(task_id=reply.task_id))
    assert (pending.terminal, pending.view) == (False, _tasks.TASK_VIEW_FULL)
    cancelled = (await tasks.Cancel(_tasks.CancelRequest(task_id=reply.task_id))).task
    assert (cancelled.state, cancelled.terminal) == (_tasks.TASK_STATE_CANCELLED, True)


async def test_enums_stand_beside_their_strings(channel: grpc.aio.Channel) -> None:
    admin = _admin_grpc.AdminServiceStub(channel)
    stats = await admin.Stats(_admin.StatsRequest())
    assert (stats.broker_state, stats.state) == ("running", _admin.BROKER_STATE_RUNNING)
    created = await admin.CreatePool(
        _admin.CreatePoolRequest(
            pool=_admin.Pool(
                name="enums",
                strategy_kind=_admin.STRATEGY_LEAST_LOADED,
                rate_mode_kind=_admin.RATE_MODE_QUEUE,
            )
        )
    )
    assert (created.strategy, created.strategy_kind) == (
        "least_loaded",
        _admin.STRATEGY_LEAST_LOADED,
    )
    assert (created.rate_mode, created.rate_mode_kind) == ("queue", _admin.RATE_MODE_QUEUE)


# -- reflection -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_server_reflection_answers_as_v1_and_v1alpha(
    channel: grpc.aio.Channel, version: str
) -> None:
    # v1's messages are v1alpha's, field for field: a v1 client sends these bytes.
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=_reflection.ServerReflectionRequest.SerializeToString,
        response_deserializer=_reflection.ServerReflectionResponse.FromString,
    )
    stream = call(iter([_reflection.ServerReflectionRequest(list_services="")]))
    answer = await stream.read()
    names = {s.name for s in answer.list_services_response.service}  # type: ignore[attr-defined]
    assert {
        "taskbroker.v1.TaskService",
        "taskbroker.v1.AdminService",
        "grpc.reflection.v1.ServerReflection",
    } <= names


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (_tasks.TaskSpec(task_type="job", priority=5000), "priority"),
        (_tasks.TaskSpec(task_type=""), "task_type"),
        (_tasks.TaskSpec(task_type="job", pool="nope"), "pool"),
        (
            _tasks.TaskSpec(task_type="job", retry=_tasks.RetryPolicy(max_attempts=1000)),
            "retry.max_attempts",
        ),
        (_tasks.TaskSpec(task_type="job", execution_timeout_s=-1), "execution_timeout_s"),
        (
            _tasks.TaskSpec(
                task_type="job",
                placement=_tasks.Placement(
                    preferred_labels=[_tasks.PreferredLabel(key="gpu", value="a", weight=0)]
                ),
            ),
            "placement.preferred_labels",
        ),
    ],
)
async def test_a_bad_task_spec_names_the_field_at_fault(
    broker: Broker, small_client: grpc.aio.Channel, spec: _tasks.TaskSpec, field: str
) -> None:
    stub = _tasks_grpc.TaskServiceStub(small_client)
    error = await _fails(stub.Submit(_tasks.SubmitRequest(task=spec)))
    assert _violations(error) == [field]
    batch = [_tasks.TaskSpec(task_type="job"), spec]
    error = await _fails(stub.SubmitBatch(_tasks.SubmitBatchRequest(tasks=batch)))
    assert _violations(error) == [f"tasks[1].{field}"]
