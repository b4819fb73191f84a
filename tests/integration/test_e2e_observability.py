"""Operations end to end over gRPC: the metrics history (and its survival of a restart),
live stats, and worker-count recommendations checked against the queueing formula."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiosqlite
import grpc
import pytest

from broker import Broker
from broker.clock import FakeClock
from broker.observability.recommend import erlang_c, mean_wait
from tests.support.config import make_config
from worker_sdk import Client, TaskContext, Worker
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc

TASKS = 30


async def run_workload(broker: Broker) -> None:
    worker = Worker(capacity=4, worker_id="w1")

    @worker.task("work")
    async def work(ctx: TaskContext) -> None:
        await asyncio.sleep(0.005)

    @worker.task("fail")
    async def fail(ctx: TaskContext) -> None:
        raise ValueError("no")

    run = asyncio.create_task(worker.run(broker.address))
    try:
        async with Client(broker.address) as client:
            ids = [await client.submit("work") for _ in range(TASKS)]
            ids += [await client.submit("fail") for _ in range(3)]
            await client.wait_many(ids, timeout=20)
    finally:
        await worker.shutdown(grace=2)
        await run


async def admin_call(broker: Broker, method: str, request: object) -> object:
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _admin_grpc.AdminServiceStub(channel)
        return await getattr(stub, method)(request)


async def test_the_metrics_history_counts_the_workload_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with Broker(config) as broker:
        await run_workload(broker)
        live = await admin_call(broker, "MetricsHistory", _admin.MetricsHistoryRequest())
        stats = await admin_call(broker, "Stats", _admin.StatsRequest())
    assert isinstance(live, _admin.MetricsHistoryResponse)
    assert sum(p.submitted for p in live.points) == TASKS + 3
    assert sum(p.completed for p in live.points) == TASKS + 3
    assert sum(p.failed for p in live.points) == 3
    assert isinstance(stats, _admin.StatsResponse)
    (default,) = [p for p in stats.pools if p.pool == "default"]
    assert default.throughput_per_s > 0
    assert default.run_p99_s >= default.run_p50_s > 0

    async with Broker(config) as broker:  # the same file, after a restart
        by_type = await admin_call(
            broker, "MetricsHistory", _admin.MetricsHistoryRequest(pool="default", task_type="work")
        )
        per_worker = await admin_call(
            broker, "MetricsHistory", _admin.MetricsHistoryRequest(worker_id="w1")
        )
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await admin_call(broker, "MetricsHistory", _admin.MetricsHistoryRequest(pool="nope"))
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    assert isinstance(by_type, _admin.MetricsHistoryResponse)
    assert sum(p.completed for p in by_type.points) == TASKS
    assert all(p.task_type == "work" for p in by_type.points)
    assert 0.004 < max(p.run_p50_s for p in by_type.points) < 1.0
    assert isinstance(per_worker, _admin.MetricsHistoryResponse)
    assert sum(p.completed for p in per_worker.points) == TASKS + 3


async def test_recommendations_follow_the_erlang_c_formula(tmp_path: Path) -> None:
    async with Broker(make_config(tmp_path)) as broker:
        await run_workload(broker)
        answer = await admin_call(
            broker, "Recommend", _admin.RecommendRequest(pool="default", target_wait_s=0.01)
        )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin_call(broker, "Recommend", _admin.RecommendRequest(target_wait_s=-1))
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(answer, _admin.RecommendResponse)
    (rec,) = answer.pools
    assert rec.pool == "default"
    assert rec.arrival_rate_per_s > 0
    assert rec.mean_run_s > 0
    mu = 1 / rec.mean_run_s
    assert rec.probability_of_wait == pytest.approx(
        erlang_c(rec.servers, rec.arrival_rate_per_s, mu)
    )
    assert rec.expected_wait_s == pytest.approx(mean_wait(rec.servers, rec.arrival_rate_per_s, mu))
    assert rec.expected_wait_s <= 0.01
    if rec.servers > 1:  # one server fewer would miss the target
        assert mean_wait(rec.servers - 1, rec.arrival_rate_per_s, mu) > 0.01
    assert rec.recommended_workers >= 1
    assert rec.reasoning  # the steps are shown


async def test_live_stats_show_the_age_of_the_oldest_waiting_task(tmp_path: Path) -> None:
    clock = FakeClock(start=time.time())
    async with Broker(make_config(tmp_path), clock=clock) as broker:
        async with Client(broker.address) as client:
            await client.submit("nobody-runs-this", pool="other")
        clock.advance(5.0)
        stats = await admin_call(broker, "Stats", _admin.StatsRequest())
    assert isinstance(stats, _admin.StatsResponse)
    (other,) = [p for p in stats.pools if p.pool == "other"]
    assert other.pending == 1
    assert other.oldest_pending_age_s >= 5.0


async def test_the_predictive_strategy_starts_from_the_metrics_history(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with Broker(config) as broker:
        await run_workload(broker)
    async with aiosqlite.connect(config.db_path) as db:  # only the history is left
        await db.execute("DELETE FROM runtimes")
        await db.commit()
    async with Broker(config) as broker:
        (pool,) = [p for p in (await broker.engine.stats()) if p.pool == "default"]
    learned = {r.task_type: r for r in pool.runtimes}
    assert learned["work"].samples == TASKS
    assert 0.004 < learned["work"].mean_run_s < 1.0
