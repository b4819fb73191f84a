"""The metrics history: gathered from the engine's events, written in batches to a real
SQLite file, read back merged, kept across restarts, compacted and expired."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from broker.clock import FakeClock
from broker.domain import Task, TaskSpec
from broker.errors import InvalidArgument, StorageError
from broker.observability.observe import Observer
from broker.observability.rollups import (
    HIST_BUCKETS,
    HIST_EDGES,
    HIST_RESOLUTION,
    HOUR,
    MINUTE,
    MetricPoint,
    MetricsHistory,
    RollupRow,
    hist_bucket,
    hist_quantile,
)
from broker.runtime.engine import Engine
from broker.storage.sqlite import SQLiteStore
from tests.support.config import make_config
from tests.support.engine import RecordingChannel, ok, worker

START = 1_700_002_800.0  # a whole hour
assert START % HOUR == 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with await SQLiteStore.open(tmp_path / "broker.db") as opened:
        yield opened


@pytest.fixture
def history(store: SQLiteStore, clock: FakeClock) -> MetricsHistory:
    return MetricsHistory(store, clock, retention_s=2 * 86_400, compact_after_s=86_400)


def task(task_id: int, worker_id: str = "", task_type: str = "resize", pool: str = "p") -> Task:
    return Task(id=task_id, spec=TaskSpec(task_type=task_type, pool=pool), worker_id=worker_id)


def close_to(estimate: float, truth: float) -> bool:
    """Within one histogram bucket's error."""
    return truth / HIST_RESOLUTION <= estimate <= truth * HIST_RESOLUTION


def true_quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def test_it_is_an_observer(history: MetricsHistory) -> None:
    observer: Observer = history  # checked by mypy
    assert observer is history


# -- histograms ----------------------------------------------------------------------------


def test_histogram_buckets_span_a_millisecond_to_over_an_hour() -> None:
    assert HIST_BUCKETS == 42
    assert HIST_EDGES[0] == pytest.approx(0.001)
    assert HIST_EDGES[-1] > HOUR
    assert hist_bucket(-1.0) == hist_bucket(0.0) == hist_bucket(0.0009) == 0
    assert hist_bucket(0.001) == 1
    assert hist_bucket(0.0015) == 2  # [1.468 ms, 2.154 ms)
    assert hist_bucket(10 * HOUR) == HIST_BUCKETS - 1
    assert all(hist_bucket(edge * 1.0001) == i + 1 for i, edge in enumerate(HIST_EDGES))


@pytest.mark.parametrize("values", [[0.0123] * 9, [0.002 * 1.07**i for i in range(200)]])
@pytest.mark.parametrize("q", [0.01, 0.5, 0.9, 0.99, 1.0])
def test_quantiles_are_within_a_bucket(values: list[float], q: float) -> None:
    hist = [0] * HIST_BUCKETS
    for value in values:
        hist[hist_bucket(value)] += 1
    assert close_to(hist_quantile(hist, q), true_quantile(values, q))


def test_quantiles_of_nothing_and_of_the_open_bucket() -> None:
    assert hist_quantile([0] * HIST_BUCKETS, 0.5) == 0.0
    assert hist_quantile((), 0.5) == 0.0
    overflow = [0] * HIST_BUCKETS
    overflow[-1] = 3
    assert hist_quantile(overflow, 0.99) == HIST_EDGES[-1]


# -- gathering and reading back ------------------------------------------------------------


def feed(history: MetricsHistory, clock: FakeClock) -> dict[str, list[float]]:
    """Two minutes of traffic on two workers and two task types; returns the waits and run
    times fed, per worker."""
    at = clock.now()
    tasks = [task(i, task_type="resize" if i % 2 else "crop") for i in range(1, 41)]
    history.submitted(tasks[:30], at)
    history.submitted(tasks[30:], at + MINUTE)
    history.submitted([task(99, pool="other")], at)
    runs: dict[str, list[float]] = {"w1": [], "w2": []}
    for i, t in enumerate(tasks):
        worker_id = "w1" if i % 4 else "w2"
        placed = dataclasses.replace(t, worker_id=worker_id)
        minute = at + (MINUTE if i >= 30 else 0)
        history.placed(placed, 0.01 * (i + 1), minute + 1)
        run_s = 0.05 * 1.1**i
        runs[worker_id].append(run_s)
        history.attempt_ended(placed, success=i % 5 != 0, run_s=run_s, at=minute + 30)
    return runs


async def test_history_merges_types_and_workers_with_counts_means_and_quantiles(
    history: MetricsHistory, clock: FakeClock
) -> None:
    runs = feed(history, clock)
    clock.advance(2 * MINUTE)
    assert await history.flush() > 0
    first, second = await history.history("p", since=START, until=START + 2 * MINUTE)
    assert (first.start, second.start) == (START, START + MINUTE)
    assert (first.pool, first.task_type, first.worker_id, first.bucket_s) == ("p", "", "", 60)
    assert (first.submitted, first.completed, first.failed) == (30, 30, 6)
    assert (second.submitted, second.completed, second.failed) == (10, 10, 2)
    waits = [0.01 * (i + 1) for i in range(30)]
    assert first.wait_mean_s == pytest.approx(sum(waits) / 30)
    assert close_to(first.wait_p50_s, true_quantile(waits, 0.5))
    assert close_to(first.wait_p99_s, true_quantile(waits, 0.99))
    first_runs = [0.05 * 1.1**i for i in range(30)]
    assert first.run_mean_s == pytest.approx(sum(first_runs) / 30)
    assert close_to(first.run_p50_s, true_quantile(first_runs, 0.5))
    assert close_to(first.run_p99_s, true_quantile(first_runs, 0.99))

    # One worker over both minutes, in one bucket: submissions belong to no worker.
    (w2,) = await history.history("p", worker_id="w2", since=START, bucket_s=300)
    assert (w2.worker_id, w2.task_type, w2.bucket_s, w2.submitted) == ("w2", "", 300, 0)
    assert w2.completed == len(runs["w2"]) == 10
    assert w2.run_mean_s == pytest.approx(sum(runs["w2"]) / 10)
    assert close_to(w2.run_p50_s, true_quantile(runs["w2"], 0.5))

    # By type; and every pool.
    crop = await history.history("p", task_type="crop", since=START)
    assert [(p.task_type, p.submitted) for p in crop] == [("crop", 15), ("crop", 5)]
    every = await history.history(since=START, bucket_s=3600)
    assert [(p.pool, p.submitted) for p in every] == [("other", 1), ("p", 40)]


async def test_unflushed_data_is_read_too_and_flushing_twice_adds_up(
    history: MetricsHistory, store: SQLiteStore, clock: FakeClock
) -> None:
    history.submitted([task(1), task(2)], clock.now())
    history.attempt_ended(task(1, "w1"), True, 0.5, clock.now())
    (before,) = await history.history("p")
    assert (before.submitted, before.completed) == (2, 1)  # nothing flushed yet
    assert await history.flush() == 2
    assert await history.flush() == 0  # nothing new
    clock.advance(20)  # the same minute
    history.submitted([task(3)], clock.now())
    history.attempt_ended(task(2, "w1"), False, 1.5, clock.now())
    (mixed,) = await history.history("p")  # half stored, half in memory
    assert (mixed.submitted, mixed.completed, mixed.failed) == (3, 2, 1)
    assert await history.flush() == 2
    rows = await store.load_rollups("p", "", "", START, START + MINUTE)
    assert [(r.worker_id, r.submitted, r.completed, r.failed, r.run_sum) for r in rows] == [
        ("", 3, 0, 0, 0.0),
        ("w1", 0, 2, 1, 2.0),
    ]
    assert sum(rows[1].run_hist) == 2
    (after,) = await history.history("p")
    assert after == mixed
    assert after.run_mean_s == pytest.approx(1.0)


async def test_the_history_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "broker.db"
    async with await SQLiteStore.open(path) as store:
        history = MetricsHistory(store, clock)
        feed(history, clock)
        await history.flush()
        before = await history.history(since=START, until=START + HOUR)
        history.submitted([task(500, pool="other")], clock.now())
        await history.flush()  # what the broker does before closing the store
    assert [(p.pool, p.start) for p in before] == [
        ("other", START),
        ("p", START),
        ("p", START + MINUTE),
    ]
    async with await SQLiteStore.open(path) as store:
        history = MetricsHistory(store, clock)  # a new broker: nothing in memory
        after = await history.history(since=START, until=START + HOUR)
    assert after[1:] == before[1:]
    assert after[0] == dataclasses.replace(before[0], submitted=2)


async def test_history_refuses_odd_buckets_and_backward_ranges(history: MetricsHistory) -> None:
    with pytest.raises(InvalidArgument, match="multiple of 60"):
        await history.history(bucket_s=90)
    with pytest.raises(InvalidArgument, match="after until"):
        await history.history(since=START, until=START - 1)


# -- compaction and retention --------------------------------------------------------------


async def test_compaction_merges_minutes_into_hours_without_losing_anything(
    history: MetricsHistory, store: SQLiteStore, clock: FakeClock
) -> None:
    # Three hours of traffic, one task a minute, each waiting 0.1 s and running 1 s.
    for minute in range(180):
        at = START + minute * MINUTE
        history.submitted([task(minute)], at)
        history.placed(task(minute, "w1"), 0.1, at)
        history.attempt_ended(task(minute, "w1"), minute % 3 != 0, 1.0, at)
    await history.flush()
    before = await history.history(since=START, until=START + 3 * HOUR, bucket_s=HOUR)
    assert len(await store.load_rollups("", "", "", START, START + 3 * HOUR)) == 360

    clock.advance(86_400 + 2 * HOUR + 30 * MINUTE)  # the first two hours are a day old
    merged, deleted = await history.compact()
    assert (merged, deleted) == (240, 0)
    rows = await store.load_rollups("", "", "", START, START + 3 * HOUR)
    assert [(r.bucket_s, r.start - START) for r in rows if r.worker_id == "w1"] == [
        (HOUR, 0),
        (HOUR, HOUR),
        *((MINUTE, 2 * HOUR + m * MINUTE) for m in range(60)),
    ]
    hourly = rows[0] if rows[0].worker_id == "w1" else rows[1]
    assert (hourly.completed, hourly.failed, hourly.wait_count, hourly.run_count) == (
        60,
        20,
        60,
        60,
    )
    assert hourly.run_sum == pytest.approx(60.0)
    assert sum(hourly.run_hist) == 60
    after = await history.history(since=START, until=START + 3 * HOUR, bucket_s=HOUR)
    assert after == before
    # Asked for minutes, the compacted hours come back as hours.
    mixed = await history.history(since=START, until=START + 3 * HOUR)
    assert [p.bucket_s for p in mixed] == [HOUR, HOUR] + [MINUTE] * 60
    assert sum(p.submitted for p in mixed) == 180

    assert await history.compact() == (0, 0)  # nothing more is old enough


async def test_retention_deletes_old_rows(
    history: MetricsHistory, store: SQLiteStore, clock: FakeClock
) -> None:
    history.submitted([task(1)], START)
    history.submitted([task(2)], START + 3 * HOUR)
    await history.flush()
    clock.advance(2 * 86_400 + 2 * HOUR)  # retention is two days: the first hour is gone
    merged, deleted = await history.compact()
    assert (merged, deleted) == (2, 1)
    points = await history.history(since=0, until=clock.now())
    assert [(p.start, p.bucket_s, p.submitted) for p in points] == [(START + 3 * HOUR, HOUR, 1)]


# -- live figures --------------------------------------------------------------------------


async def test_live_figures_cover_the_last_minute_only(
    history: MetricsHistory, clock: FakeClock
) -> None:
    for i in range(30):  # long ago
        history.attempt_ended(task(i, "w1"), True, 50.0, clock.now())
    clock.advance(10 * MINUTE)
    for i in range(120):
        history.placed(task(i, "w1"), 0.2, clock.now() - 30)
        history.attempt_ended(task(i, "w1"), i % 2 == 0, 0.5, clock.now() - 30)
    history.attempt_ended(task(999, "x1", pool="other"), True, 0.5, clock.now())
    live = history.live("p")
    assert live.throughput_per_s == pytest.approx(2.0)
    assert close_to(live.wait_p50_s, 0.2)
    assert close_to(live.wait_p99_s, 0.2)
    assert close_to(live.run_p50_s, 0.5)
    assert close_to(live.run_p99_s, 0.5)
    assert history.live("").throughput_per_s == pytest.approx(121 / 60)
    assert history.live("nobody") == (0.0, 0.0, 0.0, 0.0, 0.0)
    clock.advance(MINUTE)
    assert history.live("p").throughput_per_s == 0.0
    assert history.live("p", window_s=600).throughput_per_s == pytest.approx(120 / 600)


# -- running in the background ---------------------------------------------------------------


async def test_run_flushes_and_compacts_in_the_background(
    history: MetricsHistory, store: SQLiteStore, clock: FakeClock
) -> None:
    history.submitted([task(1)], START)
    clock.advance(86_400 + HOUR)
    runner = asyncio.create_task(history.run(interval_s=0.001))
    try:
        async with asyncio.timeout(5):
            while not (rows := await store.load_rollups("", "", "", 0, 2e9)) or (
                rows[0].bucket_s != HOUR
            ):
                await asyncio.sleep(0.001)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
    assert [(r.start, r.bucket_s, r.submitted) for r in rows] == [(START, HOUR, 1)]


async def test_run_stops_when_the_store_closes(history: MetricsHistory, store: SQLiteStore) -> None:
    await store.close()
    history.submitted([task(1)], START)
    async with asyncio.timeout(5):
        await history.run(interval_s=0.001)


class FlakyStore:
    """Queues rows like SQLiteStore; the next commit fails when told to, losing its batch."""

    def __init__(self) -> None:
        self.queued: list[RollupRow] = []
        self.stored: list[RollupRow] = []
        self.fail_next = False

    def save_rollups(self, rows: Sequence[RollupRow]) -> None:
        self.queued.extend(rows)

    async def flush(self) -> None:
        batch, self.queued = self.queued, []
        if self.fail_next:
            self.fail_next = False
            raise StorageError("disk full")
        self.stored.extend(batch)

    async def load_rollups(
        self, pool: str, task_type: str, worker_id: str, since: float, until: float
    ) -> list[RollupRow]:
        return list(self.stored)

    async def compact_rollups(self, before: float, into_bucket_s: int) -> int:
        return 0

    async def delete_rollups(self, before: float) -> int:
        return 0


async def test_a_failed_flush_keeps_its_rows_for_the_next(clock: FakeClock) -> None:
    store = FlakyStore()
    history = MetricsHistory(store, clock)
    history.submitted([task(1), task(2)], START)
    store.fail_next = True
    with pytest.raises(StorageError):
        await history.flush()
    history.submitted([task(3)], START)
    assert await history.flush() == 1
    assert [row.submitted for row in store.stored] == [3]
    (point,) = await history.history("p", since=START)
    assert point.submitted == 3


# -- in the engine -------------------------------------------------------------------------


async def test_the_engine_s_events_reach_the_history(tmp_path: Path, clock: FakeClock) -> None:
    config = make_config(tmp_path)
    async with await SQLiteStore.open(config.db_path) as store:
        engine = Engine(config, store, clock)
        history = MetricsHistory.from_config(config, store, clock)
        engine.observers.add(history)
        await engine.recover()
        engine.start()
        channel = RecordingChannel()
        engine.connect_worker(worker("w1", capacity=2), channel)
        submitted = await engine.submit([TaskSpec(task_type="t") for _ in range(3)])
        clock.advance(0.25)
        first, second = await channel.until_assigned(2)
        clock.advance(1.0)
        engine.report("w1", [first.id, second.id], [ok(first), ok(second)])
        await engine.wait([first.id, second.id], max_wait=5)
        await history.flush()
        (point,) = await history.history("default", since=START)
    assert (point.submitted, point.completed, point.failed) == (len(submitted), 2, 0)
    assert isinstance(point, MetricPoint)
