"""The SDK's observability calls: metrics history, recommendations, config reload and
history, and the live figures in stats; their conversions both ways, then Client and
SyncClient against a fake AdminService on a real in-process server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import grpc
import grpc.aio
import pytest

from tests.support.fake_broker import serve_services
from worker_sdk import (
    Client,
    ConfigChange,
    FailedPrecondition,
    MetricPoint,
    NotFound,
    PoolRecommendation,
    SyncClient,
    TaskbrokerError,
    _convert,
)
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc

_Context = grpc.aio.ServicerContext[object, object]

T0_MS = 1_700_000_000_000
T0 = datetime.fromtimestamp(T0_MS / 1000, UTC)
GPU_BEFORE = {"strategy": "round_robin", "max_queue": 0}
GPU_AFTER = {"strategy": "least_loaded", "max_queue": 500}


def wire_point(minute: int = 0, **overrides: object) -> _admin.MetricPoint:
    values: dict[str, object] = {
        "start_ms": T0_MS + minute * 60_000,
        "bucket_s": 60,
        "pool": "default",
        "task_type": "echo",
        "worker_id": "",
        "submitted": 12,
        "completed": 10,
        "failed": 1,
        "wait_mean_s": 0.05,
        "wait_p50_s": 0.04,
        "wait_p99_s": 0.2,
        "run_mean_s": 1.5,
        "run_p50_s": 1.25,
        "run_p99_s": 4.0,
    }
    values.update(overrides)
    return _admin.MetricPoint(**values)  # type: ignore[arg-type]


WIRE_RECOMMENDATION = _admin.PoolRecommendation(
    pool="default",
    current_workers=2,
    recommended_workers=3,
    arrival_rate_per_s=4.5,
    mean_run_s=1.2,
    slots_per_worker=2.0,
    servers=6,
    utilisation=0.9,
    expected_wait_s=0.8,
    probability_of_wait=0.45,
    method="holt",
    reasoning=["forecast 4.5/s", "6 slots wait 0.8 s"],
)

WIRE_CHANGE = _admin.ConfigChange(
    at_ms=T0_MS,
    who="alice:42",
    source="update_pool",
    pool="gpu",
    before=json.dumps(GPU_BEFORE),
    after=json.dumps(GPU_AFTER),
    fields=["strategy", "max_queue"],
)

EXPECTED_POINT = MetricPoint(
    start=T0,
    bucket_s=60,
    pool="default",
    task_type="echo",
    worker_id="",
    submitted=12,
    completed=10,
    failed=1,
    wait_mean_s=0.05,
    wait_p50_s=0.04,
    wait_p99_s=0.2,
    run_mean_s=1.5,
    run_p50_s=1.25,
    run_p99_s=4.0,
)
EXPECTED_RECOMMENDATION = PoolRecommendation(
    pool="default",
    current_workers=2,
    recommended_workers=3,
    arrival_rate_per_s=4.5,
    mean_run_s=1.2,
    slots_per_worker=2.0,
    servers=6,
    utilisation=0.9,
    expected_wait_s=0.8,
    probability_of_wait=0.45,
    method="holt",
    reasoning=("forecast 4.5/s", "6 slots wait 0.8 s"),
)
EXPECTED_CHANGE = ConfigChange(
    at=T0,
    who="alice:42",
    source="update_pool",
    pool="gpu",
    before=GPU_BEFORE,
    after=GPU_AFTER,
    fields=("strategy", "max_queue"),
)


# -- from the wire -------------------------------------------------------------------------


def test_pool_stats_carry_the_live_figures() -> None:
    wire = _admin.PoolStats(
        pool="default",
        throughput_per_s=3.5,
        wait_p50_s=0.01,
        wait_p99_s=0.5,
        run_p50_s=1.0,
        run_p99_s=9.0,
        oldest_pending_age_s=42.0,
    )
    stats = _convert.pool_stats(wire)
    assert (stats.throughput_per_s, stats.oldest_pending_age_s) == (3.5, 42.0)
    assert (stats.wait_p50_s, stats.wait_p99_s) == (0.01, 0.5)
    assert (stats.run_p50_s, stats.run_p99_s) == (1.0, 9.0)
    # A broker without them sends zeros: nothing measured.
    old = _convert.pool_stats(_admin.PoolStats(pool="default"))
    assert (old.throughput_per_s, old.wait_p99_s, old.oldest_pending_age_s) == (0.0, 0.0, 0.0)


def test_metric_point_from_the_wire() -> None:
    point = _convert.metric_point(wire_point())
    assert point == EXPECTED_POINT
    assert point.start.tzinfo is UTC
    assert point.end == T0 + timedelta(minutes=1)
    response = _admin.MetricsHistoryResponse(points=[wire_point(0), wire_point(1, pool="gpu")])
    assert [(p.pool, p.start) for p in _convert.metric_points(response)] == [
        ("default", T0),
        ("gpu", T0 + timedelta(minutes=1)),
    ]


def test_recommendation_from_the_wire() -> None:
    assert _convert.pool_recommendation(WIRE_RECOMMENDATION) == EXPECTED_RECOMMENDATION
    response = _admin.RecommendResponse(pools=[WIRE_RECOMMENDATION])
    assert _convert.recommendations(response) == [EXPECTED_RECOMMENDATION]


def test_config_change_from_the_wire() -> None:
    change = _convert.config_change(WIRE_CHANGE)
    assert change == EXPECTED_CHANGE
    assert change.before == GPU_BEFORE
    assert change.at.tzinfo is UTC
    created = _admin.ConfigChange(
        at_ms=T0_MS, who="config file", source="create_pool", pool="gpu", after="{}"
    )
    assert _convert.config_change(created).before is None
    assert _convert.config_change(created).after == {}
    for response in (
        _admin.ReloadConfigResponse(changes=[WIRE_CHANGE]),
        _admin.ConfigHistoryResponse(changes=[WIRE_CHANGE]),
    ):
        assert _convert.config_changes(response) == [EXPECTED_CHANGE]


@pytest.mark.parametrize("settings", ["{not json", "[1, 2]", '"strategy"'])
def test_config_change_with_settings_that_are_no_object(settings: str) -> None:
    wire = _admin.ConfigChange(at_ms=T0_MS, pool="gpu", before=settings, after="{}")
    with pytest.raises(TaskbrokerError, match="pool 'gpu' whose before settings"):
        _convert.config_change(wire)


# -- to the wire ---------------------------------------------------------------------------


def test_metrics_history_request_defaults_are_the_brokers() -> None:
    request = _convert.metrics_history_request(
        pool=None, task_type=None, worker_id=None, since=None, until=None, bucket_s=0
    )
    assert request == _admin.MetricsHistoryRequest()


def test_metrics_history_request_with_everything() -> None:
    request = _convert.metrics_history_request(
        pool="gpu",
        task_type="render",
        worker_id="w-1",
        since=T0,
        until=T0 + timedelta(hours=2),
        bucket_s=300,
    )
    assert request == _admin.MetricsHistoryRequest(
        pool="gpu",
        task_type="render",
        worker_id="w-1",
        since_ms=T0_MS,
        until_ms=T0_MS + 7_200_000,
        bucket_s=300,
    )
    # Any UTC offset names the same instant.
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    shifted = _convert.metrics_history_request(
        pool=None, task_type=None, worker_id=None, since=plus_two, until=None, bucket_s=0
    )
    assert shifted.since_ms == T0_MS


def test_metrics_history_request_since_a_timedelta_counts_back_from_now() -> None:
    request = _convert.metrics_history_request(
        pool=None,
        task_type=None,
        worker_id=None,
        since=timedelta(minutes=30),
        until=None,
        bucket_s=0,
        now=T0,
    )
    assert (request.since_ms, request.until_ms) == (T0_MS - 1_800_000, 0)
    unpinned = _convert.metrics_history_request(
        pool=None, task_type=None, worker_id=None, since=timedelta(hours=1), until=None, bucket_s=0
    )
    expected_ms = (datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000
    assert abs(unpinned.since_ms - expected_ms) < 5_000


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"since": datetime(2030, 1, 1)}, ValueError, "since must be a timezone-aware"),
        ({"until": datetime(2030, 1, 1)}, ValueError, "until must be a timezone-aware"),
        ({"since": T0, "until": T0}, ValueError, "since must be before until"),
        ({"since": timedelta(0)}, ValueError, "must be positive"),
        ({"since": timedelta(minutes=-5)}, ValueError, "must be positive"),
        ({"since": 3600}, TypeError, "since is a datetime or a timedelta, not int"),
        ({"until": "now"}, TypeError, "until is a datetime, not str"),
        ({"bucket_s": -1}, ValueError, "bucket_s must be 0..4294967295"),
        ({"bucket_s": 2**32}, ValueError, "bucket_s must be 0..4294967295"),
        ({"bucket_s": 1.5}, TypeError, "bucket_s is a whole number"),
        ({"bucket_s": True}, TypeError, "bucket_s is a whole number"),
        ({"pool": 7}, TypeError, "pool is a str"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_metrics_history_request_refuses_what_the_wire_cannot_say(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    values: dict[str, object] = {
        "pool": None,
        "task_type": None,
        "worker_id": None,
        "since": None,
        "until": None,
        "bucket_s": 0,
        **arguments,
    }
    with pytest.raises(error, match=message):
        _convert.metrics_history_request(**values)  # type: ignore[arg-type]


def test_recommend_request() -> None:
    assert _convert.recommend_request(None, 1.0, 900.0) == _admin.RecommendRequest(
        target_wait_s=1.0, horizon_s=900.0
    )
    assert _convert.recommend_request("gpu", 0.25, 60) == _admin.RecommendRequest(
        pool="gpu", target_wait_s=0.25, horizon_s=60.0
    )
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="target_wait_s must be a positive number"):
            _convert.recommend_request(None, bad, 900.0)
        with pytest.raises(ValueError, match="horizon_s must be a positive number"):
            _convert.recommend_request(None, 1.0, bad)


def test_config_requests() -> None:
    assert _convert.reload_config_request() == _admin.ReloadConfigRequest()
    assert _convert.config_history_request(None, 100) == _admin.ConfigHistoryRequest(limit=100)
    assert _convert.config_history_request("gpu", 5) == _admin.ConfigHistoryRequest(
        pool="gpu", limit=5
    )
    with pytest.raises(ValueError, match=re.escape("limit must be 1..4294967295, got 0")):
        _convert.config_history_request(None, 0)


# -- Client and SyncClient -----------------------------------------------------------------


class FakeObservabilityAdmin(_admin_grpc.AdminServiceServicer):
    """Records each request of the observability calls and answers with fixed data; pool
    "missing" is NOT_FOUND, and a reload with `no_config_file` FAILED_PRECONDITION."""

    def __init__(self) -> None:
        self.requests: list[object] = []
        self.no_config_file = False

    async def _missing(self, pool: str, context: _Context) -> None:
        if pool == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "pool 'missing' does not exist")

    async def MetricsHistory(
        self, request: _admin.MetricsHistoryRequest, context: _Context
    ) -> _admin.MetricsHistoryResponse:
        self.requests.append(request)
        await self._missing(request.pool, context)
        return _admin.MetricsHistoryResponse(points=[wire_point(0), wire_point(1)])

    async def Recommend(
        self, request: _admin.RecommendRequest, context: _Context
    ) -> _admin.RecommendResponse:
        self.requests.append(request)
        await self._missing(request.pool, context)
        return _admin.RecommendResponse(pools=[WIRE_RECOMMENDATION])

    async def ReloadConfig(
        self, request: _admin.ReloadConfigRequest, context: _Context
    ) -> _admin.ReloadConfigResponse:
        self.requests.append(request)
        if self.no_config_file:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the broker was started without a config file to reload",
            )
        return _admin.ReloadConfigResponse(changes=[WIRE_CHANGE])

    async def ConfigHistory(
        self, request: _admin.ConfigHistoryRequest, context: _Context
    ) -> _admin.ConfigHistoryResponse:
        self.requests.append(request)
        return _admin.ConfigHistoryResponse(changes=[WIRE_CHANGE] * min(request.limit, 3))

    # The older calls are not what these tests are about.
    async def ListPools(
        self, request: _admin.ListPoolsRequest, context: _Context
    ) -> _admin.ListPoolsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def CreatePool(self, request: _admin.CreatePoolRequest, context: _Context) -> _admin.Pool:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def UpdatePool(self, request: _admin.UpdatePoolRequest, context: _Context) -> _admin.Pool:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def ListWorkers(
        self, request: _admin.ListWorkersRequest, context: _Context
    ) -> _admin.ListWorkersResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def DrainWorker(
        self, request: _admin.DrainWorkerRequest, context: _Context
    ) -> _admin.DrainWorkerResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def CordonWorker(
        self, request: _admin.CordonWorkerRequest, context: _Context
    ) -> _admin.WorkerStatus:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def PurgeTasks(
        self, request: _admin.PurgeTasksRequest, context: _Context
    ) -> _admin.PurgeTasksResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")

    async def Stats(self, request: _admin.StatsRequest, context: _Context) -> _admin.StatsResponse:
        return _admin.StatsResponse(
            broker_state="running",
            pools=[_admin.PoolStats(pool="default", throughput_per_s=2.5, run_p99_s=3.0)],
        )


@pytest.fixture
def admin() -> FakeObservabilityAdmin:
    return FakeObservabilityAdmin()


@pytest.fixture
async def address(admin: FakeObservabilityAdmin) -> AsyncIterator[str]:
    async with serve_services(admin) as address:
        yield address


@pytest.fixture
async def client(address: str) -> AsyncIterator[Client]:
    async with Client(address) as running:
        yield running


async def test_metrics_history(client: Client, admin: FakeObservabilityAdmin) -> None:
    points = await client.metrics_history()
    assert points == [EXPECTED_POINT, _convert.metric_point(wire_point(1))]
    until = T0 + timedelta(hours=1)
    await client.metrics_history(
        pool="gpu", task_type="render", worker_id="w-1", since=T0, until=until, bucket_s=300
    )
    await client.metrics_history(since=timedelta(hours=2))
    plain, full, relative = admin.requests
    assert plain == _admin.MetricsHistoryRequest()
    assert full == _admin.MetricsHistoryRequest(
        pool="gpu",
        task_type="render",
        worker_id="w-1",
        since_ms=T0_MS,
        until_ms=T0_MS + 3_600_000,
        bucket_s=300,
    )
    assert isinstance(relative, _admin.MetricsHistoryRequest)
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).timestamp() * 1000
    assert abs(relative.since_ms - two_hours_ago) < 5_000
    with pytest.raises(NotFound, match="pool 'missing' does not exist"):
        await client.metrics_history(pool="missing")
    with pytest.raises(ValueError, match="timezone-aware"):
        await client.metrics_history(since=datetime(2030, 1, 1))
    assert len(admin.requests) == 4  # the bad argument never reached the broker


async def test_recommend(client: Client, admin: FakeObservabilityAdmin) -> None:
    assert await client.recommend() == [EXPECTED_RECOMMENDATION]
    await client.recommend(pool="gpu", target_wait_s=0.5, horizon_s=300)
    assert admin.requests == [
        _admin.RecommendRequest(target_wait_s=1.0, horizon_s=900.0),
        _admin.RecommendRequest(pool="gpu", target_wait_s=0.5, horizon_s=300.0),
    ]
    with pytest.raises(NotFound):
        await client.recommend(pool="missing")
    with pytest.raises(ValueError, match="target_wait_s"):
        await client.recommend(target_wait_s=0)


async def test_reload_config_and_history(client: Client, admin: FakeObservabilityAdmin) -> None:
    assert await client.reload_config() == [EXPECTED_CHANGE]
    assert await client.config_history() == [EXPECTED_CHANGE] * 3
    assert await client.config_history(pool="gpu", limit=1) == [EXPECTED_CHANGE]
    assert admin.requests == [
        _admin.ReloadConfigRequest(),
        _admin.ConfigHistoryRequest(limit=100),
        _admin.ConfigHistoryRequest(pool="gpu", limit=1),
    ]
    admin.no_config_file = True
    with pytest.raises(FailedPrecondition, match="without a config file"):
        await client.reload_config()


async def test_stats_carry_the_live_figures(client: Client) -> None:
    (pool,) = (await client.stats()).pools
    assert (pool.throughput_per_s, pool.run_p99_s, pool.wait_p50_s) == (2.5, 3.0, 0.0)


async def test_an_older_broker_says_it_does_not_implement_them() -> None:
    # A broker built before these calls: its AdminService has none of them.
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("taskbroker.v1.AdminService", {})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with Client(f"127.0.0.1:{port}") as client:
            for call in (
                client.metrics_history(),
                client.recommend(),
                client.reload_config(),
                client.config_history(),
            ):
                with pytest.raises(TaskbrokerError, match="does not implement this call"):
                    await call
    finally:
        await server.stop(None)


async def test_sync_client(address: str, admin: FakeObservabilityAdmin) -> None:
    def use_it() -> None:
        with SyncClient(address) as client:
            assert client.metrics_history(pool="gpu", since=T0, bucket_s=120)[0] == EXPECTED_POINT
            assert client.recommend(target_wait_s=2.0) == [EXPECTED_RECOMMENDATION]
            assert client.reload_config() == [EXPECTED_CHANGE]
            assert client.config_history(limit=2) == [EXPECTED_CHANGE] * 2

    await asyncio.to_thread(use_it)
    assert admin.requests == [
        _admin.MetricsHistoryRequest(pool="gpu", since_ms=T0_MS, bucket_s=120),
        _admin.RecommendRequest(target_wait_s=2.0, horizon_s=900.0),
        _admin.ReloadConfigRequest(),
        _admin.ConfigHistoryRequest(limit=2),
    ]
