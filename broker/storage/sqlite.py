"""The broker's durable state in one SQLite file, written by group commit.

Writers queue their changes in memory; one background task takes everything queued since
its last commit, writes it in a single transaction and then wakes whoever waits for it. So
thousands of submissions per second cost a few fsyncs, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiosqlite

from broker.clock import Clock, SystemClock
from broker.config import SYNCHRONOUS_MODES
from broker.domain import (
    ANYWHERE,
    ConfigChange,
    Placement,
    PoolConfig,
    PreferredLabel,
    Task,
    TaskError,
    TaskFilter,
    TaskId,
    TaskSpec,
    TaskState,
    WorkerId,
    WorkerSpec,
)
from broker.errors import BrokerError, InvalidArgument, StorageError, Unavailable
from broker.stats import RollupRow, RunStats, RuntimeKey
from broker.storage.codec import (
    pool_limits_from_json,
    pool_limits_json,
    task_options_from_json,
    task_options_json,
)

_log = logging.getLogger("taskbroker.store")

_BUSY_TIMEOUT_MS: Final = 5000

# Step i moves the schema from version i to i + 1 (kept in PRAGMA user_version). A step
# that has shipped never changes; a change is a new step.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            payload BLOB NOT NULL,
            priority INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            state INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            worker_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            assigned_at REAL NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL,
            result BLOB NOT NULL,
            error_type TEXT,
            error_message TEXT,
            error_traceback TEXT
        )
        """,
        # Each index costs every insert and state change, so there are few. Listings walk
        # one (pool, state) or (state) range per state, newest first (see list_tasks);
        # tasks_state also finds the unfinished tasks at start-up, and tasks_pool_state
        # covers counting per (pool, state).
        "CREATE INDEX tasks_pool_state ON tasks (pool, state, id)",
        "CREATE INDEX tasks_state ON tasks (state, id)",
        "CREATE INDEX tasks_type ON tasks (task_type, id)",
        """
        CREATE TABLE pools (
            name TEXT PRIMARY KEY,
            strategy TEXT NOT NULL,
            created_at REAL NOT NULL
        )
        """,
        """
        CREATE TABLE workers (
            worker_id TEXT PRIMARY KEY,
            pool TEXT NOT NULL,
            labels TEXT NOT NULL,
            capacity INTEGER NOT NULL,
            task_types TEXT NOT NULL,
            sdk_version TEXT NOT NULL,
            connected_at REAL NOT NULL,
            disconnected_at REAL,
            last_heartbeat REAL NOT NULL
        )
        """,
    ),
    (
        # Placement hints (JSON, NULL for none) and the scheduler's explanation.
        "ALTER TABLE tasks ADD COLUMN placement TEXT",
        "ALTER TABLE tasks ADD COLUMN placement_note TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tasks ADD COLUMN unschedulable INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # Pool settings beyond the strategy; what placement learns and must not forget.
        "ALTER TABLE pools ADD COLUMN ab_strategy TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE pools ADD COLUMN ab_percent INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE pools ADD COLUMN sticky_timeout_s REAL NOT NULL DEFAULT 5.0",
        """
        CREATE TABLE sticky_keys (
            pool TEXT NOT NULL,
            key TEXT NOT NULL,
            worker_id TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (pool, key)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE runtimes (
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            worker_class TEXT NOT NULL,
            count INTEGER NOT NULL,
            mean_s REAL NOT NULL,
            m2 REAL NOT NULL,
            abs_error_s REAL NOT NULL,
            predicted INTEGER NOT NULL,
            PRIMARY KEY (pool, task_type, worker_class)
        ) WITHOUT ROWID
        """,
    ),
    (
        # Resilience: a task's retry policy, deadlines and keys (JSON, NULL for none), the
        # time a delayed task waits for, idempotency keys, and pools' limits (JSON).
        "ALTER TABLE tasks ADD COLUMN options TEXT",
        "ALTER TABLE tasks ADD COLUMN not_before REAL NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN idempotency_key TEXT",
        "CREATE INDEX tasks_idempotency ON tasks (pool, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
        "ALTER TABLE pools ADD COLUMN limits TEXT",
    ),
    (
        # Operations: the metrics history (per-minute rollups, coarser once compacted) and
        # the audit of configuration changes.
        """
        CREATE TABLE metric_rollups (
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            worker_id TEXT NOT NULL,
            start REAL NOT NULL,
            bucket_s INTEGER NOT NULL,
            submitted INTEGER NOT NULL,
            completed INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            wait_count INTEGER NOT NULL,
            wait_sum REAL NOT NULL,
            run_count INTEGER NOT NULL,
            run_sum REAL NOT NULL,
            wait_hist TEXT NOT NULL,
            run_hist TEXT NOT NULL,
            PRIMARY KEY (pool, task_type, worker_id, bucket_s, start)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX metric_rollups_start ON metric_rollups (bucket_s, start)",
        """
        CREATE TABLE config_audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            who TEXT NOT NULL,
            source TEXT NOT NULL,
            pool TEXT NOT NULL,
            before TEXT NOT NULL,
            after TEXT NOT NULL,
            fields TEXT NOT NULL
        )
        """,
        "CREATE INDEX config_audit_pool ON config_audit (pool, id)",
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

_UNFINISHED: Final = tuple(state for state in TaskState if not state.terminal)

_TASK_COLUMNS: Final = (
    "id, pool, task_type, payload, priority, seq, state, attempts, worker_id, created_at,"
    " assigned_at, started_at, finished_at, result, error_type, error_message, error_traceback,"
    " placement_note, unschedulable, not_before, placement, options, idempotency_key"
)
_SELECT_TASKS: Final = f"SELECT {_TASK_COLUMNS} FROM tasks"
_INSERT_TASK: Final = f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES ({', '.join('?' * 23)})"
_UPDATE_TASK: Final = """
    UPDATE tasks SET seq = ?, state = ?, attempts = ?, worker_id = ?, created_at = ?,
        assigned_at = ?, started_at = ?, finished_at = ?, result = ?,
        error_type = ?, error_message = ?, error_traceback = ?,
        placement_note = ?, unschedulable = ?, not_before = ?
    WHERE id = ?
"""
_UPSERT_POOL: Final = """
    INSERT INTO pools (name, strategy, created_at, ab_strategy, ab_percent, sticky_timeout_s,
        limits)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET strategy = excluded.strategy,
        ab_strategy = excluded.ab_strategy, ab_percent = excluded.ab_percent,
        sticky_timeout_s = excluded.sticky_timeout_s, limits = excluded.limits
"""
_UPSERT_STICKY: Final = """
    INSERT OR REPLACE INTO sticky_keys (pool, key, worker_id, updated_at) VALUES (?, ?, ?, ?)
"""
_UPSERT_RUNTIME: Final = """
    INSERT OR REPLACE INTO runtimes
        (pool, task_type, worker_class, count, mean_s, m2, abs_error_s, predicted)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_CONNECT_WORKER: Final = """
    INSERT OR REPLACE INTO workers (worker_id, pool, labels, capacity, task_types, sdk_version,
        connected_at, disconnected_at, last_heartbeat)
    VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)
"""
_HEARTBEAT_WORKER: Final = "UPDATE workers SET last_heartbeat = ? WHERE worker_id = ?"
_DISCONNECT_WORKER: Final = "UPDATE workers SET disconnected_at = ? WHERE worker_id = ?"

_Row = tuple[object, ...]

# -- metrics history (SQL) ------------------------------------------------------------------
# A rollup row is only ever added to: a row for a key that is stored already adds its
# counts, sums and histograms (JSON arrays, added element by element) to the stored ones.

_ROLLUP_COLUMNS: Final = (
    "pool, task_type, worker_id, start, bucket_s, submitted, completed, failed,"
    " wait_count, wait_sum, run_count, run_sum, wait_hist, run_hist"
)


def _hist_sum_sql(column: str) -> str:
    """The stored JSON array `column` plus the incoming one, element by element; the
    shorter counts as zeros beyond its end."""
    old, new = f"metric_rollups.{column}", f"excluded.{column}"
    return (
        f"(SELECT json_group_array(coalesce(json_extract({old}, '$[' || e.key || ']'), 0)"
        f" + coalesce(json_extract({new}, '$[' || e.key || ']'), 0))"
        f" FROM json_each(CASE WHEN json_array_length({new}) > json_array_length({old})"
        f" THEN {new} ELSE {old} END) AS e)"
    )


_ADD_TO_ROLLUP: Final = (
    "ON CONFLICT (pool, task_type, worker_id, bucket_s, start) DO UPDATE SET "
    + ", ".join(
        f"{column} = {column} + excluded.{column}"
        for column in (
            "submitted",
            "completed",
            "failed",
            "wait_count",
            "wait_sum",
            "run_count",
            "run_sum",
        )
    )
    + f", wait_hist = {_hist_sum_sql('wait_hist')}, run_hist = {_hist_sum_sql('run_hist')}"
)
_UPSERT_ROLLUP: Final = (
    f"INSERT INTO metric_rollups ({_ROLLUP_COLUMNS}) VALUES ({', '.join('?' * 14)}) "
    + _ADD_TO_ROLLUP
)
# SQLite reads the whole SELECT before inserting when a table is copied into itself. The
# WHERE clause also keeps ON CONFLICT from parsing as a join's ON.
_COMPACT_ROLLUPS: Final = (
    f"INSERT INTO metric_rollups ({_ROLLUP_COLUMNS})"
    " SELECT pool, task_type, worker_id, CAST(start / :into AS INTEGER) * :into, :into,"
    " submitted, completed, failed, wait_count, wait_sum, run_count, run_sum,"
    " wait_hist, run_hist"
    " FROM metric_rollups WHERE bucket_s < :into AND start < :before ORDER BY start "
    + _ADD_TO_ROLLUP
)
_DELETE_COMPACTED: Final = "DELETE FROM metric_rollups WHERE bucket_s < :into AND start < :before"


class SQLiteStore:
    """Tasks, pools and workers in one SQLite file (WAL), written by group commit.

    Writes are queued (`save`, `worker_*`) or queued and awaited (`insert_tasks`,
    `upsert_pool`, `durable`); a background writer commits each accumulated batch in one
    transaction. Reads first wait for the writes queued before them.
    """

    def __init__(self, db: aiosqlite.Connection, clock: Clock) -> None:
        """Wrap an open, migrated connection; call `SQLiteStore.open` instead."""
        self._db = db
        self._clock = clock
        # Queued for the next commit. Saves, pools and worker events keep only the latest
        # per key; inserts keep them all.
        self._inserts: list[_Row] = []
        self._saves: dict[TaskId, Task] = {}
        self._pools: dict[str, _Row] = {}
        self._sticky: dict[tuple[str, str], _Row] = {}
        self._runtimes: dict[RuntimeKey, _Row] = {}
        self._rollups: list[_Row] = []  # metrics history: each added to its stored row
        self._connects: dict[WorkerId, _Row] = {}
        self._heartbeats: dict[WorkerId, float] = {}
        self._disconnects: dict[WorkerId, float] = {}
        self._waiters: list[asyncio.Future[None]] = []  # resolved by the next commit
        self._in_flight: list[asyncio.Future[None]] | None = None  # by the running one
        self._wakeup = asyncio.Event()
        self._transaction = asyncio.Lock()  # keeps reads out of the writer's transaction
        self._closing = False
        self._closed = asyncio.Event()
        self._commits = 0
        self._writer = asyncio.create_task(self._write_loop(), name="taskbroker-store-writer")

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        clock: Clock | None = None,
    ) -> SQLiteStore:
        """Open (creating or migrating) the database at `path` and start the writer.

        `synchronous` is FULL (a commit survives power loss) or NORMAL (it survives a crash
        of the process). Raises BrokerError if the file's schema is newer than this code.
        """
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        db = await aiosqlite.connect(path, isolation_level=None)  # we issue BEGIN ourselves
        try:
            async with db.execute("PRAGMA journal_mode = WAL") as cursor:
                row = await cursor.fetchone()
            if row is None or row[0] != "wal":
                _log.warning("%s: journal_mode is %s, not wal; commits will be slower", path, row)
            await db.execute(f"PRAGMA synchronous = {synchronous}")
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await _migrate(db, path)
        except BaseException:
            await db.close()
            raise
        return cls(db, clock or SystemClock())

    @property
    def commits(self) -> int:
        """How many transactions the writer has committed; lets tests see the grouping."""
        return self._commits

    # -- writes ---------------------------------------------------------------------------

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        """Add new tasks, returning once they are committed.

        Concurrent callers share a transaction, so a failing batch (say, a duplicate id)
        fails every caller in it. Cancelling the wait does not withdraw the tasks.
        """
        self._check_writable()
        if tasks:
            self._inserts.extend(_insert_row(task) for task in tasks)
            await self.durable()

    def save(self, task: Task) -> None:
        """Queue the task's current state (everything but its spec) for the next commit.

        Only the last save of a task before a commit is written. The task must have been
        inserted already; await `durable()` when the caller needs the write to be on disk.
        """
        self._check_writable()
        self._saves[task.id] = task
        self._wakeup.set()

    async def upsert_pool(self, pool: PoolConfig) -> None:
        """Create the pool or change its strategy, returning once committed."""
        self._check_writable()
        self._pools[pool.name] = (
            pool.name,
            pool.strategy,
            self._clock.now(),
            pool.ab_strategy,
            pool.ab_percent,
            pool.sticky_timeout_s,
            pool_limits_json(pool),
        )
        await self.durable()

    # -- config audit -----------------------------------------------------------------------

    async def record_config_change(self, change: ConfigChange) -> None:
        """Append an audited configuration change, returning once it is committed."""
        self._check_writable()
        with contextlib.suppress(Exception):
            await self.durable()  # after the pool change it records
        try:
            async with self._transaction:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    await self._db.execute(
                        "INSERT INTO config_audit (at, who, source, pool, before, after, fields)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            change.at,
                            change.who,
                            change.source,
                            change.pool,
                            change.before,
                            change.after,
                            json.dumps(list(change.fields)),
                        ),
                    )
                    await self._db.commit()
                except BaseException:
                    await self._rollback()
                    raise
        except sqlite3.Error as exc:
            raise StorageError(f"the task store could not record a config change: {exc}") from exc

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        """Audited configuration changes, newest first; of one pool, or of all."""
        where, params = ("WHERE pool = ?", [pool]) if pool else ("", [])
        rows = await self._fetch(
            "SELECT at, who, source, pool, before, after, fields FROM config_audit "
            f"{where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [
            ConfigChange(
                at=at,
                who=who,
                source=source,
                pool=pool_name,
                before=before,
                after=after,
                fields=tuple(json.loads(fields)),
            )
            for at, who, source, pool_name, before, after, fields in rows
        ]

    def save_sticky(self, pool: str, key: str, worker_id: WorkerId) -> None:
        """Queue where a sticky key now lives, for the next commit."""
        self._check_writable()
        self._sticky[(pool, key)] = (pool, key, worker_id, self._clock.now())

    def save_runtime(self, key: RuntimeKey, stats: RunStats) -> None:
        """Queue a snapshot of learned run-time statistics, for the next commit."""
        self._check_writable()
        self._runtimes[key] = (
            key.pool,
            key.task_type,
            key.worker_class,
            stats.count,
            stats.mean_s,
            stats.m2,
            stats.abs_error_s,
            stats.predicted,
        )

    async def load_sticky(self) -> dict[str, dict[str, WorkerId]]:
        """Where each pool's sticky keys live: pool -> key -> worker id."""
        rows = await self._fetch("SELECT pool, key, worker_id FROM sticky_keys")
        sticky: dict[str, dict[str, WorkerId]] = {}
        for pool, key, worker_id in rows:
            sticky.setdefault(pool, {})[key] = worker_id
        return sticky

    async def load_runtimes(self) -> list[tuple[RuntimeKey, RunStats]]:
        """Every learned run-time statistic."""
        rows = await self._fetch(
            "SELECT pool, task_type, worker_class, count, mean_s, m2, abs_error_s, predicted"
            " FROM runtimes"
        )
        return [
            (
                RuntimeKey(pool, task_type, worker_class),
                RunStats(count, mean_s, m2, abs_error_s, predicted),
            )
            for pool, task_type, worker_class, count, mean_s, m2, abs_error_s, predicted in rows
        ]

    def worker_connected(self, spec: WorkerSpec, at: float) -> None:
        """Queue a worker's registration; a worker that reconnects is connected again."""
        self._check_writable()
        self._connects[spec.worker_id] = (
            spec.worker_id,
            spec.pool,
            json.dumps(dict(spec.labels), sort_keys=True),
            spec.capacity,
            json.dumps(sorted(spec.task_types)),
            spec.sdk_version,
            at,
            at,
        )
        # Connects are written before disconnects, so an earlier disconnect must not follow.
        self._disconnects.pop(spec.worker_id, None)
        self._wakeup.set()

    def worker_heartbeat(self, worker_id: WorkerId, at: float) -> None:
        """Note a worker's latest heartbeat.

        It rides along with the next commit rather than causing one: a heartbeat is worth a
        row update, not an fsync.
        """
        self._check_writable()
        self._heartbeats[worker_id] = at

    def worker_disconnected(self, worker_id: WorkerId, at: float) -> None:
        """Queue the end of a worker's connection."""
        self._check_writable()
        self._disconnects[worker_id] = at
        self._wakeup.set()

    def durable(self) -> asyncio.Future[None]:
        """A future that resolves once every write queued before this call is committed.

        It raises the commit's error if that failed. Each call gets its own future, so
        cancelling one waiter affects no other.
        """
        future = asyncio.get_running_loop().create_future()
        if self._has_queued():
            self._waiters.append(future)
            self._wakeup.set()
        elif self._in_flight is not None:
            self._in_flight.append(future)
        else:
            future.set_result(None)
        return future

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        await self.durable()

    # -- metrics history --------------------------------------------------------------------

    def save_rollups(self, rows: Sequence[RollupRow]) -> None:
        """Queue metrics-history rows for the next commit; each is added to the stored row
        of its key (pool, task type, worker, bucket_s, start), or stored if there is none."""
        self._check_writable()
        self._rollups.extend(_rollup_row(row) for row in rows)

    async def load_rollups(
        self, pool: str, task_type: str, worker_id: str, since: float, until: float
    ) -> list[RollupRow]:
        """Rows whose bucket overlaps [since, until), by start; an empty pool, task type or
        worker id matches any."""
        clauses = ["start < ?", "start + bucket_s > ?"]
        params: list[object] = [until, since]
        for column, value in (("pool", pool), ("task_type", task_type), ("worker_id", worker_id)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        rows = await self._fetch(
            f"SELECT {_ROLLUP_COLUMNS} FROM metric_rollups WHERE {' AND '.join(clauses)}"
            " ORDER BY start, pool, task_type, worker_id, bucket_s",
            params,
        )
        return [_rollup_from_row(row) for row in rows]

    async def compact_rollups(self, before: float, into_bucket_s: int) -> int:
        """Merge the rows narrower than `into_bucket_s` that start before `before` into rows
        `into_bucket_s` wide (added to any stored there); returns how many were merged."""
        params: dict[str, object] = {"into": into_bucket_s, "before": before}
        return await self._rollup_transaction(
            [(_COMPACT_ROLLUPS, params), (_DELETE_COMPACTED, params)]
        )

    async def delete_rollups(self, before: float) -> int:
        """Delete the rows that start before `before`; returns how many."""
        return await self._rollup_transaction(
            [("DELETE FROM metric_rollups WHERE start < :before", {"before": before})]
        )

    async def _rollup_transaction(self, steps: Sequence[tuple[str, dict[str, object]]]) -> int:
        """Run the statements in one transaction of their own; the last one's row count."""
        self._check_writable()
        changed = 0
        try:
            async with self._transaction:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, params in steps:
                        async with self._db.execute(sql, params) as cursor:
                            changed = cursor.rowcount
                    await self._db.commit()
                except BaseException:
                    await self._rollback()
                    raise
        except sqlite3.Error as exc:
            raise StorageError(
                f"the task store could not change the metrics history: {exc}"
            ) from exc
        return changed

    # -- reads ----------------------------------------------------------------------------

    async def get_task(self, task_id: TaskId) -> Task | None:
        """The task with this id, or None."""
        rows = await self._fetch(f"{_SELECT_TASKS} WHERE id = ?", (task_id,))
        return _task_from_row(rows[0]) if rows else None

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        """Tasks matching the filter, newest (highest id) first, at most `flt.limit`."""
        if flt.limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {flt.limit}")
        sql, params = _list_query(flt)
        return [_task_from_row(row) for row in await self._fetch(sql, params)]

    async def load_unfinished(self) -> list[Task]:
        """Pending, assigned and running tasks in submission (seq) order, for recovery."""
        marks = ", ".join("?" * len(_UNFINISHED))
        rows = await self._fetch(
            f"{_SELECT_TASKS} WHERE state IN ({marks}) ORDER BY seq", [*map(int, _UNFINISHED)]
        )
        return [_task_from_row(row) for row in rows]

    async def max_task_id(self) -> TaskId:
        """The highest task id stored, 0 if none; the broker continues from it."""
        rows = await self._fetch("SELECT max(id) FROM tasks")
        return int(rows[0][0] or 0)

    async def max_seq(self) -> int:
        """The highest seq stored, 0 if none; the broker continues from it.

        This scans the table (no index on seq for finished tasks); it is meant for start-up.
        """
        rows = await self._fetch("SELECT max(seq) FROM tasks")
        return int(rows[0][0] or 0)

    async def count_by_pool_state(self) -> dict[tuple[str, TaskState], int]:
        """How many tasks each pool has in each state; absent keys mean zero."""
        rows = await self._fetch("SELECT pool, state, count(*) FROM tasks GROUP BY pool, state")
        return {(pool, TaskState(state)): count for pool, state, count in rows}

    async def list_pools(self) -> list[PoolConfig]:
        """Every stored pool, by name."""
        rows = await self._fetch(
            "SELECT name, strategy, ab_strategy, ab_percent, sticky_timeout_s, limits"
            " FROM pools ORDER BY name"
        )
        return [
            pool_limits_from_json(
                PoolConfig(
                    name=name,
                    strategy=strategy,
                    ab_strategy=ab_strategy,
                    ab_percent=ab_percent,
                    sticky_timeout_s=sticky_timeout_s,
                ),
                limits,
            )
            for name, strategy, ab_strategy, ab_percent, sticky_timeout_s, limits in rows
        ]

    async def find_idempotent(
        self, pool: str, keys: Sequence[str], since: float
    ) -> dict[str, Task]:
        """The earliest task of this pool per idempotency key, created at or after `since`."""
        found: dict[str, Task] = {}
        unique = sorted(set(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = await self._fetch(
                f"{_SELECT_TASKS} WHERE pool = ? AND idempotency_key IN ({marks})"
                " AND created_at >= ? ORDER BY id",
                [pool, *chunk, since],
            )
            for row in rows:
                task = _task_from_row(row)
                found.setdefault(task.spec.idempotency_key, task)
        return found

    # -- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit everything still queued, stop the writer and close the file.

        Idempotent. Raises the commit's error if the last writes could not be committed.
        """
        if self._closing:
            await self._closed.wait()
            return
        final = self.durable()
        self._closing = True
        self._wakeup.set()
        try:
            await self._writer
            await final
        finally:
            await self._db.close()
            self._closed.set()

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

    def _check_writable(self) -> None:
        if self._closing:
            raise Unavailable("the task store is closed")

    def _has_queued(self) -> bool:
        return bool(
            self._inserts
            or self._saves
            or self._pools
            or self._sticky
            or self._runtimes
            or self._rollups
            or self._connects
            or self._heartbeats
            or self._disconnects
        )

    async def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        if self._closed.is_set():
            raise Unavailable("the task store is closed")
        # A failed commit is news for its own waiters; a read only needs it settled.
        with contextlib.suppress(Exception):
            await self.durable()
        async with self._transaction:
            return list(await self._db.execute_fetchall(sql, params))

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                await self._commit_queued()
                if self._closing and not self._has_queued():
                    return
        finally:
            # Reached with waiters only if cancelled: nobody may be left waiting forever.
            stopped = Unavailable("the task store's writer stopped")
            for future in [*self._waiters, *(self._in_flight or ())]:
                if not future.done():
                    future.set_exception(stopped)

    async def _commit_queued(self) -> None:
        """Write everything queued so far in one transaction, then settle its waiters."""
        inserts, self._inserts = self._inserts, []
        saves, self._saves = self._saves, {}
        pools, self._pools = self._pools, {}
        sticky, self._sticky = self._sticky, {}
        runtimes, self._runtimes = self._runtimes, {}
        rollups, self._rollups = self._rollups, []
        connects, self._connects = self._connects, {}
        heartbeats, self._heartbeats = self._heartbeats, {}
        disconnects, self._disconnects = self._disconnects, {}
        waiters, self._waiters = self._waiters, []
        self._in_flight = waiters  # durable() joins this batch while it is committed
        error: Exception | None = None
        if (
            inserts
            or saves
            or pools
            or sticky
            or runtimes
            or rollups
            or connects
            or heartbeats
            or disconnects
        ):
            try:
                async with self._transaction:
                    await self._db.execute("BEGIN IMMEDIATE")
                    try:
                        # Inserts first: a save queued after an insert must land on its row.
                        if inserts:
                            await self._db.executemany(_INSERT_TASK, inserts)
                        if saves:
                            await self._db.executemany(
                                _UPDATE_TASK, [_update_row(task) for task in saves.values()]
                            )
                        if pools:
                            await self._db.executemany(_UPSERT_POOL, pools.values())
                        if sticky:
                            await self._db.executemany(_UPSERT_STICKY, sticky.values())
                        if runtimes:
                            await self._db.executemany(_UPSERT_RUNTIME, runtimes.values())
                        if rollups:
                            await self._db.executemany(_UPSERT_ROLLUP, rollups)
                        if connects:
                            await self._db.executemany(_CONNECT_WORKER, connects.values())
                        if heartbeats:
                            await self._db.executemany(
                                _HEARTBEAT_WORKER, [(at, w) for w, at in heartbeats.items()]
                            )
                        if disconnects:
                            await self._db.executemany(
                                _DISCONNECT_WORKER, [(at, w) for w, at in disconnects.items()]
                            )
                        await self._db.commit()
                    except BaseException:
                        await self._rollback()
                        raise
                self._commits += 1
            except Exception as exc:
                _log.exception(
                    "commit failed; lost %d inserted and %d saved tasks, %d waiters told",
                    len(inserts),
                    len(saves),
                    len(waiters),
                )
                error = StorageError(f"the task store could not commit: {exc}")
                error.__cause__ = exc
        for future in waiters:
            if future.done():  # its caller stopped waiting
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        self._in_flight = None

    async def _rollback(self) -> None:
        # After an I/O error SQLite may have rolled back already, or may fail again; the
        # error that matters is the one that made us roll back.
        try:
            await self._db.rollback()
        except sqlite3.Error:
            _log.exception("rollback failed")


async def _migrate(db: aiosqlite.Connection, path: str | Path) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction, or refuse a newer one."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row is not None else 0
        if version > SCHEMA_VERSION:
            raise BrokerError(
                f"{path} has schema version {version}, but this taskbroker knows only up to"
                f" {SCHEMA_VERSION}; upgrade taskbroker or point db_path elsewhere"
            )
        for step in _MIGRATIONS[version:]:
            for statement in step:
                await db.execute(statement)
        if version < SCHEMA_VERSION:
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            _log.info("%s: migrated schema from version %d to %d", path, version, SCHEMA_VERSION)
        await db.commit()
    except BaseException:
        await db.rollback()
        raise


def _list_query(flt: TaskFilter) -> tuple[str, list[object]]:
    """The SQL and parameters for list_tasks.

    With a pool or several states, it asks for each state separately and merges: every
    part walks one index range newest first, so SQLite merges them and stops at the limit
    instead of sorting every match (a pool's tasks in all states, say).
    """
    clauses: list[str] = []  # every part's conditions besides the state
    params: list[object] = []
    if flt.pool:
        clauses.append("pool = ?")
        params.append(flt.pool)
    if flt.task_type:
        clauses.append("task_type = ?")
        params.append(flt.task_type)
    if flt.before_id is not None:
        clauses.append("id < ?")
        params.append(flt.before_id)
    if not flt.states and not flt.pool:
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return f"{_SELECT_TASKS}{where} ORDER BY id DESC LIMIT ?", [*params, flt.limit]
    states = sorted(flt.states) if flt.states else list(TaskState)
    part = f"{_SELECT_TASKS} WHERE {' AND '.join(['state = ?', *clauses])}"
    part_params: list[object] = []
    for state in states:
        part_params += [int(state), *params]
    sql = f"{' UNION ALL '.join([part] * len(states))} ORDER BY id DESC LIMIT ?"
    return sql, [*part_params, flt.limit]


def _insert_row(task: Task) -> _Row:
    spec = task.spec
    return (
        task.id,
        spec.pool,
        spec.task_type,
        spec.payload,
        spec.priority,
        *_state_fields(task),
        _placement_json(spec.placement),
        task_options_json(spec),
        spec.idempotency_key or None,
    )


def _update_row(task: Task) -> _Row:
    return (*_state_fields(task), task.id)


def _state_fields(task: Task) -> _Row:
    """The columns a save rewrites, in _UPDATE_TASK's order."""
    error = task.error
    return (
        task.seq,
        int(task.state),
        task.attempts,
        task.worker_id,
        task.created_at,
        task.assigned_at,
        task.started_at,
        task.finished_at,
        task.result,
        None if error is None else error.type,
        None if error is None else error.message,
        None if error is None else error.traceback,
        task.placement_note,
        int(task.unschedulable),
        task.not_before,
    )


def _placement_json(placement: Placement) -> str | None:
    if placement == ANYWHERE:
        return None
    return json.dumps(
        {
            "required_labels": dict(placement.required_labels),
            "preferred_labels": [[p.key, p.value, p.weight] for p in placement.preferred_labels],
            "anti_affinity_group": placement.anti_affinity_group,
            "anti_affinity_soft": placement.anti_affinity_soft,
            "sticky_key": placement.sticky_key,
            "routing_key": placement.routing_key,
        },
        separators=(",", ":"),
    )


def _placement_from_json(text: str | None) -> Placement:
    if text is None:
        return ANYWHERE
    data = json.loads(text)
    return Placement(
        required_labels=data["required_labels"],
        preferred_labels=tuple(PreferredLabel(k, v, w) for k, v, w in data["preferred_labels"]),
        anti_affinity_group=data["anti_affinity_group"],
        anti_affinity_soft=data["anti_affinity_soft"],
        sticky_key=data.get("sticky_key", ""),
        routing_key=data.get("routing_key", ""),
    )


def _task_from_row(row: Sequence[Any]) -> Task:
    (
        task_id,
        pool,
        task_type,
        payload,
        priority,
        seq,
        state,
        attempts,
        worker_id,
        created_at,
        assigned_at,
        started_at,
        finished_at,
        result,
        error_type,
        error_message,
        error_traceback,
        placement_note,
        unschedulable,
        not_before,
        placement,
        options,
        _idempotency_key,
    ) = row
    return Task(
        id=task_id,
        spec=task_options_from_json(
            TaskSpec(
                task_type=task_type,
                payload=payload,
                priority=priority,
                pool=pool,
                placement=_placement_from_json(placement),
            ),
            options,
        ),
        state=TaskState(state),
        seq=seq,
        attempts=attempts,
        worker_id=worker_id,
        created_at=created_at,
        assigned_at=assigned_at,
        started_at=started_at,
        finished_at=finished_at,
        result=result,
        error=None
        if error_type is None
        else TaskError(type=error_type, message=error_message, traceback=error_traceback),
        placement_note=placement_note,
        unschedulable=bool(unschedulable),
        not_before=not_before,
    )


# -- metrics history (rows) ----------------------------------------------------------------


def _rollup_row(row: RollupRow) -> _Row:
    return (
        row.pool,
        row.task_type,
        row.worker_id,
        row.start,
        row.bucket_s,
        row.submitted,
        row.completed,
        row.failed,
        row.wait_count,
        row.wait_sum,
        row.run_count,
        row.run_sum,
        json.dumps(row.wait_hist, separators=(",", ":")),
        json.dumps(row.run_hist, separators=(",", ":")),
    )


def _rollup_from_row(row: Sequence[Any]) -> RollupRow:
    (pool, task_type, worker_id, start, bucket_s, submitted, completed, failed) = row[:8]
    (wait_count, wait_sum, run_count, run_sum, wait_hist, run_hist) = row[8:]
    return RollupRow(
        pool=pool,
        task_type=task_type,
        worker_id=worker_id,
        start=start,
        bucket_s=bucket_s,
        submitted=submitted,
        completed=completed,
        failed=failed,
        wait_count=wait_count,
        wait_sum=wait_sum,
        run_count=run_count,
        run_sum=run_sum,
        wait_hist=tuple(json.loads(wait_hist)),
        run_hist=tuple(json.loads(run_hist)),
    )
