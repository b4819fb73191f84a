"""Retention: finished tasks older than their pool's retention_s are deleted, newer ones and
unfinished ones stay; the stats count what is stored. An Engine on a real SQLite file,
driven through the service layer on a FakeClock."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.clock import FakeClock
from broker.core.states import BrokerState
from broker.domain import (
    PoolConfig,
    PoolStats,
    TaskError,
    TaskFilter,
    TaskResult,
    TaskSpec,
    TaskState,
)
from broker.errors import InvalidArgument, NotFound
from broker.observability.rollups import MetricsHistory
from broker.runtime.engine import Engine
from broker.service import BrokerService
from broker.storage.sqlite import SQLiteStore
from tests.support.config import make_config
from tests.support.engine import RecordingChannel, ok, worker

RETENTION_S = 100.0


@dataclass
class Setup:
    service: BrokerService
    engine: Engine
    clock: FakeClock
    store: SQLiteStore
    channel: RecordingChannel


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    config = make_config(tmp_path, task_purge_batch=2)
    config = dataclasses.replace(
        config,
        pools=(
            PoolConfig(name="default", retention_s=RETENTION_S),
            PoolConfig(name="other", retention_s=0.0),  # kept forever
        ),
    )
    clock = FakeClock()
    async with await SQLiteStore.open(config.db_path, clock=clock) as store:
        engine = Engine(config, store, clock)
        history = MetricsHistory.from_config(config, store, clock)
        await engine.recover()
        engine.start()
        service = BrokerService(engine, history, broker_state=lambda: BrokerState.RUNNING)
        channel = RecordingChannel()
        service.connect_worker(worker("w", capacity=100), channel)
        yield Setup(service, engine, clock, store, channel)


def failed(task_id: int, attempt: int) -> TaskResult:
    error = TaskError(type="ValueError", message="boom")
    return TaskResult(task_id=task_id, attempt=attempt, success=False, error=error)


async def run_to_the_end(setup: Setup, count: int, key: str = "") -> list[int]:
    """Submit `count` tasks to default and let the worker finish them, the first failing."""
    specs = [TaskSpec(task_type="t", idempotency_key=key if i == 0 else "") for i in range(count)]
    seen = len(setup.channel.assigned)
    tasks = await setup.service.submit(specs)
    held = (await setup.channel.until_assigned(seen + count))[seen:]
    results = [failed(held[0].id, held[0].attempts), *(ok(t) for t in held[1:])]
    setup.service.report("w", [t.id for t in held], results)
    done = await setup.service.wait([t.id for t in tasks], timeout_s=5)
    assert {t.state for t in done} == {TaskState.FAILED, TaskState.SUCCEEDED}
    return [t.id for t in tasks]


async def stats_of(setup: Setup, pool: str) -> PoolStats:
    (stats,) = [p.stats for p in (await setup.service.stats()).pools if p.stats.pool == pool]
    return stats


async def stored(setup: Setup) -> set[int]:
    return {t.id for t in await setup.store.list_tasks(TaskFilter(limit=1000))}


async def test_tasks_past_retention_go_newer_and_unfinished_ones_stay(setup: Setup) -> None:
    service, clock = setup.service, setup.clock
    old = await run_to_the_end(setup, 5, key="once")
    (cancelled,) = await service.submit([TaskSpec(task_type="nobody-runs-this")])
    await service.cancel(cancelled.id)
    kept_forever = await service.submit([TaskSpec(task_type="t", pool="other")])
    clock.advance(60)
    newer = await run_to_the_end(setup, 3)
    seen = len(setup.channel.assigned)
    (running,) = await service.submit([TaskSpec(task_type="t")])
    await setup.channel.until_assigned(seen + 1)
    unmatched = await service.submit([TaskSpec(task_type="nobody-runs-this")])
    before = await stats_of(setup, "default")
    assert (before.succeeded, before.failed, before.cancelled) == (6, 2, 1)

    clock.advance(RETENTION_S - 60 + 1)  # the first batch is past retention, the second not
    assert await setup.engine.purge_expired() == 6  # 5 run, 1 cancelled; in batches of 2

    assert await stored(setup) == {
        *newer,
        running.id,
        unmatched[0].id,
        kept_forever[0].id,
    }
    with pytest.raises(NotFound):
        await service.get(old[0])
    after = await stats_of(setup, "default")
    assert (after.succeeded, after.failed, after.cancelled) == (2, 1, 0)
    assert await setup.store.count_by_pool_state() == {
        ("default", TaskState.SUCCEEDED): 2,
        ("default", TaskState.FAILED): 1,
        ("default", TaskState.ASSIGNED): 1,
        ("default", TaskState.PENDING): 1,
        ("other", TaskState.PENDING): 1,
    }
    # The idempotency key went with its task: the same key makes a new one.
    ((again, existing),) = await service.submit_detailed(
        [TaskSpec(task_type="t", idempotency_key="once")]
    )
    assert not existing
    assert again.id not in old

    # Much later, the rest of default goes; unfinished tasks and pool other's never.
    clock.advance(10 * RETENTION_S)
    setup.service.report("w", [running.id], [ok(running)])
    await service.wait([running.id], timeout_s=5)
    assert await setup.engine.purge_expired() == 3
    assert {t.id for t in await setup.store.load_unfinished()} >= {unmatched[0].id}
    assert kept_forever[0].id in await stored(setup)
    assert running.id in await stored(setup)  # finished just now


async def test_an_operators_purge_takes_pool_age_and_states(setup: Setup) -> None:
    service, clock = setup.service, setup.clock
    ids = await run_to_the_end(setup, 4)  # 1 failed, 3 succeeded
    (pending,) = await service.submit([TaskSpec(task_type="nobody-runs-this")])
    clock.advance(30)
    assert await service.purge_tasks("default", 60.0) == 0  # not old enough
    assert await service.purge_tasks("other", 0.0) == 0
    assert await service.purge_tasks("default", 10.0, [TaskState.FAILED]) == 1
    assert (await stats_of(setup, "default")).failed == 0
    assert await service.purge_tasks("", 0.0) == 3  # every pool, every finished state
    assert await stored(setup) == {pending.id}
    assert ids[0] not in await stored(setup)
    assert (await stats_of(setup, "default")).succeeded == 0


@pytest.mark.parametrize(
    ("pool", "older_than_s", "states", "error"),
    [
        ("default", -1.0, [], InvalidArgument),
        ("default", 1e12, [], InvalidArgument),
        ("default", 0.0, [TaskState.PENDING], InvalidArgument),
        ("default", 0.0, [TaskState.SUCCEEDED, TaskState.RUNNING], InvalidArgument),
        ("nope", 0.0, [], NotFound),
    ],
)
async def test_a_purge_refuses_bad_arguments_and_deletes_nothing(
    setup: Setup,
    pool: str,
    older_than_s: float,
    states: list[TaskState],
    error: type[Exception],
) -> None:
    ids = await run_to_the_end(setup, 2)
    with pytest.raises(error):
        await setup.service.purge_tasks(pool, older_than_s, states)
    assert await stored(setup) == set(ids)


async def test_a_retry_and_a_purge_never_lose_the_retried_task(setup: Setup) -> None:
    """A retry holds the purge off from reading a failed task to storing it pending."""
    service = setup.service
    ids = await run_to_the_end(setup, 2)
    setup.clock.advance(RETENTION_S + 1)
    retry = service.retry([ids[0]])
    purge = setup.engine.purge_expired()
    (retried,), purged = await asyncio.gather(retry, purge)
    assert purged == 1  # the succeeded one
    assert not retried.state.terminal
    assert (await setup.store.get_task(ids[0])) is not None
