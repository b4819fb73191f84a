"""The engine with a real SQLite store and an injected clock: leases, requeues, results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

import pytest

from broker.clock import FakeClock
from broker.core.arms import ArmStats
from broker.core.runtimes import RunStats, RuntimeKey
from broker.domain import (
    Task,
    TaskError,
    TaskFilter,
    TaskResult,
    TaskSpec,
    TaskState,
)
from broker.errors import FailedPrecondition, NotFound, Unavailable
from broker.runtime import dispatch
from broker.runtime.engine import Engine
from broker.storage.sqlite import SQLiteStore
from tests.support.config import make_config
from tests.support.engine import RecordingChannel, ok, worker
from tests.support.store import BACKENDS, Backend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Engine]:
    """An engine on each kind of store: they must behave the same under it."""
    config = make_config(tmp_path, heartbeat_interval_s=1.0, heartbeat_timeout_s=3.0)
    backend: Backend = request.param
    async with await backend.open(Path(config.db_path)) as store:
        engine = Engine(config, store, clock)
        await engine.recover()
        engine.start()
        yield engine


async def test_results_complete_tasks_and_free_credit(engine: Engine) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w1", capacity=1), channel)
    a, b = await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    (first,) = await channel.until_assigned(1)
    assert first.id == a.id
    assert first.attempts == 1
    engine.report("w1", [first.id], [ok(first)])
    done = await engine.wait([a.id], max_wait=5)
    assert done[0].state is TaskState.SUCCEEDED
    assert done[0].result == b"done"
    second = (await channel.until_assigned(2))[1]
    assert second.id == b.id


async def test_a_worker_holding_nothing_may_stay_silent_for_the_idle_timeout(
    engine: Engine, clock: FakeClock
) -> None:
    # Heartbeat 1 s, timeout 3 s; idle heartbeat 30 s, so an idle timeout of 90 s.
    assert engine.config.idle_heartbeat_timeout_s == 90.0
    idle = RecordingChannel()
    engine.connect_worker(worker("idle"), idle)
    clock.advance(89.0)
    assert engine.reap() == []
    clock.advance(2.0)
    assert engine.reap() == ["idle"]
    assert isinstance(idle.closed, Unavailable)
    assert "no heartbeat for 90 s" in str(idle.closed)


async def test_work_sent_to_a_silent_idle_worker_gives_it_the_heartbeat_timeout_from_then(
    engine: Engine, clock: FakeClock
) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w", capacity=2), channel)
    clock.advance(60.0)  # idle and silent: within its idle timeout
    (task,) = await engine.submit([TaskSpec(task_type="t")])
    await channel.until_assigned(1)
    clock.advance(2.0)
    assert engine.reap() == []  # 62 s silent, 2 s of them holding the task
    clock.advance(2.0)
    assert engine.reap() == ["w"]  # 4 s holding it without a word: over the 3 s timeout
    assert "no heartbeat for 3 s" in str(channel.closed)
    assert (await engine.get(task.id)).state is TaskState.PENDING


async def test_a_worker_that_spoke_after_its_work_is_idle_again(
    engine: Engine, clock: FakeClock
) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w"), channel)
    await engine.submit([TaskSpec(task_type="t")])
    (task,) = await channel.until_assigned(1)
    clock.advance(1.0)
    engine.report("w", [], [ok(task)])  # its result: it spoke, and holds nothing now
    clock.advance(60.0)
    assert engine.reap() == []


async def test_a_dead_worker_s_tasks_are_requeued_within_the_timeout(
    engine: Engine, clock: FakeClock
) -> None:
    doomed, healthy = RecordingChannel(), RecordingChannel()
    engine.connect_worker(worker("doomed", capacity=5), doomed)
    (task,) = await engine.submit([TaskSpec(task_type="t")])
    await doomed.until_assigned(1)
    engine.connect_worker(worker("healthy", capacity=5), healthy)
    clock.advance(2.0)
    engine.heartbeat("healthy", 0.0)
    assert engine.reap() == []
    clock.advance(2.0)  # doomed: 4 s without a heartbeat, over the 3 s timeout
    assert engine.reap() == ["doomed"]
    assert isinstance(doomed.closed, Unavailable)
    (again,) = await healthy.until_assigned(1)
    assert again.id == task.id
    assert again.attempts == 2
    engine.report("healthy", [], [ok(again)])
    (finished,) = await engine.wait([task.id], max_wait=5)
    assert finished.state is TaskState.SUCCEEDED
    assert finished.worker_id == "healthy"


async def test_results_from_a_worker_that_lost_the_task_are_dropped(engine: Engine) -> None:
    first, second = RecordingChannel(), RecordingChannel()
    engine.connect_worker(worker("first"), first)
    (task,) = await engine.submit([TaskSpec(task_type="t")])
    (held,) = await first.until_assigned(1)
    engine.disconnect_worker("first", "test")
    engine.connect_worker(worker("second"), second)
    (again,) = await second.until_assigned(1)
    engine.connect_worker(worker("first"), first)
    stale = TaskResult(task_id=held.id, attempt=1, success=True, result=b"stale")
    engine.report("first", [], [stale])
    assert engine.stale_results == 1
    engine.report("second", [], [ok(again, b"fresh")])
    (finished,) = await engine.wait([task.id], max_wait=5)
    assert finished.result == b"fresh"


async def test_failures_keep_type_message_and_bounded_traceback(engine: Engine) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w"), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t")])
    (held,) = await channel.until_assigned(1)

    error = TaskError(type="ValueError", message="bad", traceback="x" * 100_000)
    engine.report("w", [], [TaskResult(task_id=held.id, attempt=1, success=False, error=error)])
    (failed,) = await engine.wait([task.id], max_wait=5)
    assert failed.state is TaskState.FAILED
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert len(failed.error.traceback) <= 16_000
    assert "characters cut" in failed.error.traceback


async def test_oversized_result_fails_the_task(engine: Engine) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w"), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t")])
    (held,) = await channel.until_assigned(1)
    engine.report("w", [], [ok(held, b"x" * (1024 * 1024 + 1))])
    (failed,) = await engine.wait([task.id], max_wait=5)
    assert failed.state is TaskState.FAILED
    assert failed.error is not None
    assert failed.error.type == "ResultTooLarge"


async def test_cancel_pending_and_running(engine: Engine) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w", capacity=1), channel)
    running, pending = await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    await channel.until_assigned(1)
    cancelled = await engine.cancel(pending.id)
    assert cancelled.state is TaskState.CANCELLED
    cancelled = await engine.cancel(running.id)
    assert cancelled.state is TaskState.CANCELLED
    assert channel.cancelled == [running.id]
    assert (await engine.cancel(running.id)).state is TaskState.CANCELLED  # idempotent
    # The slot came back and nothing else was assigned: the pending task is gone.
    (third,) = await engine.submit([TaskSpec(task_type="t")])
    assigned = await channel.until_assigned(2)
    assert assigned[1].id == third.id
    engine.report("w", [], [ok(assigned[1])])
    await engine.wait([third.id], max_wait=5)
    with pytest.raises(FailedPrecondition, match="succeeded already"):
        await engine.cancel(third.id)
    with pytest.raises(NotFound):
        await engine.cancel(987654)


async def test_drain_sends_no_more_work(engine: Engine) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w", capacity=5), channel)
    status = engine.drain_worker("w")
    assert status.draining
    assert channel.drained
    await engine.submit([TaskSpec(task_type="t")])
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert channel.assigned == []


async def test_capacity_changes_apply_at_once(engine: Engine) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w", capacity=1), channel)
    engine.set_capacity("w", 0)
    await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    await asyncio.sleep(0)
    assert channel.assigned == []
    engine.set_capacity("w", 2)
    assert len(await channel.until_assigned(2)) == 2


async def test_list_and_stats_reflect_the_store(engine: Engine) -> None:
    await engine.submit([TaskSpec(task_type="t", priority=p) for p in range(3)])
    listed = await engine.list_tasks(TaskFilter(states=frozenset({TaskState.PENDING})))
    assert [t.spec.priority for t in listed] == [2, 1, 0]
    (stats,) = [s for s in await engine.stats() if s.pool == "default"]
    assert stats.pending == 3
    assert stats.workers == 0


async def test_restart_requeues_unfinished_tasks(tmp_path: Path, clock: FakeClock) -> None:
    config = make_config(tmp_path)
    async with await SQLiteStore.open(config.db_path) as store:
        engine = Engine(config, store, clock)
        await engine.recover()
        engine.start()
        channel = RecordingChannel()
        engine.connect_worker(worker("w", capacity=1), channel)
        first, second = await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
        await channel.until_assigned(1)
        await store.flush()
    async with await SQLiteStore.open(config.db_path) as store:
        engine = Engine(config, store, clock)
        assert await engine.recover() == 2
        engine.start()
        channel = RecordingChannel()
        engine.connect_worker(worker("w2", capacity=5), channel)
        assigned = await channel.until_assigned(2)
        assert sorted(t.id for t in assigned) == [first.id, second.id]
        (third,) = await engine.submit([TaskSpec(task_type="t")])
        assert third.id > second.id


def counted_reads(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, how many ids each `get_tasks` of the engine's store reads."""
    store = engine._store
    reads: list[int] = []
    get_tasks = store.get_tasks

    async def counted(task_ids: Collection[int]) -> list[Task]:
        reads.append(len(task_ids))
        return await get_tasks(task_ids)

    monkeypatch.setattr(store, "get_tasks", counted)
    return reads


async def test_watching_finished_tasks_reads_the_store_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks that ended before their watch came are read in one go: a read waits for
    the commit under way, so a read each would wait for one commit after another."""
    channel = RecordingChannel()
    engine.connect_worker(worker("w1", capacity=50), channel)
    tasks = await engine.submit([TaskSpec(task_type="t") for _ in range(50)])
    assigned = await channel.until_assigned(50)
    engine.report("w1", [], [ok(task) for task in assigned])
    await engine.wait([task.id for task in tasks], max_wait=5)
    reads = counted_reads(engine, monkeypatch)
    seen: list[Task] = []
    missing = await engine.watch([*(task.id for task in tasks), 404], seen.append)
    assert missing == [404]
    assert reads == [51]
    assert sorted(task.id for task in seen) == sorted(task.id for task in tasks)
    assert {task.state for task in seen} == {TaskState.SUCCEEDED}


async def test_retrying_failed_tasks_reads_the_store_once(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = RecordingChannel()
    engine.connect_worker(worker("w1", capacity=30), channel)
    tasks = await engine.submit([TaskSpec(task_type="t") for _ in range(30)])
    assigned = await channel.until_assigned(30)
    error = TaskError(type="ValueError", message="no")
    engine.report(
        "w1",
        [],
        [
            TaskResult(task_id=t.id, attempt=t.attempts, success=False, error=error)
            for t in assigned
        ],
    )
    await engine.wait([task.id for task in tasks], max_wait=5)
    reads = counted_reads(engine, monkeypatch)
    with pytest.raises(NotFound, match="task 404 does not exist"):
        await engine.retry([tasks[0].id, 404])
    retried = await engine.retry([task.id for task in tasks])
    assert reads == [2, 30]
    assert sorted(task.id for task in retried) == sorted(task.id for task in tasks)
    assert {task.state for task in retried} == {TaskState.PENDING}


def counted_learning_saves(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, each statistic the engine queues for its store: "runtime" or "arms"."""
    store = engine._store
    saves: list[str] = []
    save_runtime, save_arm_stats = store.save_runtime, store.save_arm_stats

    def runtime(key: RuntimeKey, stats: RunStats) -> None:
        saves.append("runtime")
        save_runtime(key, stats)

    def arms(pool: str, arms: Sequence[ArmStats]) -> None:
        saves.append("arms")
        save_arm_stats(pool, arms)

    monkeypatch.setattr(store, "save_runtime", runtime)
    monkeypatch.setattr(store, "save_arm_stats", arms)
    return saves


async def test_what_pools_learn_is_saved_once_an_interval_not_once_a_round(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each result changes a pool's statistics and brings a dispatch round; saving them
    after every round put four more statements in nearly every commit."""
    monkeypatch.setattr(dispatch, "LEARNING_SAVE_S", 3600.0)
    saves = counted_learning_saves(engine, monkeypatch)
    channel = RecordingChannel()
    engine.connect_worker(worker("w1", capacity=1), channel)
    tasks = await engine.submit([TaskSpec(task_type="t") for _ in range(5)])
    for count in range(1, 6):  # one at a time: a result and a round each
        task = (await channel.until_assigned(count))[-1]
        engine.report("w1", [], [ok(task)])
    await engine.wait([task.id for task in tasks], max_wait=5)
    assert saves == []
    engine.save_learning()
    # The run time of the type on the worker's class and on every worker; the arms.
    assert sorted(saves) == ["arms", "runtime", "runtime"]
    await engine._store.flush()
    learned = await engine._store.load_runtimes()
    assert sorted(stats.count for _, stats in learned) == [5, 5]


async def test_what_pools_learn_is_saved_when_the_interval_is_up(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "LEARNING_SAVE_S", 0.0)  # due at the next loop turn
    saves = counted_learning_saves(engine, monkeypatch)
    channel = RecordingChannel()
    engine.connect_worker(worker("w1", capacity=1), channel)
    (task,) = await engine.submit([TaskSpec(task_type="t")])
    (assigned,) = await channel.until_assigned(1)
    engine.report("w1", [], [ok(assigned)])
    await engine.wait([task.id], max_wait=5)
    for _ in range(3):
        await asyncio.sleep(0)
    # Nobody called save_learning: the timer saved the run time of the type (on the
    # worker's class and on every worker), and the arms.
    assert saves.count("runtime") == 2
    assert "arms" in saves


async def test_a_pause_saves_what_pools_learned_and_the_timer_then_saves_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that lost its pools (broker.cluster) saves what it learned as it pauses;
    its timer writes nothing after, for another broker may hold the pools by then."""
    monkeypatch.setattr(dispatch, "LEARNING_SAVE_S", 0.0)  # due at the next loop turn
    saves = counted_learning_saves(engine, monkeypatch)
    channel = RecordingChannel()
    engine.connect_worker(worker("w1", capacity=2), channel)
    await engine.submit([TaskSpec(task_type="t"), TaskSpec(task_type="t")])
    first, second = await channel.until_assigned(2)
    engine.report("w1", [], [ok(first)])
    await asyncio.sleep(0)  # the dispatch round: it sets the timer for the next turn
    assert saves == []
    engine.pause()  # before the timer's turn
    assert sorted(saves) == ["arms", "runtime", "runtime"]
    engine.report("w1", [], [ok(second)])  # a held task ends after the pause: learned
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(saves) == 3
