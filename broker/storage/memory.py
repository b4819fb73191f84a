"""The broker's state in memory: a store for tests, the simulator and embedding without a disk.

It behaves like `SQLiteStore` as far as a caller can tell (the contract tests hold both to
it) but keeps nothing across processes: it is not durable, so `durable()` and `flush()` have
nothing to wait for.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Self

from broker.domain import (
    ConfigChange,
    PoolConfig,
    Task,
    TaskFilter,
    TaskId,
    TaskState,
    WorkerId,
    WorkerSpec,
)
from broker.errors import InvalidArgument, StorageError, Unavailable
from broker.stats import RollupRow, RunStats, RuntimeKey


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """One worker's last connection, as the store logged it."""

    spec: WorkerSpec
    connected_at: float
    last_heartbeat: float
    disconnected_at: float | None = None


class MemoryStore:
    """Tasks, pools and the worker log in dicts; every write is "committed" at once.

    It keeps copies: the engine moves its Task objects through their states in place, and a
    change it never saved must not show through `get_task`, as with SQLite. Reads hand out
    copies too, so changing what a read returned changes nothing stored.
    """

    def __init__(self) -> None:
        self._tasks: dict[TaskId, Task] = {}
        self._pools: dict[str, PoolConfig] = {}
        self._sticky: dict[str, dict[str, WorkerId]] = {}
        self._runtimes: dict[RuntimeKey, RunStats] = {}
        self._workers: dict[WorkerId, WorkerRecord] = {}
        self._rollups: dict[tuple[str, str, WorkerId, int, float], RollupRow] = {}
        self._audit: list[ConfigChange] = []
        self._closed = False

    @classmethod
    async def open(cls) -> MemoryStore:
        """A new, empty store; async like `SQLiteStore.open`, so the two swap in one line."""
        return cls()

    @property
    def workers(self) -> Mapping[WorkerId, WorkerRecord]:
        """The worker log, read-only: each worker's latest connection."""
        return MappingProxyType(self._workers)

    # -- writes ---------------------------------------------------------------------------

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        """Add new tasks, all or none: a duplicate id fails the batch with StorageError."""
        self._check_open()
        seen: set[TaskId] = set()
        for task in tasks:
            if task.id in self._tasks or task.id in seen:
                raise StorageError(f"the task store could not commit: task {task.id} exists")
            seen.add(task.id)
        for task in tasks:
            self._tasks[task.id] = dataclasses.replace(task)

    def save(self, task: Task) -> None:
        """Store the task's current state (everything but its spec); the last save wins.

        A task not inserted yet is ignored, like SQLite's UPDATE of no row. (SQLite would
        still apply a save queued just before the insert it shares a commit with.)
        """
        self._check_open()
        stored = self._tasks.get(task.id)
        if stored is not None:
            self._tasks[task.id] = dataclasses.replace(task, spec=stored.spec)

    async def upsert_pool(self, pool: PoolConfig) -> None:
        """Create the pool or change its settings."""
        self._check_open()
        self._pools[pool.name] = pool

    # -- config audit -----------------------------------------------------------------------

    async def record_config_change(self, change: ConfigChange) -> None:
        """Append an audited configuration change."""
        self._check_open()
        self._audit.append(change)

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        """Audited configuration changes, newest first; of one pool, or of all."""
        self._check_open()
        changes = [c for c in reversed(self._audit) if not pool or c.pool == pool]
        return changes[:limit]

    def save_sticky(self, pool: str, key: str, worker_id: WorkerId) -> None:
        """Record where a sticky key now lives."""
        self._check_open()
        self._sticky.setdefault(pool, {})[key] = worker_id

    def save_runtime(self, key: RuntimeKey, stats: RunStats) -> None:
        """Record a snapshot of learned run-time statistics."""
        self._check_open()
        self._runtimes[key] = dataclasses.replace(stats)

    async def load_sticky(self) -> dict[str, dict[str, WorkerId]]:
        """Where each pool's sticky keys live: pool -> key -> worker id."""
        self._check_open()
        return {pool: dict(keys) for pool, keys in self._sticky.items()}

    async def load_runtimes(self) -> list[tuple[RuntimeKey, RunStats]]:
        """Every learned run-time statistic (copies)."""
        self._check_open()
        return [(key, dataclasses.replace(stats)) for key, stats in self._runtimes.items()]

    def worker_connected(self, spec: WorkerSpec, at: float) -> None:
        """Log a worker's registration; a worker that reconnects is connected again."""
        self._check_open()
        self._workers[spec.worker_id] = WorkerRecord(spec=spec, connected_at=at, last_heartbeat=at)

    def worker_heartbeat(self, worker_id: WorkerId, at: float) -> None:
        """Note a worker's latest heartbeat; one never connected is ignored."""
        self._check_open()
        if (record := self._workers.get(worker_id)) is not None:
            self._workers[worker_id] = dataclasses.replace(record, last_heartbeat=at)

    def worker_disconnected(self, worker_id: WorkerId, at: float) -> None:
        """Log the end of a worker's connection; one never connected is ignored."""
        self._check_open()
        if (record := self._workers.get(worker_id)) is not None:
            self._workers[worker_id] = dataclasses.replace(record, disconnected_at=at)

    def durable(self) -> asyncio.Future[None]:
        """A future that is done already: every write is as durable as it will get."""
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def flush(self) -> None:
        """Nothing to wait for."""

    # -- metrics history --------------------------------------------------------------------

    def save_rollups(self, rows: Sequence[RollupRow]) -> None:
        """Add metrics-history rows, each to the stored row of its key (or store it)."""
        self._check_open()
        for row in rows:
            self._add_rollup(row)

    async def load_rollups(
        self, pool: str, task_type: str, worker_id: str, since: float, until: float
    ) -> list[RollupRow]:
        """Rows whose bucket overlaps [since, until), by start; an empty pool, task type or
        worker id matches any."""
        self._check_open()
        found = [
            row
            for row in self._rollups.values()
            if (not pool or row.pool == pool)
            and (not task_type or row.task_type == task_type)
            and (not worker_id or row.worker_id == worker_id)
            and row.start < until
            and row.start + row.bucket_s > since
        ]
        return sorted(found, key=lambda r: (r.start, r.pool, r.task_type, r.worker_id, r.bucket_s))

    async def compact_rollups(self, before: float, into_bucket_s: int) -> int:
        """Merge the rows narrower than `into_bucket_s` that start before `before` into rows
        `into_bucket_s` wide (added to any stored there); returns how many were merged."""
        self._check_open()
        old = [
            row
            for row in self._rollups.values()
            if row.bucket_s < into_bucket_s and row.start < before
        ]
        for row in old:
            del self._rollups[row.key]
        for row in sorted(old, key=lambda r: r.start):
            start = float(int(row.start / into_bucket_s) * into_bucket_s)
            self._add_rollup(dataclasses.replace(row, start=start, bucket_s=into_bucket_s))
        return len(old)

    async def delete_rollups(self, before: float) -> int:
        """Delete the rows that start before `before`; returns how many."""
        self._check_open()
        old = [key for key, row in self._rollups.items() if row.start < before]
        for key in old:
            del self._rollups[key]
        return len(old)

    def _add_rollup(self, row: RollupRow) -> None:
        stored = self._rollups.get(row.key)
        self._rollups[row.key] = row if stored is None else stored.plus(row)

    # -- reads ----------------------------------------------------------------------------

    async def get_task(self, task_id: TaskId) -> Task | None:
        """The task with this id, or None."""
        self._check_open()
        task = self._tasks.get(task_id)
        return None if task is None else dataclasses.replace(task)

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        """Tasks matching the filter, newest (highest id) first, at most `flt.limit`."""
        self._check_open()
        if flt.limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {flt.limit}")
        found: list[Task] = []
        for task_id in sorted(self._tasks, reverse=True):
            if len(found) == flt.limit:
                break
            task = self._tasks[task_id]
            if (
                (not flt.pool or task.spec.pool == flt.pool)
                and (not flt.states or task.state in flt.states)
                and (not flt.task_type or task.spec.task_type == flt.task_type)
                and (flt.before_id is None or task_id < flt.before_id)
            ):
                found.append(dataclasses.replace(task))
        return found

    async def load_unfinished(self) -> list[Task]:
        """Pending, assigned and running tasks in submission (seq) order, for recovery."""
        self._check_open()
        unfinished = [t for t in self._tasks.values() if not t.state.terminal]
        return [dataclasses.replace(t) for t in sorted(unfinished, key=lambda t: (t.seq, t.id))]

    async def max_task_id(self) -> TaskId:
        """The highest task id stored, 0 if none."""
        self._check_open()
        return max(self._tasks, default=0)

    async def max_seq(self) -> int:
        """The highest seq stored, 0 if none."""
        self._check_open()
        return max((task.seq for task in self._tasks.values()), default=0)

    async def count_by_pool_state(self) -> dict[tuple[str, TaskState], int]:
        """How many tasks each pool has in each state; absent keys mean zero."""
        self._check_open()
        return dict(Counter((task.spec.pool, task.state) for task in self._tasks.values()))

    async def list_pools(self) -> list[PoolConfig]:
        """Every stored pool, by name."""
        self._check_open()
        return [self._pools[name] for name in sorted(self._pools)]

    async def find_idempotent(
        self, pool: str, keys: Sequence[str], since: float
    ) -> dict[str, Task]:
        """The earliest task of this pool per idempotency key, created at or after `since`."""
        self._check_open()
        wanted = set(keys)
        found: dict[str, Task] = {}
        for task_id in sorted(self._tasks):
            task = self._tasks[task_id]
            key = task.spec.idempotency_key
            if key in wanted and task.spec.pool == pool and task.created_at >= since:
                found.setdefault(key, dataclasses.replace(task))
        return found

    # -- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Refuse reads and writes from now on. Idempotent; the data stays for inspection."""
        self._closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable("the task store is closed")
