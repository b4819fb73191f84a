"""The store contract: one Protocol for everything the broker keeps, and the rules that
every backend (SQLite, memory, and any later one) follows.

`Store` is what the engine, the worker registry and the metrics history call; the
contract tests (tests/contract) hold every backend to it. `WorkerLog` and `RollupStore`
are narrow views of the same contract for code that needs only that part (and for its
fakes in tests).

The rules:

- Durability. Writes are queued and committed in groups (broker.storage.groupcommit): a
  write is durable once the group commit that carries it has committed, and not before.
  `insert_tasks`, `upsert_pool`, `record_config_change` and `record_file_settings` return
  only then; `save`,
  `save_sticky`, `save_runtime`, `save_rollups` and the worker log only queue. `durable()`
  is a future for everything queued before the call, but for the saves of tasks a worker
  holds (assigned or running): those wait for the commit after next, so that a task that
  ends by then has only its end written. `flush()` awaits everything. (The memory
  backend commits to memory: there, "durable" means visible, in order, not on disk.)
- Snapshots. A write captures its argument as it is at the moment of the call: `save(task)`
  stores the task's state then, so changing the task in place afterwards changes nothing
  stored unless it is saved again (likewise the statistics given to `save_runtime`, and
  the arm statistics given to `save_arm_stats`, and the tasks given to `insert_tasks` as its
  coroutine starts). Reads hand out copies:
  changing what a read returned changes nothing stored.
- Ordering. The last save of a task wins. Reads see every write queued before them (they
  wait for it, held tasks' saves included). Within one commit, inserts come before saves,
  so a save queued right after an insert lands on the inserted task; a save of a task
  never inserted is ignored. A heartbeat, a sticky key, run times and rollups ride along
  with the next commit rather than causing one.
- Errors. A commit is all or nothing. If it fails, every caller waiting for it (an
  `insert_tasks`, `upsert_pool` or `record_config_change`, a `durable()` future) gets a
  StorageError whose cause is the backend's error, its writes are lost (including the saves
  that rode along), and the next commit starts afresh. After `close()`, reads and writes
  raise Unavailable. If the writer stops without `close()` (cancelled, or broken), writes
  are still queued but waiting for them raises Unavailable at once; `close()` then commits
  them itself.
- Retention. `purge_tasks` deletes only finished (terminal) tasks, in bounded batches.
- Lifecycle. A backend's `open()` returns a store ready to use. `run()` is its writer loop:
  the composition root runs it in its TaskGroup, so that the writer's failure surfaces there
  and cancelling the group stops it; without `run()`, the first write starts the writer as a
  task of the store's own. `close()` commits what is queued, stops the writer and releases
  the backend; it is idempotent, and `async with` closes too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

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


def check_purge(states: Collection[TaskState], limit: int) -> frozenset[TaskState]:
    """The states a purge may delete, checked: terminal ones only, at least one; and its
    limit, at least 1. InvalidArgument otherwise."""
    chosen = frozenset(states)
    if not chosen:
        raise InvalidArgument("a purge needs at least one finished state")
    unfinished = sorted(s.name.lower() for s in chosen if not s.terminal)
    if unfinished:
        raise InvalidArgument(f"only finished tasks are purged, not {', '.join(unfinished)}")
    if limit < 1:
        raise InvalidArgument(f"a purge's limit must be at least 1, got {limit}")
    return chosen


class WorkerLog(Protocol):
    """Where worker connections are recorded: the part of the Store the registry needs."""

    def worker_connected(self, spec: WorkerSpec, at: float) -> None:
        """Queue a worker's registration; a worker that reconnects is connected again."""

    def worker_disconnected(self, worker_id: WorkerId, at: float) -> None:
        """Queue the end of a worker's connection; one never connected is ignored."""


class RollupStore(Protocol):
    """The metrics history's rows: the part of the Store that MetricsHistory needs."""

    def save_rollups(self, rows: Sequence[RollupRow]) -> None:
        """Queue rows for the next commit; each is added to the stored row of its key (pool,
        task type, worker, bucket_s, start), or stored if there is none."""

    async def load_rollups(
        self, pool: str, task_type: str, worker_id: str, since: float, until: float
    ) -> list[RollupRow]:
        """Rows whose bucket overlaps [since, until), by start; an empty pool, task type or
        worker id matches any."""
        ...

    async def compact_rollups(self, before: float, into_bucket_s: int) -> int:
        """Merge the rows narrower than `into_bucket_s` that start before `before` into rows
        `into_bucket_s` wide (added to any stored there); returns how many were merged."""
        ...

    async def delete_rollups(self, before: float) -> int:
        """Delete the rows that start before `before`; returns how many."""
        ...

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""


class Store(WorkerLog, RollupStore, Protocol):
    """Everything the broker keeps: tasks, pools, their audit, what placement learned, the
    worker log and the metrics history. The rules are in this module's docstring."""

    # -- writes ---------------------------------------------------------------------------

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        """Add new tasks, returning once they are committed.

        A duplicate id fails the commit, and so every caller that shares it. Cancelling the
        wait does not withdraw the tasks.
        """

    def save(self, task: Task) -> None:
        """Queue a snapshot of the task's state (everything but its spec) for the next
        commit; await `durable()` when the caller needs it committed."""

    async def upsert_pool(self, pool: PoolConfig) -> None:
        """Create the pool or change its settings, returning once committed."""

    async def record_config_change(self, change: ConfigChange) -> None:
        """Append an audited configuration change, returning once committed."""

    async def save_token(self, token: ApiToken) -> None:
        """Store an API token (its digest, never its secret), replacing the one of its
        name (a revocation); returns once committed."""
        ...

    async def record_file_settings(self, pool: str, settings: Mapping[str, Any]) -> None:
        """Remember the settings the config file last gave `pool` (JSON-ready values by
        key, as `codec.pool_settings` gives them), replacing what was remembered; returns
        once committed. A reload or a restart applies only the keys whose file value
        differs from these."""

    def save_sticky(self, pool: str, key: str, worker_id: WorkerId) -> None:
        """Queue where a sticky key now lives; an empty `worker_id` forgets the key (the
        scheduler evicted it)."""

    def save_runtime(self, key: RuntimeKey, stats: RunStats) -> None:
        """Queue a snapshot of learned run-time statistics."""

    def save_arm_stats(self, pool: str, arms: Sequence[ArmStats]) -> None:
        """Queue a snapshot of how each arm of the pool (its strategy, then the A/B one if
        any) placed, replacing what was kept for the pool: an arm not given is forgotten."""

    def worker_heartbeat(self, worker_id: WorkerId, at: float) -> None:
        """Note a worker's latest heartbeat; one never connected is ignored."""

    def durable(self) -> asyncio.Future[None]:
        """A future that resolves once every write queued before this call is committed,
        or raises the commit's error. Each call gets its own future, so cancelling one
        waiter affects no other."""
        ...

    async def purge_tasks(
        self, pool: str, finished_before: float, states: Collection[TaskState], limit: int
    ) -> dict[TaskState, int]:
        """Delete at most `limit` finished tasks of `pool` in `states` whose `finished_at`
        is before `finished_before`, oldest first, with their payloads, results and
        idempotency keys; how many of each state went.

        It runs in a transaction of its own, after the writes queued before it, and
        returns once that has committed; a save queued later of a deleted task is ignored.
        A task in a state that is not terminal is never deleted: InvalidArgument for such a
        state, for no states, and for a limit below 1. The limit bounds how long one call
        holds the writer; the caller repeats the call for more.
        """
        ...

    # -- reads ----------------------------------------------------------------------------

    async def get_task(self, task_id: TaskId) -> Task | None:
        """The task with this id, or None."""
        ...

    async def get_tasks(self, task_ids: Collection[TaskId]) -> list[Task]:
        """The stored tasks among these ids, in any order: one read for them all."""
        ...

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        """Tasks matching the filter, newest (highest id) first, at most `flt.limit`;
        InvalidArgument for a negative limit."""
        ...

    async def load_unfinished(self) -> list[Task]:
        """Pending, assigned and running tasks in submission (seq) order, for recovery."""
        ...

    async def max_task_id(self) -> TaskId:
        """The highest task id stored, 0 if none; the broker continues from it."""
        ...

    async def max_seq(self) -> int:
        """The highest seq stored, 0 if none; the broker continues from it."""
        ...

    async def count_by_pool_state(self) -> dict[tuple[str, TaskState], int]:
        """How many tasks each pool has in each state; absent keys mean zero."""
        ...

    async def list_pools(self) -> list[PoolConfig]:
        """Every stored pool, by name."""
        ...

    async def find_idempotent(
        self, pool: str, keys: Sequence[str], since: float
    ) -> dict[str, Task]:
        """The earliest task of this pool per idempotency key, created at or after `since`."""
        ...

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        """Audited configuration changes, newest first; of one pool, or of all."""
        ...

    async def load_tokens(self) -> list[ApiToken]:
        """Every stored API token, revoked ones too, by name."""
        ...

    async def load_file_settings(self) -> dict[str, dict[str, Any]]:
        """The settings the config file last gave each pool, by pool (those never
        recorded are absent)."""
        ...

    async def load_sticky(self) -> dict[str, dict[str, WorkerId]]:
        """Where each pool's sticky keys live: pool -> key -> worker id, each pool's keys
        in the order they were last saved, oldest first."""
        ...

    async def load_runtimes(self) -> list[tuple[RuntimeKey, RunStats]]:
        """Every learned run-time statistic."""
        ...

    async def load_arm_stats(self) -> dict[str, list[ArmStats]]:
        """Each pool's arm statistics, in the order they were saved."""
        ...

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """The writer loop: returns once the store is closed, raises if the writer dies;
        cancelling it stops the writer."""

    async def close(self) -> None:
        """Commit what is queued, stop the writer and release the backend. Idempotent;
        raises the last commit's error if it failed."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
