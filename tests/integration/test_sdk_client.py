"""Client and SyncClient against fake Task and Admin services on a real in-process server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest

from broker.errors import BrokerError
from broker.server.status import rich_status
from tests.support.fake_broker import FakeAdminService, FakeTaskService, serve_services
from worker_sdk import (
    AlreadyExists,
    ArmStats,
    Client,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Placement,
    PoolInfo,
    PreferredLabel,
    ResourceExhausted,
    RuntimeStats,
    SyncClient,
    TaskbrokerError,
    TaskFailed,
    TaskRequest,
    TaskState,
    Unavailable,
)
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import tasks_pb2 as _tasks

_Context = grpc.aio.ServicerContext[object, object]


@pytest.fixture
def tasks() -> FakeTaskService:
    return FakeTaskService()


@pytest.fixture
def admin() -> FakeAdminService:
    return FakeAdminService()


@pytest.fixture
async def address(tasks: FakeTaskService, admin: FakeAdminService) -> AsyncIterator[str]:
    async with serve_services(tasks, admin) as address:
        yield address


@pytest.fixture
async def client(address: str) -> AsyncIterator[Client]:
    async with Client(address) as running:
        yield running
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("taskbroker-")]
    assert leftovers == []


def unused_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


# -- submitting ----------------------------------------------------------------------------


async def test_submit_encodes_payloads(client: Client, tasks: FakeTaskService) -> None:
    ids = [
        await client.submit("echo", b"\x00raw"),
        await client.submit("echo", "text", priority=5),
        await client.submit("echo", json={"n": [1, 2]}, pool="other"),
        await client.submit("echo"),
    ]
    specs = [tasks.tasks[i].spec for i in ids]
    assert [s.payload for s in specs] == [b"\x00raw", b"text", b'{"n":[1,2]}', b""]
    assert specs[1].priority == 5
    assert specs[2].pool == "other"
    assert specs[0].pool == "default"
    assert all(not r.watch for r in tasks.stream_requests)
    with pytest.raises(TypeError):
        await client.submit("echo", b"x", json=1)


async def test_concurrent_submits_are_coalesced(client: Client, tasks: FakeTaskService) -> None:
    ids = await asyncio.gather(*(client.submit("echo", str(i)) for i in range(1000)))
    assert len(set(ids)) == 1000
    assert [tasks.tasks[task_id].spec.payload for task_id in ids] == [
        str(i).encode() for i in range(1000)
    ]
    assert len(tasks.stream_requests) <= 4, f"{len(tasks.stream_requests)} messages"
    assert max(len(r.tasks) for r in tasks.stream_requests) <= 500
    assert tasks.streams_opened == 1


async def test_batch_size_bounds_each_message(address: str, tasks: FakeTaskService) -> None:
    async with Client(address, batch_size=100) as client:
        await asyncio.gather(*(client.submit("echo") for _ in range(350)))
    assert all(len(r.tasks) <= 100 for r in tasks.stream_requests)
    assert len({r.batch_id for r in tasks.stream_requests}) == len(tasks.stream_requests)


async def test_one_bad_submit_does_not_fail_the_ones_batched_with_it(
    client: Client, tasks: FakeTaskService
) -> None:
    outcomes = await asyncio.gather(
        *(client.submit("echo", pool="missing" if i == 3 else "default") for i in range(10)),
        client.submit("echo", priority=5000),
        return_exceptions=True,
    )
    assert isinstance(outcomes[3], NotFound)
    assert "missing" in str(outcomes[3])
    assert isinstance(outcomes[10], InvalidArgument)
    good = [o for i, o in enumerate(outcomes) if i not in (3, 10)]
    assert all(isinstance(o, str) for o in good)
    assert len(tasks.tasks) == 9


async def test_ack_error_maps_to_exception_for_every_submit_of_the_batch(
    client: Client, tasks: FakeTaskService
) -> None:
    tasks.reject_all = (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "queue full")
    outcomes = await asyncio.gather(
        *(client.submit("echo") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, ResourceExhausted) for o in outcomes)
    assert all(str(o) == "queue full" for o in outcomes)
    assert len(tasks.stream_requests) == 1  # not retried one by one
    tasks.reject_all = (grpc.StatusCode.UNAVAILABLE.value[0], "draining")
    with pytest.raises(Unavailable, match="draining"):
        await client.submit("echo")


async def test_submit_carries_placement_hints(client: Client, tasks: FakeTaskService) -> None:
    hinted = await client.submit(
        "train",
        require={"gpu": "a100"},
        prefer=[PreferredLabel("zone", "eu", weight=5)],
        anti_affinity="shard-1",
        anti_affinity_soft=True,
    )
    plain = await client.submit("train")
    assert tasks.tasks[hinted].spec.placement == _tasks.Placement(
        required_labels={"gpu": "a100"},
        preferred_labels=[_tasks.PreferredLabel(key="zone", value="eu", weight=5)],
        anti_affinity_group="shard-1",
        anti_affinity_soft=True,
    )
    assert not tasks.tasks[plain].spec.HasField("placement")
    info = await client.get(hinted)
    assert info.placement == Placement(
        required_labels={"gpu": "a100"},
        preferred_labels=(PreferredLabel("zone", "eu", 5),),
        anti_affinity_group="shard-1",
        anti_affinity_soft=True,
    )
    assert info.unschedulable
    assert info.placement_note == "unschedulable: no connected worker"
    assert (await client.get(plain)).placement.free


async def test_submit_carries_sticky_and_routing_keys(
    client: Client, tasks: FakeTaskService
) -> None:
    both = await client.submit("train", sticky_key="cache-3", routing_key="user-7")
    routed = await client.submit("train", routing_key="user-7")
    (many,) = await client.submit_many([TaskRequest("train", sticky_key="cache-3")])
    assert tasks.tasks[both].spec.placement == _tasks.Placement(
        sticky_key="cache-3", routing_key="user-7"
    )
    assert tasks.tasks[routed].spec.placement == _tasks.Placement(routing_key="user-7")
    assert tasks.tasks[many].spec.placement == _tasks.Placement(sticky_key="cache-3")
    info = await client.get(both)
    assert (info.placement.sticky_key, info.placement.routing_key) == ("cache-3", "user-7")
    assert (await client.get(routed)).placement.free


async def test_a_bad_weight_fails_only_its_own_submit(
    client: Client, tasks: FakeTaskService
) -> None:
    outcomes = await asyncio.gather(
        *(
            client.submit("echo", prefer=[PreferredLabel("zone", "eu", 0 if i == 2 else 3)])
            for i in range(6)
        ),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], InvalidArgument)
    assert "weight must be 1..1000" in str(outcomes[2])
    good = [o for o in outcomes if isinstance(o, str)]
    assert len(good) == 5
    assert [tasks.tasks[i].spec.placement.preferred_labels[0].weight for i in good] == [3] * 5
    # The rejected batch was sent again one task per message.
    assert [len(r.tasks) for r in tasks.stream_requests[-6:]] == [1] * 6


async def test_a_hint_of_the_wrong_type_fails_the_call_not_the_shared_stream(
    client: Client, tasks: FakeTaskService
) -> None:
    bad = {"gpus": 2}
    outcomes = await asyncio.gather(
        client.submit("echo", "1"),
        client.submit("echo", require=bad),  # type: ignore[arg-type]
        client.submit("echo", "3"),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], TypeError)
    assert isinstance(outcomes[0], str)
    assert isinstance(outcomes[2], str)
    with pytest.raises(ValueError, match="anti_affinity"):
        await client.submit("echo", anti_affinity_soft=True)
    assert await client.submit("echo")
    assert tasks.streams_opened == 1


async def test_submit_many_is_one_batch(client: Client, tasks: FakeTaskService) -> None:
    ids = await client.submit_many(
        [
            TaskRequest("a", b"1"),
            TaskRequest("b", priority=3, pool="other", require={"zone": "eu"}, anti_affinity="g"),
        ]
    )
    assert [tasks.tasks[i].spec.task_type for i in ids] == ["a", "b"]
    assert tasks.tasks[ids[1]].spec.placement == _tasks.Placement(
        required_labels={"zone": "eu"}, anti_affinity_group="g"
    )
    assert await client.submit_many([]) == []
    with pytest.raises(NotFound):
        await client.submit_many([TaskRequest("a"), TaskRequest("b", pool="missing")])
    assert len(tasks.tasks) == 2
    assert tasks.stream_requests == []


# -- waiting -------------------------------------------------------------------------------


async def test_wait_returns_when_the_task_completes(client: Client, tasks: FakeTaskService) -> None:
    task_id = await client.submit("echo", b"hi")
    waiting = asyncio.create_task(client.wait(task_id))
    await tasks.until(lambda: any(task_id in r.watch_task_ids for r in tasks.stream_requests))
    assert not waiting.done()
    tasks.finish(task_id, result=b'{"ok": true}')
    info = await waiting
    assert info.id == task_id
    assert info.state is TaskState.SUCCEEDED
    assert info.done
    assert info.json() == {"ok": True}
    assert info.payload == b"hi"
    assert info.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert info.started_at is None
    assert info.error is None
    # Already finished: answered at once.
    assert await client.result(task_id) == b'{"ok": true}'


async def acked(client: Client, task_id: str) -> None:
    """Until the client has taken the ack of the submit of `task_id` (`run` then watches it)."""
    stream = client._submit_stream()
    while task_id not in stream._watchers:
        await asyncio.sleep(0.001)


async def test_run_submits_and_asks_for_the_result_in_one_message(
    client: Client, tasks: FakeTaskService
) -> None:
    running = asyncio.create_task(client.run(TaskRequest("echo", b"hi")))
    await tasks.until(lambda: bool(tasks.tasks))
    (task_id,) = tasks.tasks
    await asyncio.wait_for(acked(client, task_id), 5)  # it waits on the notice it asked for
    assert not running.done()
    tasks.finish(task_id, result=b"done")
    info = await asyncio.wait_for(running, 5)
    assert (info.id, info.state, info.result) == (task_id, TaskState.SUCCEEDED, b"done")
    (request,) = tasks.stream_requests
    assert request.watch
    assert len(request.tasks) == 1
    assert list(request.watch_task_ids) == []


async def test_run_and_submit_share_no_message(client: Client, tasks: FakeTaskService) -> None:
    tasks.hold_acks = True
    calls = [client.run(TaskRequest("ran")) if i % 2 else client.submit("sent") for i in range(8)]
    pending = asyncio.gather(*calls)
    await tasks.until(lambda: sum(len(r.tasks) for r in tasks.stream_requests) == 8)
    for request in tasks.stream_requests:
        kinds = {spec.task_type for spec in request.tasks}
        assert kinds == ({"ran"} if request.watch else {"sent"})
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending


async def test_run_times_out_naming_the_task_which_carries_on(
    client: Client, tasks: FakeTaskService
) -> None:
    with pytest.raises(DeadlineExceeded, match=r"task \S+ did not finish within 0.05s"):
        await client.run(TaskRequest("slow"), timeout=0.05)
    (task_id,) = tasks.tasks
    waiting = asyncio.create_task(client.wait(task_id, timeout=10))
    await asyncio.sleep(0)
    tasks.finish(task_id, result=b"late")
    assert (await waiting).result == b"late"


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, "fake broker restarting"),
        # What gRPC itself reports when a stream breaks while this side writes to it (the
        # broker stopping): no status details, which the broker sends with its own errors.
        (grpc.StatusCode.INTERNAL, "Internal error from Core"),
    ],
)
async def test_run_rides_out_a_lost_stream(
    client: Client, tasks: FakeTaskService, code: grpc.StatusCode, details: str
) -> None:
    running = asyncio.create_task(client.run(TaskRequest("echo")))
    await tasks.until(lambda: bool(tasks.tasks))
    (task_id,) = tasks.tasks
    await asyncio.wait_for(acked(client, task_id), 5)
    tasks.break_streams(code, details)
    # It watches its task again, on a new stream, as a wait does.
    await asyncio.wait_for(
        tasks.until(lambda: any(task_id in r.watch_task_ids for r in tasks.stream_requests)), 5
    )
    tasks.finish(task_id, result=b"done")
    assert (await asyncio.wait_for(running, 5)).result == b"done"
    assert tasks.streams_opened == 2


async def test_a_wait_fails_on_an_internal_error_the_broker_sent(
    client: Client, tasks: FakeTaskService
) -> None:
    task_id = await client.submit("echo")
    waiting = asyncio.create_task(client.wait(task_id, timeout=10))
    await tasks.until(lambda: any(task_id in r.watch_task_ids for r in tasks.stream_requests))
    status = rich_status(BrokerError("the store is corrupt"))
    assert status.code is grpc.StatusCode.INTERNAL
    tasks.break_streams(status.code, status.details, status.trailing_metadata)
    with pytest.raises(TaskbrokerError, match="broke: the store is corrupt"):
        await asyncio.wait_for(waiting, 5)
    assert tasks.streams_opened == 1  # not watched again


async def test_run_refuses_bad_arguments_before_sending(
    client: Client, tasks: FakeTaskService
) -> None:
    with pytest.raises(ValueError, match="timeout must be None or a finite number"):
        await client.run(TaskRequest("echo"), timeout=-1)
    with pytest.raises(ValueError, match="anti_affinity_soft=True needs an anti_affinity group"):
        await client.run(TaskRequest("echo", anti_affinity_soft=True))
    assert tasks.stream_requests == []


async def test_a_failed_run_submit_raises_as_submit_does(
    client: Client, tasks: FakeTaskService
) -> None:
    tasks.reject_all = (3, "bad task")
    with pytest.raises(InvalidArgument, match="bad task"):
        await client.run(TaskRequest("echo"))


async def test_result_raises_task_failed(client: Client, tasks: FakeTaskService) -> None:
    task_id = await client.submit("boom")
    tasks.finish(task_id, error="ValueError")
    with pytest.raises(TaskFailed) as failed:
        await client.result(task_id)
    assert failed.value.task.state is TaskState.FAILED
    assert failed.value.task.error is not None
    assert failed.value.task.error.type == "ValueError"
    assert "ValueError" in str(failed.value)


async def test_wait_unknown_task_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="nope"):
        await client.wait("nope")


async def test_wait_timeout_raises_deadline_exceeded(
    client: Client, tasks: FakeTaskService
) -> None:
    task_id = await client.submit("slow")
    with pytest.raises(DeadlineExceeded, match=task_id):
        await client.wait(task_id, timeout=0.05)
    with pytest.raises(DeadlineExceeded):
        await client.wait_many([task_id], timeout=0.05)
    # A waiter that gave up does not stop a later one from getting the completion.
    waiting = asyncio.create_task(client.wait(task_id, timeout=10))
    await asyncio.sleep(0)
    tasks.finish(task_id, result=b"late")
    assert (await waiting).result == b"late"


async def test_wait_many_coalesces_watches_and_keeps_order(
    client: Client, tasks: FakeTaskService
) -> None:
    ids = await asyncio.gather(*(client.submit("echo", str(i)) for i in range(100)))
    sent_before = len(tasks.stream_requests)
    waiting = asyncio.create_task(client.wait_many(ids, timeout=10))
    await tasks.until(lambda: len(tasks.stream_requests) > sent_before)
    assert len(tasks.stream_requests[-1].watch_task_ids) == 100
    for task_id in reversed(ids):
        tasks.finish(task_id, result=task_id.encode())
    infos = await waiting
    assert [i.result for i in infos] == [i.encode() for i in ids]


async def test_many_concurrent_results(client: Client, tasks: FakeTaskService) -> None:
    async def finisher() -> None:
        while True:
            await tasks.until(lambda: bool(tasks._watchers))
            for task_id in list(tasks._watchers):
                tasks.finish(task_id, result=b"r" + task_id.encode())

    async def submit_and_wait(i: int) -> bytes:
        return await client.result(await client.submit("echo", str(i)), timeout=10)

    background = asyncio.create_task(finisher())
    try:
        results = await asyncio.gather(*(submit_and_wait(i) for i in range(500)))
    finally:
        background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await background
    assert len(set(results)) == 500
    assert len(tasks.stream_requests) < 50


# -- breakage ------------------------------------------------------------------------------


async def test_broken_stream_fails_pending_submits_watches_waits_again_then_reopens(
    client: Client, tasks: FakeTaskService
) -> None:
    finished_id = await client.submit("echo")
    waiting = asyncio.create_task(client.wait(finished_id))
    tasks.hold_acks = True
    submitting = asyncio.gather(*(client.submit("echo") for _ in range(10)), return_exceptions=True)
    await tasks.until(lambda: sum(len(r.tasks) for r in tasks.stream_requests) == 11)
    tasks.break_streams()
    tasks.hold_acks = False
    outcomes = await asyncio.wait_for(submitting, 5)
    assert all(isinstance(o, Unavailable) for o in outcomes)
    assert all(client.address in str(o) for o in outcomes)

    # The wait is not failed: it watches its task again, on a new stream.
    def watched_twice() -> bool:
        return sum(finished_id in r.watch_task_ids for r in tasks.stream_requests) == 2

    await asyncio.wait_for(tasks.until(watched_twice), 5)
    tasks.finish(finished_id, result=b"done")
    assert (await asyncio.wait_for(waiting, 5)).result == b"done"
    # Later calls use that new stream.
    assert await client.submit("echo")
    assert tasks.streams_opened == 2


async def test_unmatchable_error_ack_fails_the_stream_instead_of_hanging(
    client: Client, tasks: FakeTaskService
) -> None:
    tasks.unmatched_ack = True
    with pytest.raises(Unavailable, match="could not parse"):
        await asyncio.wait_for(client.submit("echo"), 5)


async def test_close_fails_pending_waits_and_is_idempotent(
    address: str, tasks: FakeTaskService
) -> None:
    client = Client(address)
    task_id = await client.submit("echo")
    waiting = asyncio.create_task(client.wait(task_id))
    await tasks.until(lambda: any(r.watch_task_ids for r in tasks.stream_requests))
    await client.close()
    with pytest.raises(Unavailable):
        await waiting
    await client.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await client.get(task_id)


async def test_unreachable_broker_is_unavailable_naming_the_address() -> None:
    address = unused_address()
    async with Client(address) as client:
        with pytest.raises(Unavailable, match=address):
            await asyncio.wait_for(client.get("1"), 10)
        with pytest.raises(Unavailable, match=address):
            await asyncio.wait_for(client.submit("echo"), 10)
        with pytest.raises(Unavailable, match=address):
            await asyncio.wait_for(client.stats(), 10)


# -- unary calls ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("NOT_FOUND", NotFound),
        ("INVALID_ARGUMENT", InvalidArgument),
        ("ALREADY_EXISTS", AlreadyExists),
        ("FAILED_PRECONDITION", FailedPrecondition),
        ("RESOURCE_EXHAUSTED", ResourceExhausted),
        ("UNAVAILABLE", Unavailable),
        ("DEADLINE_EXCEEDED", DeadlineExceeded),
        ("INTERNAL", TaskbrokerError),
    ],
)
async def test_unary_error_codes_map_to_exceptions(
    client: Client, code: str, error: type[TaskbrokerError]
) -> None:
    with pytest.raises(error, match=f"fake {code}") as raised:
        await client.get(f"code:{code}")
    assert type(raised.value) is error
    assert not isinstance(raised.value, grpc.RpcError)
    assert raised.value.__cause__ is None


async def test_get_cancel_and_list(client: Client, tasks: FakeTaskService) -> None:
    first = await client.submit("a", pool="default")
    second = await client.submit("b", pool="other")
    got = await client.get(first)
    assert (got.task_type, got.state, got.pool) == ("a", TaskState.PENDING, "default")
    cancelled = await client.cancel(second)
    assert cancelled.state is TaskState.CANCELLED
    assert cancelled.error is not None
    with pytest.raises(FailedPrecondition):
        await client.cancel(second)
    assert [t.id for t in await client.list_tasks()] == [second, first]
    assert [t.id for t in await client.list_tasks(pool="default")] == [first]
    assert [t.id for t in await client.list_tasks(states=[TaskState.CANCELLED])] == [second]
    assert [t.id for t in await client.list_tasks(task_type="a")] == [first]
    assert [t.id for t in await client.list_tasks(before_id=second)] == [first]
    assert len(await client.list_tasks(limit=1)) == 1


async def test_admin_calls(client: Client) -> None:
    assert [p.name for p in await client.list_pools()] == ["default"]
    pool = await client.create_pool("gpu", "least_loaded")
    assert (pool.name, pool.strategy) == ("gpu", "least_loaded")
    with pytest.raises(AlreadyExists):
        await client.create_pool("gpu")
    (worker,) = await client.list_workers()
    assert worker.labels == {"zone": "a"}
    assert worker.task_types == ("echo", "sum")
    assert worker.load == 0.25
    assert worker.connected_at is not None
    assert worker.last_heartbeat is None
    assert await client.list_workers(pool="gpu") == []
    drained = await client.drain_worker("w-1")
    assert drained.draining
    with pytest.raises(NotFound):
        await client.drain_worker("w-9")
    stats = await client.stats()
    assert stats.broker_state == "running"
    (default,) = stats.pools
    assert (default.pending, default.active, default.succeeded, default.cancelled) == (3, 2, 10, 0)
    assert default.unschedulable == 2
    assert default.arms == (
        ArmStats("round_robin", placed=8, finished=7, failed=1, mean_wait_s=0.5, mean_run_s=1.25),
        ArmStats("adaptive", placed=2, finished=0, failed=0, mean_wait_s=0.0, mean_run_s=0.0),
    )
    assert default.runtimes == (
        RuntimeStats(
            "echo",
            samples=9,
            mean_run_s=0.2,
            stddev_run_s=0.05,
            predictions=6,
            mean_abs_error_s=0.01,
        ),
    )
    assert (default.sticky_hits, default.sticky_misses, default.sticky_hit_rate) == (3, 1, 0.75)


async def test_create_pool_settings(client: Client, admin: FakeAdminService) -> None:
    plain = await client.create_pool("cpu")
    assert plain == PoolInfo("cpu", "round_robin", "", 0, 5.0)
    assert admin.pools["cpu"] == _admin.Pool(
        name="cpu", strategy="round_robin", sticky_timeout_s=5, rate_mode="reject"
    )
    split = await client.create_pool(
        "gpu", "least_loaded", ab_strategy="adaptive", ab_percent=20, sticky_timeout_s=0.5
    )
    assert split == PoolInfo("gpu", "least_loaded", "adaptive", 20, 0.5)
    assert [p.name for p in await client.list_pools()] == ["default", "cpu", "gpu"]
    assert (await client.list_pools())[2] == split
    with pytest.raises(InvalidArgument, match="known: round_robin, least_loaded"):
        await client.create_pool("odd", "random")


async def test_update_pool_changes_only_the_given_settings(
    client: Client, admin: FakeAdminService
) -> None:
    await client.create_pool(
        "gpu", "least_loaded", ab_strategy="adaptive", ab_percent=20, sticky_timeout_s=0.5
    )
    updated = await client.update_pool("gpu", ab_percent=50)
    assert updated == PoolInfo("gpu", "least_loaded", "adaptive", 50, 0.5)
    (sent,) = admin.update_requests
    assert sent.pool == _admin.Pool(
        name="gpu",
        strategy="least_loaded",
        ab_strategy="adaptive",
        ab_percent=50,
        sticky_timeout_s=0.5,
        rate_mode="reject",
    )
    assert await client.update_pool("gpu", strategy="consistent_hash", sticky_timeout_s=2) == (
        PoolInfo("gpu", "consistent_hash", "adaptive", 50, 2.0)
    )
    # "" and 0 are settings too: they end the A/B split.
    ended = await client.update_pool("gpu", ab_strategy="", ab_percent=0)
    assert ended == PoolInfo("gpu", "consistent_hash", "", 0, 2.0)
    assert await client.list_pools() == [
        PoolInfo("default", "round_robin", "", 0, 5.0),
        ended,
    ]


async def test_update_pool_errors(client: Client, admin: FakeAdminService) -> None:
    with pytest.raises(NotFound, match="pool 'nowhere' does not exist"):
        await client.update_pool("nowhere", strategy="least_loaded")
    assert admin.update_requests == []  # found missing by the read, never sent
    with pytest.raises(ValueError, match="at least one setting"):
        await client.update_pool("default")
    with pytest.raises(InvalidArgument, match="unknown strategy 'random'"):
        await client.update_pool("default", strategy="random")
    with pytest.raises(ValueError, match="out of range"):
        await client.update_pool("default", ab_percent=-1)  # the wire holds no negative
    assert admin.pools["default"].strategy == "round_robin"


async def test_update_pool_keeps_settings_this_sdk_does_not_know(
    client: Client, admin: FakeAdminService
) -> None:
    # Field 99 stands for a setting a newer broker has: it goes back as it came.
    unknown_field = b"\x98\x06\x01"
    newer = _admin.Pool()
    newer.ParseFromString(admin.pools["default"].SerializeToString() + unknown_field)
    admin.pools["default"] = newer
    await client.update_pool("default", strategy="least_loaded")
    (sent,) = admin.update_requests
    assert sent.pool.strategy == "least_loaded"
    assert unknown_field in sent.pool.SerializeToString()


async def test_update_pool_on_a_broker_without_it() -> None:
    # A broker built before UpdatePool existed: its server has no such method.
    handler = grpc.method_handlers_generic_handler(
        "taskbroker.v1.AdminService",
        {
            "ListPools": grpc.unary_unary_rpc_method_handler(
                _old_list_pools,
                request_deserializer=_admin.ListPoolsRequest.FromString,
                response_serializer=_admin.ListPoolsResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        async with Client(address) as client:
            with pytest.raises(TaskbrokerError, match="does not implement this call") as raised:
                await client.update_pool("default", strategy="least_loaded")
            assert type(raised.value) is TaskbrokerError
            assert address in str(raised.value)
    finally:
        await server.stop(None)


async def _old_list_pools(
    request: _admin.ListPoolsRequest, context: _Context
) -> _admin.ListPoolsResponse:
    return _admin.ListPoolsResponse(pools=[_admin.Pool(name="default", strategy="round_robin")])


# -- SyncClient ----------------------------------------------------------------------------


def test_sync_client_has_a_blocking_twin_of_every_client_call() -> None:
    calls = [
        name
        for name, method in inspect.getmembers(Client, inspect.iscoroutinefunction)
        if not name.startswith("_") and name != "close"
    ]
    assert len(calls) > 20
    for name in calls:
        twin = getattr(SyncClient, name)
        assert not inspect.iscoroutinefunction(twin), name
        assert inspect.signature(twin) == inspect.signature(getattr(Client, name)), name
        assert twin.__doc__ == getattr(Client, name).__doc__, name


async def test_sync_client(address: str, tasks: FakeTaskService) -> None:
    def use_it() -> tuple[str, bytes, int]:
        with SyncClient(address) as client:
            task_id = client.submit(
                "echo", json=[1], prefer=[PreferredLabel("zone", "eu")], sticky_key="k"
            )
            assert client.create_pool("gpu", ab_strategy="adaptive", ab_percent=10).ab_percent == 10
            assert client.update_pool("gpu", sticky_timeout_s=1.5).sticky_timeout_s == 1.5
            with pytest.raises(NotFound):
                client.update_pool("nowhere", strategy="least_loaded")
            tasks_before = len(client.list_tasks())
            # Finishing happens on the server's loop; the completion then reaches this one.
            loop.call_soon_threadsafe(functools.partial(tasks.finish, task_id, result=b"done"))
            result = client.result(task_id, timeout=10)
            with pytest.raises(NotFound):
                client.get("nope")
        with pytest.raises(RuntimeError, match="closed"):
            client.stats()
        client.close()
        return task_id, result, tasks_before

    loop = asyncio.get_running_loop()
    task_id, result, listed = await asyncio.to_thread(use_it)
    assert result == b"done"
    assert listed == 1
    assert tasks.tasks[task_id].spec.payload == b"[1]"
    assert tasks.tasks[task_id].spec.placement.preferred_labels[0].key == "zone"
    assert tasks.tasks[task_id].spec.placement.sticky_key == "k"


async def test_sync_client_unreachable() -> None:
    address = unused_address()

    def use_it() -> None:
        with SyncClient(address) as client, pytest.raises(Unavailable, match=address):
            client.stats()

    await asyncio.to_thread(use_it)
