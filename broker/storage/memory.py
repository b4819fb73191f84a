"""The broker's state in memory: a store for tests, the simulator and embedding without a disk.

It goes through the same group commit as SQLite (broker.storage.groupcommit), so it
behaves like `SQLiteStore` as far as a caller can tell (the contract tests hold both to
it): writes are snapshots, queued and applied one batch at a time, and reads wait for the
writes queued before them. It keeps nothing across processes: "durable" means applied.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from broker.clock import Clock, SystemClock
from broker.domain import (
    ApiToken,
    ConfigChange,
    PoolConfig,
    Task,
    TaskFilter,
    TaskId,
    TaskState,
    WorkerId,
    WorkerSpec,
)
from broker.errors import InvalidArgument
from broker.stats import ArmStats, RollupRow, RunStats, RuntimeKey
from broker.storage.contract import check_purge
from broker.storage.groupcommit import GroupCommit, WriteBatch


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """One worker's last connection, as the store logged it."""

    spec: WorkerSpec
    connected_at: float
    last_heartbeat: float
    disconnected_at: float | None = None


_RollupKey = tuple[str, str, WorkerId, int, float]


@dataclass(slots=True)
class _Tables:
    """What the memory store holds; only its writer changes it, one batch at a time."""

    tasks: dict[TaskId, Task] = dataclasses.field(default_factory=dict)
    pools: dict[str, PoolConfig] = dataclasses.field(default_factory=dict)
    audit: list[ConfigChange] = dataclasses.field(default_factory=list)
    file_settings: dict[str, str] = dataclasses.field(default_factory=dict)  # JSON by pool
    tokens: dict[str, ApiToken] = dataclasses.field(default_factory=dict)  # by name
    sticky: dict[str, dict[str, WorkerId]] = dataclasses.field(default_factory=dict)
    runtimes: dict[RuntimeKey, RunStats] = dataclasses.field(default_factory=dict)
    arm_stats: dict[str, tuple[ArmStats, ...]] = dataclasses.field(default_factory=dict)
    rollups: dict[_RollupKey, RollupRow] = dataclasses.field(default_factory=dict)
    workers: dict[WorkerId, WorkerRecord] = dataclasses.field(default_factory=dict)

    def add_rollup(self, row: RollupRow) -> None:
        stored = self.rollups.get(row.key)
        self.rollups[row.key] = row if stored is None else stored.plus(row)


class _MemoryWriter:
    """The group commit's backend: applies each batch to the tables, all or nothing.

    Tasks are kept as copies: the engine moves its Task objects through their states in
    place, and a change it never saved must not show through a read.
    """

    def __init__(self, tables: _Tables) -> None:
        self._tables = tables

    def inserted_row(self, task: Task) -> Task:
        return dataclasses.replace(task)

    def saved_row(self, task: Task) -> Task:
        return dataclasses.replace(task)

    async def commit(self, batch: WriteBatch[Task]) -> None:
        tables = self._tables
        # Check first, so that a failing batch changes nothing (like a rolled-back one).
        seen: set[TaskId] = set()
        for task in batch.inserts:
            if task.id in tables.tasks or task.id in seen:
                raise ValueError(f"task {task.id} exists")
            seen.add(task.id)
        for task in batch.inserts:
            tables.tasks[task.id] = task
        for task in batch.saves.values():
            stored = tables.tasks.get(task.id)
            if stored is not None:  # a task never inserted is ignored, like an UPDATE
                tables.tasks[task.id] = dataclasses.replace(task, spec=stored.spec)
        for pool, _at in batch.pools.values():
            tables.pools[pool.name] = pool
        tables.audit.extend(batch.config_changes)
        tables.file_settings.update(batch.file_settings)
        tables.tokens.update(batch.tokens)
        for (pool_name, key), (worker_id, _at) in batch.sticky.items():
            keys = tables.sticky.setdefault(pool_name, {})
            keys.pop(key, None)  # kept in the order of their last change, like SQLite's
            if worker_id:  # an empty worker id forgets the key
                keys[key] = worker_id
        tables.runtimes.update(batch.runtimes)
        tables.arm_stats.update(batch.arm_stats)
        for row in batch.rollups:
            tables.add_rollup(row)
        workers = tables.workers
        for spec, at in batch.connects.values():
            workers[spec.worker_id] = WorkerRecord(spec=spec, connected_at=at, last_heartbeat=at)
        for worker_id, at in batch.heartbeats.items():
            if (record := workers.get(worker_id)) is not None:
                workers[worker_id] = dataclasses.replace(record, last_heartbeat=at)
        for worker_id, at in batch.disconnects.items():
            if (record := workers.get(worker_id)) is not None:
                workers[worker_id] = dataclasses.replace(record, disconnected_at=at)

    async def close(self) -> None:
        """Nothing to release; the data stays for inspection."""


class MemoryStore(GroupCommit[Task]):
    """Tasks, pools, the worker log and the metrics history in dicts.

    Reads hand out copies, so changing what a read returned changes nothing stored.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._tables = _Tables()
        super().__init__(_MemoryWriter(self._tables), clock or SystemClock())

    @classmethod
    async def open(cls, *, clock: Clock | None = None) -> MemoryStore:
        """A new, empty store; async like `SQLiteStore.open`, so the two swap in one line."""
        return cls(clock)

    @property
    def workers(self) -> Mapping[WorkerId, WorkerRecord]:
        """The worker log as committed, read-only: each worker's latest connection."""
        return MappingProxyType(self._tables.workers)

    # -- reads ----------------------------------------------------------------------------

    async def get_task(self, task_id: TaskId) -> Task | None:
        """The task with this id, or None."""
        tasks = await self.get_tasks((task_id,))
        return tasks[0] if tasks else None

    async def get_tasks(self, task_ids: Collection[TaskId]) -> list[Task]:
        """The stored tasks among these ids."""
        await self._settle(task_ids)
        tasks = self._tables.tasks
        return [dataclasses.replace(tasks[i]) for i in dict.fromkeys(task_ids) if i in tasks]

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        """Tasks matching the filter, newest (highest id) first, at most `flt.limit`."""
        await self._settle()
        if flt.limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {flt.limit}")
        found: list[Task] = []
        for task_id in sorted(self._tables.tasks, reverse=True):
            if len(found) == flt.limit:
                break
            task = self._tables.tasks[task_id]
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
        await self._settle()
        unfinished = [t for t in self._tables.tasks.values() if not t.state.terminal]
        return [dataclasses.replace(t) for t in sorted(unfinished, key=lambda t: (t.seq, t.id))]

    async def max_task_id(self) -> TaskId:
        """The highest task id stored, 0 if none."""
        await self._settle()
        return max(self._tables.tasks, default=0)

    async def max_seq(self) -> int:
        """The highest seq stored, 0 if none."""
        await self._settle()
        return max((task.seq for task in self._tables.tasks.values()), default=0)

    async def count_by_pool_state(self) -> dict[tuple[str, TaskState], int]:
        """How many tasks each pool has in each state; absent keys mean zero."""
        await self._settle()
        return dict(Counter((task.spec.pool, task.state) for task in self._tables.tasks.values()))

    async def list_pools(self) -> list[PoolConfig]:
        """Every stored pool, by name."""
        await self._settle()
        return [self._tables.pools[name] for name in sorted(self._tables.pools)]

    async def find_idempotent(
        self, pool: str, keys: Sequence[str], since: float
    ) -> dict[str, Task]:
        """The earliest task of this pool per idempotency key, created at or after `since`."""
        await self._settle()
        wanted = set(keys)
        found: dict[str, Task] = {}
        for task_id in sorted(self._tables.tasks):
            task = self._tables.tasks[task_id]
            key = task.spec.idempotency_key
            if key in wanted and task.spec.pool == pool and task.created_at >= since:
                found.setdefault(key, dataclasses.replace(task))
        return found

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        """Audited configuration changes, newest first; of one pool, or of all."""
        await self._settle()
        changes = [c for c in reversed(self._tables.audit) if not pool or c.pool == pool]
        return changes[:limit]

    async def load_tokens(self) -> list[ApiToken]:
        """Every stored API token, revoked ones too, by name."""
        await self._settle()
        return [self._tables.tokens[name] for name in sorted(self._tables.tokens)]

    async def load_file_settings(self) -> dict[str, dict[str, Any]]:
        """The settings the config file last gave each pool, by pool."""
        await self._settle()
        return {pool: json.loads(text) for pool, text in self._tables.file_settings.items()}

    async def load_sticky(self) -> dict[str, dict[str, WorkerId]]:
        """Where each pool's sticky keys live: pool -> key -> worker id."""
        await self._settle()
        return {pool: dict(keys) for pool, keys in self._tables.sticky.items()}

    async def load_runtimes(self) -> list[tuple[RuntimeKey, RunStats]]:
        """Every learned run-time statistic (copies)."""
        await self._settle()
        return [(key, dataclasses.replace(s)) for key, s in self._tables.runtimes.items()]

    async def load_arm_stats(self) -> dict[str, list[ArmStats]]:
        """Each pool's arm statistics (copies)."""
        await self._settle()
        return {
            pool: [dataclasses.replace(arm) for arm in arms]
            for pool, arms in self._tables.arm_stats.items()
        }

    # -- retention ------------------------------------------------------------------------

    async def purge_tasks(
        self, pool: str, finished_before: float, states: Collection[TaskState], limit: int
    ) -> dict[TaskState, int]:
        """Delete at most `limit` finished tasks of `pool` in `states` that finished before
        `finished_before`, oldest first; how many of each state went."""
        chosen = check_purge(states, limit)
        self._check_writable()
        await self._settle()
        tasks = self._tables.tasks
        old = sorted(
            (
                task
                for task in tasks.values()
                if task.spec.pool == pool
                and task.state in chosen
                and task.finished_at < finished_before
            ),
            key=lambda task: (task.finished_at, task.id),
        )[:limit]
        for task in old:
            del tasks[task.id]
        return dict(Counter(task.state for task in old))

    # -- metrics history ------------------------------------------------------------------

    async def load_rollups(
        self, pool: str, task_type: str, worker_id: str, since: float, until: float
    ) -> list[RollupRow]:
        """Rows whose bucket overlaps [since, until), by start; an empty pool, task type or
        worker id matches any."""
        await self._settle()
        found = [
            row
            for row in self._tables.rollups.values()
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
        self._check_writable()
        await self._settle()
        rollups = self._tables.rollups
        old = [
            row for row in rollups.values() if row.bucket_s < into_bucket_s and row.start < before
        ]
        for row in old:
            del rollups[row.key]
        for row in sorted(old, key=lambda r: r.start):
            start = float(int(row.start / into_bucket_s) * into_bucket_s)
            self._tables.add_rollup(dataclasses.replace(row, start=start, bucket_s=into_bucket_s))
        return len(old)

    async def delete_rollups(self, before: float) -> int:
        """Delete the rows that start before `before`; returns how many."""
        self._check_writable()
        await self._settle()
        rollups = self._tables.rollups
        old = [key for key, row in rollups.items() if row.start < before]
        for key in old:
            del rollups[key]
        return len(old)
