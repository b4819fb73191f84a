"""The service layer driven directly, without gRPC: an Engine on a MemoryStore, a metrics
history and a fake clock, called through BrokerService as every transport calls it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from broker.clock import FakeClock
from broker.core.states import BrokerState
from broker.domain import ConfigChange, PoolConfig, TaskFilter, TaskSpec, TaskState
from broker.errors import FailedPrecondition, InvalidArgument, NotFound
from broker.observability.rollups import MetricsHistory
from broker.observability.tracing import broker_tracer
from broker.runtime.engine import Engine
from broker.service import BrokerService, BrokerStats
from broker.storage.memory import MemoryStore
from tests.support.config import make_config
from tests.support.engine import RecordingChannel, ok, worker


@dataclass
class Setup:
    service: BrokerService
    engine: Engine
    clock: FakeClock
    store: MemoryStore
    history: MetricsHistory


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    config = make_config(tmp_path)
    clock = FakeClock()
    async with await MemoryStore.open() as store:
        engine = Engine(config, store, clock)
        history = MetricsHistory.from_config(config, store, clock)
        engine.observers.add(history)
        await engine.recover()
        engine.start()
        service = BrokerService(engine, history, broker_state=lambda: BrokerState.RUNNING)
        yield Setup(service, engine, clock, store, history)


async def test_tasks_go_through_the_service(setup: Setup) -> None:
    service = setup.service
    channel = RecordingChannel()
    spec = service.connect_worker(worker("w", capacity=1), channel)
    assert spec.worker_id == "w"
    first, second = await service.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    (held,) = await channel.until_assigned(1)
    assert held.id == first.id
    service.report("w", [held.id], [ok(held)])
    (done,) = await service.wait([first.id], timeout_s=5)
    assert done.state is TaskState.SUCCEEDED
    assert (await service.get(first.id)).result == b"done"
    assert (await service.cancel(second.id)).state is TaskState.CANCELLED
    listed = await service.list_tasks(TaskFilter(pool="default"))
    assert [t.id for t in listed] == [second.id, first.id]
    with pytest.raises(NotFound):
        await service.get(999)


async def test_submit_detailed_tells_an_existing_task(setup: Setup) -> None:
    spec = TaskSpec(task_type="t", idempotency_key="once")
    ((task, existing),) = await setup.service.submit_detailed([spec], "client-a")
    assert not existing
    ((again, existing),) = await setup.service.submit_detailed([spec], "client-a")
    assert existing
    assert again.id == task.id


async def test_watch_calls_back_once_a_task_is_done(setup: Setup) -> None:
    service = setup.service
    channel = RecordingChannel()
    service.connect_worker(worker("w"), channel)
    (task,) = await service.submit([TaskSpec(task_type="t")])
    seen: list[int] = []
    missing = await service.watch([task.id, 404], lambda t: seen.append(t.id))
    assert missing == [404]
    (held,) = await channel.until_assigned(1)
    service.report("w", [], [ok(held)])
    await service.wait([task.id], timeout_s=5)
    assert seen == [task.id]


async def test_stats_stitch_counts_live_figures_and_oldest_wait(setup: Setup) -> None:
    service, clock = setup.service, setup.clock
    channel = RecordingChannel()
    service.connect_worker(worker("w", capacity=1), channel)
    done, waiting = await service.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    (held,) = await channel.until_assigned(1)
    clock.advance(3.0)
    service.report("w", [], [ok(held)])
    await service.wait([done.id], timeout_s=5)
    (next_held,) = (await channel.until_assigned(2))[1:]
    assert next_held.id == waiting.id
    (late,) = await service.submit([TaskSpec(task_type="t")])
    clock.advance(2.0)

    stats = await service.stats()
    assert isinstance(stats, BrokerStats)
    assert stats.broker_state is BrokerState.RUNNING
    pools = {p.stats.pool: p for p in stats.pools}
    assert set(pools) == {"default", "other"}
    default = pools["default"]
    assert default.stats.succeeded == 1
    assert default.stats.active == 1
    assert default.stats.pending == 1
    assert default.stats.workers == 1
    assert default.live == setup.history.live("default")
    assert default.live.throughput_per_s > 0
    assert default.oldest_pending_age_s == pytest.approx(2.0)
    other = pools["other"]
    assert other.stats.succeeded == 0
    assert other.oldest_pending_age_s == 0.0
    assert late.id in {t.id for t in await service.list_tasks(TaskFilter(pool="default"))}


async def test_metrics_history_and_its_pool_check(setup: Setup) -> None:
    service = setup.service
    channel = RecordingChannel()
    service.connect_worker(worker("w"), channel)
    (task,) = await service.submit([TaskSpec(task_type="t")])
    (held,) = await channel.until_assigned(1)
    service.report("w", [], [ok(held)])
    await service.wait([task.id], timeout_s=5)
    (point,) = await service.metrics_history("default")
    assert (point.pool, point.submitted, point.completed) == ("default", 1, 1)
    assert await service.metrics_history("other") == []
    with pytest.raises(NotFound, match="nowhere"):
        await service.metrics_history("nowhere")
    with pytest.raises(InvalidArgument, match="bucket_s"):
        await service.metrics_history(bucket_s=61)


async def test_recommend_sizes_each_pool_from_its_history_and_workers(setup: Setup) -> None:
    service = setup.service
    service.connect_worker(worker("w1", capacity=4), RecordingChannel())
    service.connect_worker(worker("w2", capacity=2), RecordingChannel())
    recommendations = await service.recommend()
    assert [r.pool for r in recommendations] == ["default", "other"]
    default = recommendations[0]
    assert default.current_workers == 2
    assert default.slots_per_worker == 3.0
    assert recommendations[1].current_workers == 0
    assert recommendations[1].slots_per_worker == 1.0
    (only,) = await service.recommend("other", target_wait_s=0.5, horizon_s=60)
    assert only.pool == "other"


@pytest.mark.parametrize(
    ("pool", "target_wait_s", "horizon_s", "error", "message"),
    [
        ("nowhere", 1.0, 900.0, NotFound, "does not exist"),
        ("", 0.0, 900.0, InvalidArgument, "target_wait_s"),
        ("", 86_401.0, 900.0, InvalidArgument, "target_wait_s"),
        ("", 1.0, 59.0, InvalidArgument, "horizon_s"),
        ("", 1.0, 7 * 86_400.0 + 1, InvalidArgument, "horizon_s"),
    ],
)
async def test_recommend_refuses_nonsense(
    setup: Setup,
    pool: str,
    target_wait_s: float,
    horizon_s: float,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        await setup.service.recommend(pool, target_wait_s=target_wait_s, horizon_s=horizon_s)


async def test_pools_and_their_audit(setup: Setup) -> None:
    service = setup.service
    await service.create_pool(PoolConfig(name="gpu"), who="ops")
    assert "gpu" in {p.name for p in service.list_pools()}
    await service.update_pool(PoolConfig(name="gpu", max_queue=5), who="ops")
    newest, created = await service.config_history("gpu")
    assert (newest.who, newest.fields) == ("ops", ("max_queue",))
    assert created.before == ""
    with pytest.raises(NotFound):
        await service.update_pool(PoolConfig(name="nowhere"))


async def test_operating_workers(setup: Setup) -> None:
    service = setup.service
    channel = RecordingChannel()
    service.connect_worker(worker("w", capacity=2), channel)
    service.heartbeat("w", 0.5, [], 0)
    service.set_capacity("w", 3)
    (status,) = service.list_workers("default")
    assert (status.capacity, status.load) == (3, 0.5)
    assert service.cordon_worker("w").cordoned
    assert not service.cordon_worker("w", cordon=False).cordoned
    assert service.drain_worker("w").draining
    assert channel.drained == ["drained by an operator"]
    service.disconnect_worker("w", "test")
    assert service.list_workers() == []
    assert service.heartbeat_interval_s == setup.engine.config.heartbeat_interval_s
    with pytest.raises(NotFound):
        service.list_workers("nowhere")


async def test_reload_config_calls_the_reloader(setup: Setup) -> None:
    with pytest.raises(FailedPrecondition, match="config file"):
        await setup.service.reload_config("ops")
    asked: list[str] = []

    async def reload(who: str) -> list[ConfigChange]:
        asked.append(who)
        return []

    service = BrokerService(
        setup.engine, setup.history, broker_state=lambda: BrokerState.DRAINING, reload_config=reload
    )
    assert await service.reload_config("ops") == []
    assert asked == ["ops"]
    assert (await service.stats()).broker_state is BrokerState.DRAINING


async def test_a_tracing_service_stamps_submitted_tasks(setup: Setup) -> None:
    provider = TracerProvider()
    traced = BrokerService(
        setup.engine,
        setup.history,
        broker_state=lambda: BrokerState.RUNNING,
        tracer=broker_tracer(provider),
    )
    carried = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    fresh, given = await traced.submit(
        [TaskSpec(task_type="t"), TaskSpec(task_type="t", trace_context=carried)]
    )
    assert fresh.spec.trace_context["traceparent"].startswith("00-")
    assert given.spec.trace_context == carried
    (untraced,) = await setup.service.submit([TaskSpec(task_type="t")])
    assert untraced.spec.trace_context == {}
    provider.shutdown()
