"""Placement that learns, end to end: real gRPC, real SDK workers of different speeds.

Two workers with the same (no) labels, one quick and one sluggish, get tasks two at a
time, each pair once the last is done. Round robin gives each worker one of every pair;
predictive learns the quick one apart from the other and holds the second task of a
pair for it, as it does in the simulator's same-labels scenario. Only counts of
placements are compared, never times.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import grpc
import pytest

from broker import Broker
from broker.domain import PoolConfig
from broker.runtime import dispatch
from broker.sim.run import compare
from broker.sim.scenarios import build_scenario
from tests.support.config import make_config
from worker_sdk import Client, PoolStats, TaskContext, Worker
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc

SLEEP_S = {"quick": 0.002, "sluggish": 0.15}
PAIRS = 30


async def placements(tmp_path: Path, strategy: str) -> Counter[str]:
    """How many tasks each worker ran, of PAIRS pairs, under the strategy."""
    (tmp_path / strategy).mkdir()
    config = make_config(tmp_path / strategy)
    config = dataclasses.replace(config, pools=(PoolConfig(name="default", strategy=strategy),))
    ran: Counter[str] = Counter()
    async with Broker(config) as broker, grpc.aio.insecure_channel(broker.address) as channel:
        workers = []
        for name, sleep_s in SLEEP_S.items():
            worker = Worker(capacity=1, worker_id=name)

            @worker.task("job")
            async def job(ctx: TaskContext, name: str = name, sleep_s: float = sleep_s) -> str:
                await asyncio.sleep(sleep_s)
                return name

            workers.append((worker, asyncio.create_task(worker.run(broker.address))))
        admin = _admin_grpc.AdminServiceStub(channel)
        async with asyncio.timeout(10):
            while len((await admin.ListWorkers(_admin.ListWorkersRequest())).workers) < 2:
                await asyncio.sleep(0.01)
        stub = _tasks_grpc.TaskServiceStub(channel)
        notes = []
        for _ in range(PAIRS):
            specs = [_tasks.TaskSpec(task_type="job")] * 2
            ids = (await stub.SubmitBatch(_tasks.SubmitBatchRequest(tasks=specs))).task_ids
            reply = await stub.Wait(_tasks.WaitRequest(task_ids=ids, timeout_s=30))
            assert {t.state for t in reply.tasks} == {_tasks.TASK_STATE_SUCCEEDED}
            ran.update(t.result.decode() for t in reply.tasks)
            notes += [t.placement_note for t in reply.tasks]
        for worker, run in workers:
            await worker.shutdown(grace=2)
            await run
    if strategy == "predictive":
        assert any("expected finish" in note and "vs" in note for note in notes)
    return ran


@pytest.mark.timeout(120)
async def test_predictive_sends_the_quick_worker_more_than_round_robin(tmp_path: Path) -> None:
    rr = await placements(tmp_path, "round_robin")
    predictive = await placements(tmp_path, "predictive")
    assert rr["quick"] + rr["sluggish"] == predictive["quick"] + predictive["sluggish"] == 60
    assert rr["quick"] == rr["sluggish"] == PAIRS  # one of every pair each
    assert predictive["quick"] >= 0.8 * 2 * PAIRS
    # The simulator's same-labels scenario orders them the same way.
    workload = build_scenario("same-labels", tasks=500, seed=0)
    sim_rr, sim_predictive = compare(workload, ["round_robin", "predictive"], seed=0)
    assert sim_predictive.placed_on["quick-1"] > sim_rr.placed_on["quick-1"]


async def default_stats(client: Client) -> PoolStats:
    (default,) = [p for p in (await client.stats()).pools if p.pool == "default"]
    return default


async def run_jobs(broker: Broker, client: Client, count: int) -> None:
    """Run `count` tasks of type "job" on a worker of two slots, then stop the worker."""
    worker = Worker(capacity=2, worker_id="w")

    @worker.task("job")
    async def job(ctx: TaskContext) -> str:
        return "done"

    running = asyncio.create_task(worker.run(broker.address))
    await client.wait_many([await client.submit("job", b"") for _ in range(count)], timeout=30)
    await worker.shutdown(grace=2)
    await running


async def test_arm_statistics_survive_a_restart_and_ab_percent_0_clears_the_arm(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    async with Broker(config) as broker, Client(broker.address) as client:
        await client.update_pool("default", ab_strategy="predictive", ab_percent=50)
        await run_jobs(broker, client, 20)
        before = await default_stats(client)
    assert [a.strategy for a in before.arms] == ["round_robin", "predictive"]
    assert sum(a.finished for a in before.arms) == 20
    assert all(a.finished for a in before.arms)
    async with Broker(config) as broker, Client(broker.address) as client:
        after = await default_stats(client)
        assert after.arms == before.arms
        pool = await client.update_pool("default", ab_percent=0)
        assert (pool.ab_strategy, pool.ab_percent) == ("", 0)
        cleared = await default_stats(client)
        assert cleared.arms == before.arms[:1]
    async with Broker(config) as broker, Client(broker.address) as client:
        restarted = await default_stats(client)
        assert restarted.arms == before.arms[:1]
        pool = await client.update_pool("default", ab_strategy="predictive", ab_percent=10)
        split = await default_stats(client)
        assert [a.placed for a in split.arms] == [before.arms[0].placed, 0]  # counts anew


async def test_what_a_pool_learned_is_saved_as_the_broker_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool's statistics go to the store at most every LEARNING_SAVE_S; whatever is not
    saved yet when the broker stops is saved then."""
    monkeypatch.setattr(dispatch, "LEARNING_SAVE_S", 3600.0)
    config = make_config(tmp_path)
    async with Broker(config) as broker, Client(broker.address) as client:
        await run_jobs(broker, client, 10)
        before = await default_stats(client)
    assert sum(a.finished for a in before.arms) == 10
    assert [r.samples for r in before.runtimes] == [10]
    async with Broker(config) as broker, Client(broker.address) as client:
        after = await default_stats(client)
    assert after.arms == before.arms
    assert after.runtimes == before.runtimes
