"""Resilience in the engine, on a real SQLite file with a fake clock: bulkheads,
back-pressure, rate limits, delays, retries and dead letters, deadlines, timeouts,
idempotency keys, circuit breakers, cordons, leases and slot reconciliation."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.clock import FakeClock
from broker.domain import (
    BulkheadConfig,
    PoolConfig,
    RetryPolicy,
    Task,
    TaskError,
    TaskId,
    TaskResult,
    TaskSpec,
    TaskState,
    WorkerSpec,
)
from broker.errors import (
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OverLimit,
    ResourceExhausted,
)
from broker.runtime.engine import Engine
from broker.storage.sqlite import SQLiteStore
from tests.support.config import make_config

START = 1_700_000_000.0


class Channel:
    """What the engine sends one worker; `transit` plays assignments not yet seen."""

    def __init__(self) -> None:
        self.assigned: list[Task] = []
        self.cancelled: list[TaskId] = []
        self.drained: list[str] = []
        self.closed: BrokerError | None = None
        self.transit: set[TaskId] = set()

    def send_assignments(self, tasks: Sequence[Task]) -> None:
        self.assigned.extend(tasks)

    def send_cancel(self, task_ids: Sequence[TaskId]) -> None:
        self.cancelled.extend(task_ids)

    def send_drain(self, reason: str, deadline: float = 0.0, stopping: bool = False) -> None:
        self.drained.append(reason)

    def send_dropped(self, dropped: Sequence[tuple[TaskResult, str]]) -> None:
        pass

    def close(self, error: BrokerError | None) -> None:
        self.closed = error

    def in_transit(self, seen: int) -> set[TaskId]:
        return set(self.transit)

    @property
    def ids(self) -> list[TaskId]:
        return [task.id for task in self.assigned]


MakeEngine = Callable[..., Awaitable[Engine]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def make_engine(tmp_path: Path, clock: FakeClock) -> AsyncIterator[MakeEngine]:
    """Engines on one SQLite file; a second one is the broker after a restart."""
    stores: list[SQLiteStore] = []

    async def make(*pools: PoolConfig, **settings: Any) -> Engine:
        for store in stores:
            await store.close()
        config = make_config(tmp_path, heartbeat_interval_s=1.0, heartbeat_timeout_s=3.0)
        config = dataclasses.replace(
            config, pools=pools or (PoolConfig(name="default"),), **settings
        )
        store = await SQLiteStore.open(config.db_path, clock=clock)
        stores.append(store)
        engine = Engine(config, store, clock, rng=random.Random(7))
        await engine.recover()
        engine.start()
        return engine

    yield make
    for store in stores:
        await store.close()


async def settle() -> None:
    """Let the engine's call_soon dispatches run."""
    for _ in range(5):
        await asyncio.sleep(0)


def worker(worker_id: str, capacity: int = 4, types: tuple[str, ...] = ("t",)) -> WorkerSpec:
    return WorkerSpec(
        worker_id=worker_id, pool="default", capacity=capacity, task_types=frozenset(types)
    )


def ok(task: Task) -> TaskResult:
    return TaskResult(task_id=task.id, attempt=task.attempts, success=True, result=b"ok")


def failed(task: Task, error_type: str = "IOError") -> TaskResult:
    return TaskResult(
        task_id=task.id,
        attempt=task.attempts,
        success=False,
        error=TaskError(type=error_type, message="it broke"),
    )


async def pool_stats(engine: Engine, pool: str = "default") -> object:
    return next(s for s in await engine.stats() if s.pool == pool)


# Bulkheads and fairness ------------------------------------------------------------------


async def test_a_full_type_bulkhead_holds_its_tasks_and_lets_others_pass(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(
        PoolConfig(name="default", bulkheads=(BulkheadConfig(task_type="slow", max_inflight=1),))
    )
    channel = Channel()
    engine.connect_worker(worker("w", capacity=10, types=("slow", "fast")), channel)
    slow = await engine.submit([TaskSpec(task_type="slow") for _ in range(3)])
    fast = await engine.submit([TaskSpec(task_type="fast") for _ in range(2)])
    await settle()
    assert sorted(channel.ids) == sorted([slow[0].id, fast[0].id, fast[1].id])
    stats = await engine.stats()
    (bulkhead,) = [b for b in stats[0].bulkheads if b.task_type == "slow"]
    assert (bulkhead.pending, bulkhead.in_flight, bulkhead.max_inflight) == (2, 1, 1)
    engine.report("w", [], [ok(channel.assigned[0])])
    await settle()
    assert channel.ids[-1] == slow[1].id  # the next slow task, once the first is back


async def test_a_pool_bulkhead_caps_what_all_its_workers_hold(make_engine: MakeEngine) -> None:
    engine = await make_engine(PoolConfig(name="default", max_inflight=3))
    a, b = Channel(), Channel()
    engine.connect_worker(worker("a", capacity=10), a)
    engine.connect_worker(worker("b", capacity=10), b)
    await engine.submit([TaskSpec(task_type="t") for _ in range(10)])
    await settle()
    assert len(a.assigned) + len(b.assigned) == 3
    engine.report("a", [], [ok(a.assigned[0])] if a.assigned else [])
    engine.report("b", [], [ok(b.assigned[0])] if not a.assigned else [])
    await settle()
    assert len(a.assigned) + len(b.assigned) == 4


async def test_one_tenant_s_backlog_does_not_delay_another_s_task(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    flood = await engine.submit([TaskSpec(task_type="t", fairness_key="big") for _ in range(500)])
    (single,) = await engine.submit([TaskSpec(task_type="t", fairness_key="small")])
    channel = Channel()
    engine.connect_worker(worker("w", capacity=2), channel)
    await settle()
    assert single.id in channel.ids  # among the first two placed, not behind 500
    assert flood[0].id in channel.ids


# Back-pressure ----------------------------------------------------------------------------


async def test_a_full_pool_queue_refuses_submits_with_a_retry_hint(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(PoolConfig(name="default", max_queue=3))
    await engine.submit([TaskSpec(task_type="t") for _ in range(3)])
    with pytest.raises(ResourceExhausted, match=r"max_queue") as refused:
        await engine.submit([TaskSpec(task_type="t")])
    assert refused.value.retry_after_s is not None
    assert refused.value.retry_after_s > 0
    with pytest.raises(ResourceExhausted):  # all or nothing: a batch that does not fit
        await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    # A batch bigger than the queue can never fit: not overload, so no retry hint and an
    # error that is not RESOURCE_EXHAUSTED (which retry policies would retry).
    with pytest.raises(OverLimit, match="can never fit"):
        await engine.submit([TaskSpec(task_type="t") for _ in range(4)])
    channel = Channel()
    engine.connect_worker(worker("w", capacity=1), channel)
    await settle()
    (task,) = await engine.submit([TaskSpec(task_type="t")])  # one left the queue
    stats = await engine.stats()
    assert (stats[0].pending, stats[0].rejected, stats[0].max_queue) == (3, 3, 3)  # tasks
    assert task.state is TaskState.PENDING


async def test_a_type_bulkhead_has_its_own_queue_bound(make_engine: MakeEngine) -> None:
    engine = await make_engine(
        PoolConfig(name="default", bulkheads=(BulkheadConfig(task_type="big", max_queue=2),))
    )
    await engine.submit([TaskSpec(task_type="big"), TaskSpec(task_type="big")])
    with pytest.raises(ResourceExhausted, match="bulkhead max_queue"):
        await engine.submit([TaskSpec(task_type="big")])
    await engine.submit([TaskSpec(task_type="small") for _ in range(5)])  # others go on


async def test_payload_bytes_of_waiting_tasks_are_bounded(make_engine: MakeEngine) -> None:
    engine = await make_engine(max_pending_bytes=1000)
    await engine.submit([TaskSpec(task_type="t", payload=b"x" * 600)])
    with pytest.raises(ResourceExhausted, match="max_pending_bytes"):
        await engine.submit([TaskSpec(task_type="t", payload=b"x" * 600)])


async def test_requeued_tasks_may_exceed_the_bound_but_are_never_dropped(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(PoolConfig(name="default", max_queue=2))
    channel = Channel()
    engine.connect_worker(worker("w", capacity=2), channel)
    held = await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    await settle()
    await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    engine.disconnect_worker("w", "test")  # its two come back: four wait now
    stats = await engine.stats()
    assert stats[0].pending == 4
    for task in held:
        assert (await engine.get(task.id)).state is TaskState.PENDING


# Rate limits ------------------------------------------------------------------------------


async def test_a_type_over_its_rate_is_refused_until_tokens_return(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    bulkhead = BulkheadConfig(task_type="t", rate_per_s=2.0, rate_burst=2)
    engine = await make_engine(PoolConfig(name="default", bulkheads=(bulkhead,)))
    await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    with pytest.raises(ResourceExhausted, match="rate limit") as refused:
        await engine.submit([TaskSpec(task_type="t")])
    assert refused.value.retry_after_s == pytest.approx(0.5)
    await engine.submit([TaskSpec(task_type="other")])  # other types are not limited
    clock.advance(0.5)
    await engine.submit([TaskSpec(task_type="t")])
    assert (await engine.stats())[0].rate_limited == 1
    with pytest.raises(OverLimit, match="smaller batches"):
        await engine.submit([TaskSpec(task_type="t") for _ in range(3)])  # over the burst


async def test_a_pool_rate_limits_all_clients_together(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine(PoolConfig(name="default", rate_per_s=2.0, rate_burst=2))
    await engine.submit([TaskSpec(task_type="a")], client="alice")
    await engine.submit([TaskSpec(task_type="b")], client="bob")
    with pytest.raises(ResourceExhausted, match="pool 'default' is over its rate") as refused:
        await engine.submit([TaskSpec(task_type="c")], client="carol")
    assert refused.value.retry_after_s == pytest.approx(0.5)
    await engine.update_pool(PoolConfig(name="default", rate_per_s=100.0, rate_burst=100))
    clock.advance(0.01)  # the bucket keeps its (empty) tokens and refills at the new rate
    await engine.submit([TaskSpec(task_type="c")], client="carol")


async def test_clients_have_a_bucket_each(make_engine: MakeEngine) -> None:
    engine = await make_engine(
        PoolConfig(name="default", client_rate_per_s=1.0, client_rate_burst=1)
    )
    await engine.submit([TaskSpec(task_type="t")], client="alice")
    with pytest.raises(ResourceExhausted, match="client 'alice'"):
        await engine.submit([TaskSpec(task_type="t")], client="alice")
    await engine.submit([TaskSpec(task_type="t")], client="bob")


async def test_queue_mode_delays_tasks_over_the_rate_instead(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    bulkhead = BulkheadConfig(task_type="t", rate_per_s=1.0, rate_burst=1)
    engine = await make_engine(PoolConfig(name="default", rate_mode="queue", bulkheads=(bulkhead,)))
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    first, second = await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    await settle()
    assert channel.ids == [first.id]
    assert second.not_before == pytest.approx(START + 1.0)
    assert (await engine.stats())[0].delayed == 1
    clock.advance(1.0)
    engine.tick()
    await settle()
    assert channel.ids == [first.id, second.id]


# Delayed tasks ----------------------------------------------------------------------------


async def test_a_delayed_task_waits_durably_and_runs_at_its_time(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine()
    (task,) = await engine.submit([TaskSpec(task_type="t", not_before=START + 60)])
    assert task.not_before == START + 60
    engine = await make_engine()  # a restart: the wait survives it
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    await settle()
    assert channel.assigned == []
    assert (await engine.stats())[0].delayed == 1
    clock.advance(59)
    engine.tick()
    await settle()
    assert channel.assigned == []
    clock.advance(1)
    engine.tick()
    await settle()
    assert channel.ids == [task.id]


async def test_cancelling_a_delayed_task_removes_it(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine()
    (task,) = await engine.submit([TaskSpec(task_type="t", not_before=START + 5)])
    cancelled = await engine.cancel(task.id)
    assert cancelled.state is TaskState.CANCELLED
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    clock.advance(10)
    engine.tick()
    await settle()
    assert channel.assigned == []
    assert (await engine.stats())[0].pending == 0


# Retries and dead letters -----------------------------------------------------------------

RETRY = RetryPolicy(
    max_attempts=3,
    initial_backoff_s=1.0,
    max_backoff_s=10.0,
    backoff_multiplier=2.0,
    non_retryable_errors=frozenset({"ValueError"}),
)


async def test_a_failing_task_is_retried_with_backoff_then_dead_lettered(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t", retry=RETRY)])
    for attempt in (1, 2):
        await settle()
        held = channel.assigned[-1]
        assert (held.id, held.attempts) == (task.id, attempt)
        engine.report("w", [], [failed(held)])
        waiting = await engine.get(task.id)
        assert waiting.state is TaskState.PENDING
        cap = RETRY.backoff_cap(attempt)
        assert 0 <= waiting.not_before - clock.now() <= cap + 1e-9
        assert waiting.error is not None
        assert waiting.error.type == "IOError"
        clock.advance(cap)
        engine.tick()
    await settle()
    last = channel.assigned[-1]
    assert last.attempts == 3
    engine.report("w", [], [failed(last)])
    (dead,) = await engine.wait([task.id], max_wait=5)
    assert dead.state is TaskState.DEAD_LETTER
    stats = await engine.stats()
    assert (stats[0].retried, stats[0].dead_letter) == (2, 1)


async def test_a_non_retryable_error_fails_at_once(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t", retry=RETRY)])
    await settle()
    engine.report("w", [], [failed(channel.assigned[0], "ValueError")])
    (done,) = await engine.wait([task.id], max_wait=5)
    assert done.state is TaskState.FAILED


async def test_dead_letters_are_retried_by_an_operator(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    once = RetryPolicy(max_attempts=2, initial_backoff_s=0.1, max_backoff_s=0.1)
    (task,) = await engine.submit([TaskSpec(task_type="t", retry=once)])
    await settle()
    engine.report("w", [], [failed(channel.assigned[-1])])
    clock.advance(0.1)
    engine.tick()
    await settle()
    engine.report("w", [], [failed(channel.assigned[-1])])
    assert (await engine.wait([task.id], max_wait=5))[0].state is TaskState.DEAD_LETTER
    with pytest.raises(FailedPrecondition, match="only failed or dead-lettered"):
        (other,) = await engine.submit([TaskSpec(task_type="t")])
        await engine.retry([other.id])
    (again,) = await engine.retry([], dead_letter_pool="default")
    assert (again.id, again.state, again.attempts) == (task.id, TaskState.PENDING, 0)
    await settle()
    fresh = next(t for t in channel.assigned[::-1] if t.id == task.id)
    assert fresh.attempts == 1
    engine.report("w", [], [ok(fresh)])
    assert (await engine.wait([task.id], max_wait=5))[0].state is TaskState.SUCCEEDED
    with pytest.raises(NotFound):
        await engine.retry([], dead_letter_pool="nope")


# Deadlines and timeouts -------------------------------------------------------------------


async def test_a_task_not_started_by_its_deadline_fails(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine()
    (task,) = await engine.submit([TaskSpec(task_type="t", start_timeout_s=5.0)])
    clock.advance(4.9)
    engine.tick()
    assert (await engine.get(task.id)).state is TaskState.PENDING
    clock.advance(0.1)
    engine.tick()
    (expired,) = await engine.wait([task.id], max_wait=5)
    assert expired.state is TaskState.FAILED
    assert expired.error is not None
    assert expired.error.type == "DeadlineExceeded"
    assert "start_timeout_s" in expired.error.message
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    await settle()
    assert channel.assigned == []
    assert (await engine.stats())[0].expired == 1


async def test_a_started_task_is_not_failed_by_its_start_deadline(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t", start_timeout_s=5.0)])
    await settle()
    clock.advance(10)
    engine.tick()
    assert (await engine.get(task.id)).state is TaskState.ASSIGNED


async def test_an_attempt_past_its_timeout_is_cancelled_and_retried(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w", capacity=1), channel)
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.5, max_backoff_s=0.5)
    (task,) = await engine.submit([TaskSpec(task_type="t", execution_timeout_s=2.0, retry=policy)])
    await settle()
    clock.advance(2.0)
    engine.tick()
    assert channel.cancelled == [task.id]
    waiting = await engine.get(task.id)
    assert waiting.state is TaskState.PENDING
    assert waiting.error is not None
    assert waiting.error.type == "Timeout"
    clock.advance(0.5)
    engine.tick()
    await settle()
    assert channel.assigned[-1].attempts == 2  # the slot came back with the timeout
    clock.advance(2.0)
    engine.tick()
    (done,) = await engine.wait([task.id], max_wait=5)
    assert done.state is TaskState.DEAD_LETTER
    assert (await engine.stats())[0].timed_out == 2


async def test_a_result_in_time_clears_the_timeout(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t", execution_timeout_s=2.0)])
    await settle()
    engine.report("w", [], [ok(channel.assigned[0])])
    clock.advance(5)
    engine.tick()
    assert (await engine.wait([task.id], max_wait=5))[0].state is TaskState.SUCCEEDED
    assert channel.cancelled == []


# Cancellation -----------------------------------------------------------------------------


async def test_cancelling_a_running_task_tells_its_worker_and_frees_the_slot(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w", capacity=1), channel)
    first, second = await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    await settle()
    engine.report("w", [first.id], [])
    cancelled = await engine.cancel(first.id)
    assert cancelled.state is TaskState.CANCELLED
    assert channel.cancelled == [first.id]
    await settle()
    assert channel.ids == [first.id, second.id]


# Idempotency keys -------------------------------------------------------------------------


async def test_a_repeated_idempotency_key_returns_the_first_task(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine(
        PoolConfig(name="default"), PoolConfig(name="other"), idempotency_retention_s=60.0
    )
    spec = TaskSpec(task_type="t", idempotency_key="order-1")
    ((first, existed),) = await engine.submit_detailed([spec])
    assert not existed
    ((again, existed),) = await engine.submit_detailed([spec])
    assert (again.id, existed) == (first.id, True)
    in_batch = await engine.submit_detailed([spec, TaskSpec(task_type="t", idempotency_key="b")])
    assert (in_batch[0][0].id, in_batch[0][1]) == (first.id, True)
    assert not in_batch[1][1]
    other_pool = await engine.submit([dataclasses.replace(spec, pool="other")])
    assert other_pool[0].id != first.id
    assert (await engine.stats())[0].deduplicated == 2
    engine = await make_engine(
        PoolConfig(name="default"), PoolConfig(name="other"), idempotency_retention_s=60.0
    )
    (after_restart,) = await engine.submit([spec])
    assert after_restart.id == first.id
    clock.advance(61)
    (expired,) = await engine.submit([spec])
    assert expired.id != first.id


async def test_concurrent_submits_with_one_key_make_one_task(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    spec = TaskSpec(task_type="t", idempotency_key="same")
    results = await asyncio.gather(*(engine.submit([spec]) for _ in range(20)))
    assert len({tasks[0].id for tasks in results}) == 1
    twice = await engine.submit([spec, spec])
    assert twice[0].id == twice[1].id == results[0][0].id


# Circuit breakers, cordons ----------------------------------------------------------------


async def test_a_failing_worker_s_breaker_opens_then_lets_a_trial_through(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine(
        PoolConfig(name="default", breaker_failures=2, breaker_cooldown_s=10.0)
    )
    channel = Channel()
    engine.connect_worker(worker("w", capacity=1), channel)
    await engine.submit([TaskSpec(task_type="t") for _ in range(5)])
    for _ in range(2):
        await settle()
        engine.report("w", [], [failed(channel.assigned[-1])])
    await settle()
    assert len(channel.assigned) == 2  # open: no work
    (status,) = engine.workers()
    assert (status.breaker, status.consecutive_failures) == ("open", 2)
    clock.advance(10)
    engine.tick()
    await settle()
    assert len(channel.assigned) == 3  # half-open: one trial
    assert engine.workers()[0].breaker == "half_open"
    engine.report("w", [], [ok(channel.assigned[-1])])
    await settle()
    assert engine.workers()[0].breaker == "closed"
    assert len(channel.assigned) == 4


async def test_a_failed_trial_opens_the_breaker_again(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine(
        PoolConfig(name="default", breaker_failures=1, breaker_cooldown_s=5.0)
    )
    channel = Channel()
    engine.connect_worker(worker("w", capacity=1), channel)
    await engine.submit([TaskSpec(task_type="t") for _ in range(3)])
    await settle()
    engine.report("w", [], [failed(channel.assigned[-1])])
    clock.advance(5)
    engine.tick()
    await settle()
    engine.report("w", [], [failed(channel.assigned[-1])])
    await settle()
    assert engine.workers()[0].breaker == "open"
    assert len(channel.assigned) == 2


async def test_a_cordoned_worker_keeps_its_tasks_and_gets_no_new_ones(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w", capacity=2), channel)
    _first, _second = await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    await settle()
    status = engine.cordon_worker("w")
    assert status.cordoned
    assert status.in_flight == 2
    engine.report("w", [], [ok(channel.assigned[0])])
    (third,) = await engine.submit([TaskSpec(task_type="t")])
    await settle()
    assert third.id not in channel.ids
    assert not engine.cordon_worker("w", cordon=False).cordoned
    await settle()
    assert channel.ids[-1] == third.id
    with pytest.raises(NotFound, match="ghost"):
        engine.cordon_worker("ghost")


# Leases and slot reconciliation -----------------------------------------------------------


async def test_a_task_the_worker_no_longer_holds_is_requeued(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w", capacity=3), channel)
    tasks = await engine.submit([TaskSpec(task_type="t") for _ in range(3)])
    await settle()
    channel.transit = {tasks[2].id}  # sent, not yet seen by the worker
    engine.heartbeat("w", 0.0, [tasks[0].id], assignments_seen=1)
    await settle()
    assert (await engine.get(tasks[2].id)).state is TaskState.ASSIGNED
    # tasks[1] was lost: requeued, and reassigned to the worker's freed slot.
    assert channel.ids[-1] == tasks[1].id
    assert channel.assigned[-1].attempts == 2
    assert (await engine.stats())[0].reconciled == 1
    assert engine.workers()[0].in_flight == 3


async def test_a_task_the_worker_should_not_hold_is_cancelled_on_it(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    engine.heartbeat("w", 0.0, [999], assignments_seen=0)
    assert channel.cancelled == [999]


async def test_an_unconfirmed_task_is_requeued_when_its_lease_runs_out(
    make_engine: MakeEngine, clock: FakeClock
) -> None:
    engine = await make_engine(PoolConfig(name="default", lease_s=10.0))
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t")])
    await settle()
    channel.transit = {task.id}  # the worker never sees it, so it never confirms it
    for _ in range(5):  # heartbeats keep the worker alive, not the task
        clock.advance(2.5)
        engine.heartbeat("w", 0.0, [], assignments_seen=0)
        engine.reap()
    await settle()
    assert channel.cancelled == [task.id]
    assert channel.assigned[-1].id == task.id
    assert channel.assigned[-1].attempts == 2
    assert (await engine.stats())[0].lease_expired == 1


async def test_confirmed_tasks_keep_their_lease(make_engine: MakeEngine, clock: FakeClock) -> None:
    engine = await make_engine(PoolConfig(name="default", lease_s=10.0))
    channel = Channel()
    engine.connect_worker(worker("w"), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t")])
    await settle()
    for _ in range(10):
        clock.advance(2.5)
        engine.heartbeat("w", 0.0, [task.id], assignments_seen=1)
        engine.reap()
    assert channel.cancelled == []
    assert (await engine.get(task.id)).attempts == 1


# Bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_inflight": -1}, "max_inflight"),
        ({"max_queue": -5}, "max_queue"),
        ({"client_rate_per_s": -1.0}, "client_rate_per_s"),
        ({"rate_per_s": -1.0}, "rate_per_s"),
        ({"rate_mode": "drop"}, "rate_mode"),
        ({"breaker_failures": -1}, "breaker_failures"),
        ({"breaker_cooldown_s": 0.0}, "breaker_cooldown_s"),
        ({"lease_s": -1.0}, "lease_s"),
        ({"bulkheads": (BulkheadConfig(task_type="t", max_inflight=-2),)}, "max_inflight"),
        ({"bulkheads": (BulkheadConfig(task_type="t", rate_per_s=-1),)}, "rate_per_s"),
        ({"fairness_weights": {"a": 0}}, "fairness_weights"),
    ],
)
async def test_bad_pool_limits_are_refused_and_the_old_ones_stay(
    make_engine: MakeEngine, changes: dict[str, object], message: str
) -> None:
    engine = await make_engine(PoolConfig(name="default", max_queue=7))
    bad = dataclasses.replace(PoolConfig(name="default"), **changes)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=message):
        await engine.update_pool(bad)
    assert engine.pools()[0].max_queue == 7


async def test_limits_change_at_run_time_and_persist(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await engine.create_pool(PoolConfig(name="jobs", max_queue=1))
    await engine.submit([TaskSpec(task_type="t", pool="jobs")])
    with pytest.raises(ResourceExhausted):
        await engine.submit([TaskSpec(task_type="t", pool="jobs")])
    await engine.update_pool(PoolConfig(name="jobs", max_queue=5))
    await engine.submit([TaskSpec(task_type="t", pool="jobs")])
    engine = await make_engine()  # a pool made at run time keeps its limits on a restart
    assert {p.name: p.max_queue for p in engine.pools()} == {"default": 0, "jobs": 5}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (TaskSpec(task_type="t", retry=RetryPolicy(max_attempts=0)), "max_attempts"),
        (TaskSpec(task_type="t", retry=RetryPolicy(max_attempts=101)), "max_attempts"),
        (
            TaskSpec(task_type="t", retry=RetryPolicy(max_attempts=2, initial_backoff_s=-1)),
            "backoff",
        ),
        (
            TaskSpec(task_type="t", retry=RetryPolicy(max_attempts=2, backoff_multiplier=0.5)),
            "backoff_multiplier",
        ),
        (TaskSpec(task_type="t", start_timeout_s=-1), "start_timeout_s"),
        (TaskSpec(task_type="t", execution_timeout_s=-1), "execution_timeout_s"),
        (TaskSpec(task_type="t", not_before=START + 400 * 86_400), "not_before"),
        (TaskSpec(task_type="t", idempotency_key="k" * 201), "idempotency_key"),
        (TaskSpec(task_type="t", fairness_key="k" * 201), "fairness_key"),
        (TaskSpec(task_type="t", trace_context={"traceparent": "x" * 2000}), "trace_context"),
        (TaskSpec(task_type="t", trace_context={f"k{i}": "v" for i in range(9)}), "trace_context"),
    ],
)
async def test_bad_task_options_are_refused(
    make_engine: MakeEngine, spec: TaskSpec, message: str
) -> None:
    engine = await make_engine()
    with pytest.raises(InvalidArgument, match=message):
        await engine.submit([spec])


async def test_too_much_capacity_and_unknown_names_are_clear_errors(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    with pytest.raises(InvalidArgument, match="capacity"):
        engine.connect_worker(worker("w", capacity=10_001), Channel())
    with pytest.raises(NotFound, match="ghost"):
        engine.drain_worker("ghost")
    with pytest.raises(NotFound, match="nope"):
        await engine.update_pool(PoolConfig(name="nope"))
    with pytest.raises(NotFound, match="nope"):
        await engine.submit([TaskSpec(task_type="t", pool="nope")])
