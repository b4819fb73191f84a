"""The metrics history: per-minute rollups of what each pool did, kept in the store.

`MetricsHistory` is an observer (see broker.observability.observe). As tasks move it counts,
per pool, task type, worker and minute, the tasks submitted, the attempts that ended and
failed, and the queue waits and run times, each as a count, a sum and a log-scale histogram,
so that quantiles can still be estimated after rows are merged. Its `run` loop writes what
it gathered through the store's group commit every `metrics_flush_s` seconds, and once an
hour merges minute rows older than `metrics_compact_after_s` into hourly rows and deletes
rows older than `metrics_retention_s`. So the history survives restarts and stays small.

What is counted, and where:

- submitted: tasks stored by a submit, under worker_id "" (no worker has them yet);
- completed: attempts that ended, with any outcome (a result, or the broker's timeout),
  under the worker that ran them; a task retried twice completes three attempts;
- failed: those of the completed attempts that failed;
- queue wait (from submit or requeue to assignment): under the worker it was placed on;
- run time: of every ended attempt, like completed.

Rows are only ever added to: flushing the same minute twice, or compacting minutes into an
hour that has a row already, adds counts, sums and histograms together.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from broker.clock import Clock
from broker.config import BrokerConfig
from broker.domain import Task, WorkerId
from broker.errors import InvalidArgument, StorageError, Unavailable

# Re-exported: the stored values moved to broker.stats, below the store.
from broker.stats import RollupRow as RollupRow
from broker.stats import RunStats
from broker.stats import hist_add as hist_add
from broker.storage.contract import RollupStore

log = logging.getLogger("taskbroker.rollups")

MINUTE: Final = 60
HOUR: Final = 3600

# Histogram bucket edges in seconds: six per decade from 1 ms to about 77 min (1e-3 *
# 10**(40/6) = 4642 s). Bucket 0 holds values under 1 ms, bucket i in 1..40 holds
# [HIST_EDGES[i-1], HIST_EDGES[i]), the last one everything from HIST_EDGES[-1] up. An
# estimate within a bucket is off by at most a factor of 10**(1/6) = 1.468.
HIST_EDGES: Final[tuple[float, ...]] = tuple(0.001 * 10 ** (i / 6) for i in range(41))
HIST_BUCKETS: Final = len(HIST_EDGES) + 1
HIST_RESOLUTION: Final = 10 ** (1 / 6)  # the widest ratio of a bucket's edges

_LIVE_SLOT_S: Final = 5.0  # `live` figures come from slots this wide
_LIVE_KEEP_S: Final = 900.0  # and look back at most this far
_DEFAULT_HISTORY_S: Final = 3600.0  # `history` without `since`: the last hour


def hist_bucket(value_s: float) -> int:
    """The histogram bucket a duration falls in (negative ones count as 0)."""
    if value_s < HIST_EDGES[0]:
        return 0
    return bisect.bisect_right(HIST_EDGES, value_s)


def hist_quantile(hist: Sequence[int], q: float) -> float:
    """The q-quantile (0..1) of the durations counted in `hist`; 0.0 for an empty one.

    Interpolates within the bucket that holds the quantile's rank: linearly in the first
    bucket (from 0), geometrically in the others; the last, open bucket gives its lower
    edge. So the estimate lies in the same bucket as the true value.
    """
    total = sum(hist)
    if total <= 0:
        return 0.0
    rank = min(max(q, 0.0), 1.0) * total
    seen = 0
    for index, count in enumerate(hist):
        if count <= 0:
            continue
        if seen + count >= rank:
            fraction = (rank - seen) / count
            if index == 0:
                return HIST_EDGES[0] * fraction
            if index > len(HIST_EDGES) - 1:
                return HIST_EDGES[-1]
            low, high = HIST_EDGES[index - 1], HIST_EDGES[index]
            return float(low * (high / low) ** fraction)
        seen += count
    return HIST_EDGES[-1]  # only reached through rounding of `rank`


def _floor(at: float, step: float) -> float:
    return float(math.floor(at / step) * step)


# -- what is read --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricPoint:
    """Rows merged into one bucket of a history: the shape of the wire's MetricPoint."""

    start: float  # epoch seconds
    bucket_s: int
    pool: str
    task_type: str  # "" when summed over types
    worker_id: WorkerId  # "" when summed over workers
    submitted: int
    completed: int  # attempts that ended, any outcome
    failed: int
    wait_mean_s: float
    wait_p50_s: float
    wait_p99_s: float
    run_mean_s: float
    run_p50_s: float
    run_p99_s: float


class LiveStats(NamedTuple):
    """A pool's last minute or so, for `taskbroker stats`."""

    throughput_per_s: float  # attempts ended per second, any outcome
    wait_p50_s: float
    wait_p99_s: float
    run_p50_s: float
    run_p99_s: float


def points_from_rows(
    rows: Iterable[RollupRow],
    bucket_s: int = MINUTE,
    *,
    by_type: bool = False,
    by_worker: bool = False,
) -> list[MetricPoint]:
    """Merge rows into points `bucket_s` wide (or as wide as a wider row), per pool and,
    if asked, per task type and worker; oldest first.

    A row wider than `bucket_s` (an hour, once compacted) makes a point of its own width;
    one that straddles two buckets of an odd `bucket_s` counts where it starts.
    """
    merged: dict[tuple[float, int, str, str, str], RollupRow] = {}
    for row in rows:
        width = max(bucket_s, row.bucket_s)
        start = _floor(row.start, width)
        task_type = row.task_type if by_type else ""
        worker_id = row.worker_id if by_worker else ""
        key = (start, width, row.pool, task_type, worker_id)
        if (found := merged.get(key)) is None:
            found = RollupRow(
                pool=row.pool, task_type=task_type, worker_id=worker_id, start=start, bucket_s=width
            )
        merged[key] = found.plus(row)
    return [_point(merged[key]) for key in sorted(merged)]


def _point(row: RollupRow) -> MetricPoint:
    return MetricPoint(
        start=row.start,
        bucket_s=row.bucket_s,
        pool=row.pool,
        task_type=row.task_type,
        worker_id=row.worker_id,
        submitted=row.submitted,
        completed=row.completed,
        failed=row.failed,
        wait_mean_s=row.wait_sum / row.wait_count if row.wait_count else 0.0,
        wait_p50_s=hist_quantile(row.wait_hist, 0.5),
        wait_p99_s=hist_quantile(row.wait_hist, 0.99),
        run_mean_s=row.run_sum / row.run_count if row.run_count else 0.0,
        run_p50_s=hist_quantile(row.run_hist, 0.5),
        run_p99_s=hist_quantile(row.run_hist, 0.99),
    )


# -- gathering -----------------------------------------------------------------------------


_Key = tuple[str, str, WorkerId, float]  # pool, task type, worker, minute start


@dataclass(slots=True)
class _Tally:
    """A row being counted in memory (mutable, unlike RollupRow: it is the hot path)."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    wait_count: int = 0
    wait_sum: float = 0.0
    run_count: int = 0
    run_sum: float = 0.0
    wait_hist: list[int] = field(default_factory=lambda: [0] * HIST_BUCKETS)
    run_hist: list[int] = field(default_factory=lambda: [0] * HIST_BUCKETS)

    def add_wait(self, wait_s: float) -> None:
        self.wait_count += 1
        self.wait_sum += wait_s
        self.wait_hist[hist_bucket(wait_s)] += 1

    def add_run(self, run_s: float, success: bool) -> None:
        self.completed += 1
        self.failed += not success
        self.run_count += 1
        self.run_sum += run_s
        self.run_hist[hist_bucket(run_s)] += 1

    def row(self, key: _Key) -> RollupRow:
        pool, task_type, worker_id, start = key
        return RollupRow(
            pool=pool,
            task_type=task_type,
            worker_id=worker_id,
            start=start,
            bucket_s=MINUTE,
            submitted=self.submitted,
            completed=self.completed,
            failed=self.failed,
            wait_count=self.wait_count,
            wait_sum=self.wait_sum,
            run_count=self.run_count,
            run_sum=self.run_sum,
            wait_hist=tuple(self.wait_hist),
            run_hist=tuple(self.run_hist),
        )


class MetricsHistory:
    """Per-minute rollups per pool, task type and worker, gathered in memory as the engine
    reports (an Observer) and written through the store in batches.

    The broker adds it to `engine.observers`, owns `run()` as a background task and calls
    `flush()` once more before it closes the store. Time comes from `clock`.
    """

    def __init__(
        self,
        store: RollupStore,
        clock: Clock,
        *,
        retention_s: float = 7 * 86_400.0,
        compact_after_s: float = 86_400.0,
        flush_s: float = 10.0,
    ) -> None:
        if not 0 < compact_after_s <= retention_s:
            raise ValueError("compact_after_s must be positive and at most retention_s")
        if flush_s <= 0:
            raise ValueError("flush_s must be positive")
        self._store = store
        self._clock = clock
        self._retention_s = retention_s
        self._compact_after_s = compact_after_s
        self._flush_s = flush_s
        self._pending: dict[_Key, _Tally] = {}  # not yet handed to the store
        self._live: dict[str, dict[float, _Tally]] = {}  # pool -> slot start -> tally
        # Held while a read joins the store's rows with the pending ones, so a flush
        # cannot move rows between the two halves of that read.
        self._moving = asyncio.Lock()

    @classmethod
    def from_config(cls, config: BrokerConfig, store: RollupStore, clock: Clock) -> MetricsHistory:
        """A history with the broker's metrics_* settings."""
        return cls(
            store,
            clock,
            retention_s=config.metrics_retention_s,
            compact_after_s=config.metrics_compact_after_s,
            flush_s=config.metrics_flush_s,
        )

    # -- the Observer hooks (quick, in memory) ---------------------------------------------

    def submitted(self, tasks: Sequence[Task], at: float) -> None:
        minute = _floor(at, MINUTE)
        for task in tasks:
            self._tally(task.spec.pool, task.spec.task_type, "", minute).submitted += 1

    def placed(self, task: Task, queue_wait_s: float, at: float) -> None:
        wait_s = max(queue_wait_s, 0.0)
        pool = task.spec.pool
        self._tally(pool, task.spec.task_type, task.worker_id, _floor(at, MINUTE)).add_wait(wait_s)
        self._live_tally(pool, at).add_wait(wait_s)

    def attempt_ended(self, task: Task, success: bool, run_s: float, at: float) -> None:
        run_s = max(run_s, 0.0)
        pool = task.spec.pool
        tally = self._tally(pool, task.spec.task_type, task.worker_id, _floor(at, MINUTE))
        tally.add_run(run_s, success)
        self._live_tally(pool, at).add_run(run_s, success)

    def requeued(self, task: Task, reason: str, at: float) -> None:
        """Not counted: the attempt never ended, and its wait is counted when placed again."""

    def finished(self, task: Task) -> None:
        """Not counted: `attempt_ended` saw the attempt."""

    def worker_changed(self, worker_id: WorkerId, pool: str, event: str, at: float) -> None:
        """Not counted."""

    def _tally(self, pool: str, task_type: str, worker_id: WorkerId, minute: float) -> _Tally:
        key = (pool, task_type, worker_id, minute)
        tally = self._pending.get(key)
        if tally is None:
            tally = self._pending[key] = _Tally()
        return tally

    def _live_tally(self, pool: str, at: float) -> _Tally:
        slots = self._live.get(pool)
        if slots is None:
            slots = self._live[pool] = {}
        start = _floor(at, _LIVE_SLOT_S)
        tally = slots.get(start)
        if tally is None:
            tally = slots[start] = _Tally()
            horizon = start - _LIVE_KEEP_S
            for old in [s for s in slots if s < horizon]:
                del slots[old]
        return tally

    # -- writing ---------------------------------------------------------------------------

    async def flush(self) -> int:
        """Hand everything gathered so far (closed minutes and the current one) to the store
        in one batch and wait for its commit; returns how many rows were written.

        The store adds each row to what it has for that minute, so the current minute may
        be flushed again later. If the commit fails, the rows are kept for the next flush
        and the StorageError is raised.
        """
        async with self._moving:
            pending, self._pending = self._pending, {}
            rows = [tally.row(key) for key, tally in pending.items()]
            if rows:
                self._store.save_rollups(rows)
        if not rows:
            return 0
        try:
            await self._store.flush()
        except StorageError:
            # The batch was one transaction: none of these rows were stored.
            for key, tally in pending.items():
                self._merge_back(key, tally)
            raise
        return len(rows)

    def _merge_back(self, key: _Key, tally: _Tally) -> None:
        target = self._tally(*key)
        target.submitted += tally.submitted
        target.completed += tally.completed
        target.failed += tally.failed
        target.wait_count += tally.wait_count
        target.wait_sum += tally.wait_sum
        target.run_count += tally.run_count
        target.run_sum += tally.run_sum
        target.wait_hist[:] = hist_add(target.wait_hist, tally.wait_hist)
        target.run_hist[:] = hist_add(target.run_hist, tally.run_hist)

    async def compact(self) -> tuple[int, int]:
        """Merge minute rows older than compact_after_s into hourly rows and delete rows
        older than retention_s (both at whole hours); returns (merged, deleted) row counts."""
        now = self._clock.now()
        merged = await self._store.compact_rollups(_floor(now - self._compact_after_s, HOUR), HOUR)
        deleted = await self._store.delete_rollups(_floor(now - self._retention_s, HOUR))
        if merged or deleted:
            log.info(
                "metrics history: %d minute rows compacted, %d old rows deleted", merged, deleted
            )
        return merged, deleted

    async def run(self, interval_s: float | None = None) -> None:
        """Flush every `interval_s` (default: flush_s) seconds and compact once an hour, the
        first time at the first flush; until cancelled or the store is closed.

        A failed flush or compaction is logged and tried again later: the metrics history
        must never take the broker down.
        """
        interval = self._flush_s if interval_s is None else interval_s
        next_compaction = self._clock.now()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
                if self._clock.now() >= next_compaction:
                    next_compaction = self._clock.now() + HOUR
                    await self.compact()
            except Unavailable:
                log.debug("metrics history: the store is closed; stopping")
                return
            except Exception:
                log.exception("metrics history: writing failed; trying again later")

    # -- reading ---------------------------------------------------------------------------

    async def run_times(self, since: float, until: float) -> dict[tuple[str, str], RunStats]:
        """Run-time statistics per (pool, task type) from the stored history: what the
        predictive strategy starts from for task types it has not learned yet."""
        totals: dict[tuple[str, str], list[float]] = {}
        for row in await self._store.load_rollups("", "", "", since, until):
            if row.run_count:
                total = totals.setdefault((row.pool, row.task_type), [0, 0.0])
                total[0] += row.run_count
                total[1] += row.run_sum
        return {
            key: RunStats(count=int(count), mean_s=run_sum / count)
            for key, (count, run_sum) in totals.items()
        }

    async def history(
        self,
        pool: str = "",
        task_type: str = "",
        worker_id: WorkerId = "",
        since: float | None = None,
        until: float | None = None,
        bucket_s: int = 0,
    ) -> list[MetricPoint]:
        """Points of `bucket_s` seconds (0 = 60, as stored; else a multiple of 60) that
        overlap [since, until) (default: the last hour, the current minute included), oldest
        first.

        There is a point per pool (all pools if `pool` is empty) and bucket; they are per
        task type and per worker only when those filters are given, else summed over them.
        Includes what was gathered but not yet flushed.
        """
        now = self._clock.now()
        until = _floor(now, MINUTE) + MINUTE if until is None else until  # the current minute
        since = now - _DEFAULT_HISTORY_S if since is None else since
        if since > until:
            raise InvalidArgument(f"since ({since:g}) is after until ({until:g})")
        if bucket_s < 0 or bucket_s % MINUTE:
            raise InvalidArgument(f"bucket_s must be 0 or a multiple of 60, got {bucket_s}")
        async with self._moving:
            rows = await self._store.load_rollups(pool, task_type, worker_id, since, until)
            for key, tally in self._pending.items():
                row_pool, row_type, row_worker, start = key
                if (
                    (not pool or row_pool == pool)
                    and (not task_type or row_type == task_type)
                    and (not worker_id or row_worker == worker_id)
                    and start < until
                    and start + MINUTE > since
                ):
                    rows.append(tally.row(key))
        return points_from_rows(
            rows, bucket_s or MINUTE, by_type=bool(task_type), by_worker=bool(worker_id)
        )

    def live(self, pool: str = "", window_s: float = 60.0) -> LiveStats:
        """Throughput and wait and run quantiles of the pool (all pools for "") over the last
        `window_s` seconds (at most 15 minutes), from memory: nothing is read."""
        window_s = min(max(window_s, _LIVE_SLOT_S), _LIVE_KEEP_S)
        since = self._clock.now() - window_s
        completed = 0
        wait_hist: tuple[int, ...] = ()
        run_hist: tuple[int, ...] = ()
        pools = self._live.values() if not pool else [self._live.get(pool, {})]
        for slots in pools:
            for start, tally in slots.items():
                # A slot counts if most of it lies in the window.
                if start + _LIVE_SLOT_S / 2 >= since:
                    completed += tally.completed
                    wait_hist = hist_add(wait_hist, tally.wait_hist)
                    run_hist = hist_add(run_hist, tally.run_hist)
        return LiveStats(
            throughput_per_s=completed / window_s,
            wait_p50_s=hist_quantile(wait_hist, 0.5),
            wait_p99_s=hist_quantile(wait_hist, 0.99),
            run_p50_s=hist_quantile(run_hist, 0.5),
            run_p99_s=hist_quantile(run_hist, 0.99),
        )
