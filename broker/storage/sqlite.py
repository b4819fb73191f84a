"""The broker's durable state in one SQLite file (WAL), written by group commit.

`SQLiteStore` opens the file (creating or migrating the schema: sqlite_schema) and answers
the reads; its writes are queued by the group commit (broker.storage.groupcommit), which
hands each batch to `_SQLiteWriter`, the one place that writes them in SQL. Rows are made
and read in sqlite_rows.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import operator
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite

from broker.clock import Clock, SystemClock
from broker.domain import (
    ConfigChange,
    PoolConfig,
    Task,
    TaskFilter,
    TaskId,
    TaskState,
)
from broker.errors import InvalidArgument, StorageError
from broker.stats import RollupRow
from broker.storage.contract import check_purge
from broker.storage.groupcommit import GroupCommit, WriteBatch
from broker.storage.lockfile import StoreLock
from broker.storage.sqlite_rows import (
    ARM_STATS_COLUMNS,
    CONFIG_CHANGE_COLUMNS,
    POOL_COLUMNS,
    ROLLUP_COLUMNS,
    RUNTIME_COLUMNS,
    SELECT_TASKS,
    TASK_COLUMNS,
    Row,
    SharedReads,
    arm_stats_rows,
    config_change_from_row,
    config_change_row,
    connect_row,
    insert_row,
    pool_from_row,
    pool_row,
    rollup_from_row,
    rollup_row,
    runtime_row,
    task_from_row,
    token_row,
    update_row,
)
from broker.storage.sqlite_schema import TERMINAL_STATES_SQL, migrate
from broker.store_url import SYNCHRONOUS_MODES

_log = logging.getLogger("taskbroker.store")
_T = TypeVar("_T")

# FULL: a commit survives power loss; NORMAL: it survives a crash of the process.
_BUSY_TIMEOUT_MS: Final = 5000

_UNFINISHED: Final = tuple(state for state in TaskState if not state.terminal)
_IDS_PER_READ: Final = 500  # ids in one SELECT of get_tasks (some builds allow 999 parameters)

# -- what a commit writes ------------------------------------------------------------------

_TASK_WIDTH: Final = len(TASK_COLUMNS.split(", "))  # the columns of an inserted row
_INSERT_TASK: Final = f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({', '.join('?' * _TASK_WIDTH)})"
# What a save rewrites, in update_row's order (the id follows).
_SAVED_COLUMNS: Final = (
    "seq",
    "state",
    "attempts",
    "worker_id",
    "created_at",
    "assigned_at",
    "started_at",
    "finished_at",
    "result",
    "error_type",
    "error_message",
    "error_traceback",
    "placement_note",
    "unschedulable",
    "not_before",
    "result_content_type",
)
_UPDATE_TASK: Final = (
    f"UPDATE tasks SET {', '.join(f'{column} = ?' for column in _SAVED_COLUMNS)} WHERE id = ?"
)

# Tasks are inserted and saved by statements that write many rows each. The module sqlite3
# lets go of the GIL around every step into SQLite, and `executemany` steps once per row:
# each row then waits for the GIL again, for as long as the event loop's thread keeps it
# (up to the interpreter's switch interval, 5 ms). Under load, commits of 1,000 rows took
# four times their CPU time that way. A batch is written instead by statements of these
# many rows, largest first (1,000 rows: six statements), each stepping once; their texts
# are few, so each is prepared once. They need UPDATE ... FROM (SQLite 3.33) and room for
# their parameters; without them, `executemany` it is.
_STATEMENT_ROWS: Final = tuple(2**i for i in range(10, -1, -1))  # 1,024, 512, ..., 1
# The most bytes of payloads, results and tracebacks one many-row statement binds (a
# bigger row goes alone): SQLite copies what is bound, and keeps the copies with the
# prepared statement until it runs again, so big rows would be held twice, and after.
_STATEMENT_BYTES: Final = 256 * 1024
_MULTI_ROW_SQLITE: Final = sqlite3.sqlite_version_info >= (3, 33, 0)
_SAVE_WIDTH: Final = len(_SAVED_COLUMNS) + 1  # a saved row's columns, with the id


def _values(width: int, count: int) -> str:
    row = f"({', '.join('?' * width)})"
    return f"VALUES {', '.join([row] * count)}"


@functools.cache
def _insert_tasks_sql(count: int) -> str:
    return f"INSERT INTO tasks ({TASK_COLUMNS}) {_values(_TASK_WIDTH, count)}"


@functools.cache
def _update_tasks_sql(count: int) -> str:
    sets = ", ".join(f"{column} = v.column{i}" for i, column in enumerate(_SAVED_COLUMNS, 1))
    return (
        f"UPDATE tasks SET {sets} FROM ({_values(_SAVE_WIDTH, count)}) AS v"
        f" WHERE tasks.id = v.column{_SAVE_WIDTH}"
    )


def _bytes_of(
    columns: Sequence[str], large: tuple[str, str, *tuple[str, ...]]
) -> Callable[[Row], int]:
    """How many bytes a row of these columns binds in its `large` ones (bytes, text or
    None; two or more, so that the getter gives a tuple)."""
    values = operator.itemgetter(*(columns.index(name) for name in large))
    return lambda row: sum(map(len, filter(None, values(row))))


# The many-row statement of each statement that has one, and what a row of it binds.
_MULTI_ROW: Final[dict[str, tuple[Callable[[int], str], Callable[[Row], int]]]] = {
    _INSERT_TASK: (
        _insert_tasks_sql,
        _bytes_of(TASK_COLUMNS.split(", "), ("payload", "result", "error_traceback")),
    ),
    _UPDATE_TASK: (_update_tasks_sql, _bytes_of(_SAVED_COLUMNS, ("result", "error_traceback"))),
}


_UPSERT_POOL: Final = """
    INSERT INTO pools (name, strategy, created_at, ab_strategy, ab_percent, sticky_timeout_s,
        limits)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET strategy = excluded.strategy,
        ab_strategy = excluded.ab_strategy, ab_percent = excluded.ab_percent,
        sticky_timeout_s = excluded.sticky_timeout_s, limits = excluded.limits
"""
_INSERT_CONFIG_CHANGE: Final = """
    INSERT INTO config_audit (at, who, source, pool, before, after, fields)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_UPSERT_FILE_SETTINGS: Final = """
    INSERT OR REPLACE INTO pool_file_settings (pool, settings) VALUES (?, ?)
"""
_UPSERT_TOKEN: Final = """
    INSERT OR REPLACE INTO api_tokens (name, roles, pools, digest, created_at, revoked_at)
    VALUES (?, ?, ?, ?, ?, ?)
"""
_UPSERT_STICKY: Final = """
    INSERT OR REPLACE INTO sticky_keys (pool, key, worker_id, updated_at) VALUES (?, ?, ?, ?)
"""
_DELETE_STICKY: Final = "DELETE FROM sticky_keys WHERE pool = ? AND key = ?"
_UPSERT_RUNTIME: Final = f"""
    INSERT OR REPLACE INTO runtimes ({RUNTIME_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_DELETE_ARM_STATS: Final = "DELETE FROM arm_stats WHERE pool = ?"
_INSERT_ARM_STATS: Final = f"""
    INSERT INTO arm_stats ({ARM_STATS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_CONNECT_WORKER: Final = """
    INSERT OR REPLACE INTO workers (worker_id, pool, labels, capacity, task_types, sdk_version,
        connected_at, disconnected_at, last_heartbeat)
    VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)
"""
_HEARTBEAT_WORKER: Final = "UPDATE workers SET last_heartbeat = ? WHERE worker_id = ?"
_DISCONNECT_WORKER: Final = "UPDATE workers SET disconnected_at = ? WHERE worker_id = ?"

# A rollup row is only ever added to: a row for a key that is stored already adds its
# counts, sums and histograms (JSON arrays, added element by element) to the stored ones.


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
    f"INSERT INTO metric_rollups ({ROLLUP_COLUMNS}) VALUES ({', '.join('?' * 14)}) "
    + _ADD_TO_ROLLUP
)
# SQLite reads the whole SELECT before inserting when a table is copied into itself. The
# WHERE clause also keeps ON CONFLICT from parsing as a join's ON.
_COMPACT_ROLLUPS: Final = (
    f"INSERT INTO metric_rollups ({ROLLUP_COLUMNS})"
    " SELECT pool, task_type, worker_id, CAST(start / :into AS INTEGER) * :into, :into,"
    " submitted, completed, failed, wait_count, wait_sum, run_count, run_sum,"
    " wait_hist, run_hist"
    " FROM metric_rollups WHERE bucket_s < :into AND start < :before ORDER BY start "
    + _ADD_TO_ROLLUP
)
_DELETE_COMPACTED: Final = "DELETE FROM metric_rollups WHERE bucket_s < :into AND start < :before"


class _SQLiteWriter:
    """The group commit's backend: each batch in one transaction of the shared connection."""

    inserted_row = staticmethod(insert_row)
    saved_row = staticmethod(update_row)

    def __init__(
        self, db: aiosqlite.Connection, transaction: asyncio.Lock, lock: StoreLock | None
    ) -> None:
        self._db = db
        self._transaction = transaction
        self._lock = lock

    async def commit(self, batch: WriteBatch[Row]) -> None:
        statements = [(sql, rows) for sql, rows in _statements(batch) if rows]
        async with self._transaction:
            # One call into the connection's thread for the whole transaction, not one per
            # statement: each call is a wake-up of that thread and one of the event loop.
            await _in_thread(self._db, _write_transaction, statements)

    async def close(self) -> None:
        try:
            await self._db.close()
        finally:
            if self._lock is not None:
                self._lock.release()


class SQLiteStore(SharedReads, GroupCommit[Row]):
    """Tasks, pools, workers and the metrics history in one SQLite file (WAL).

    Writes are queued (`save`, `worker_*`, ...) or queued and awaited (`insert_tasks`,
    `upsert_pool`, `durable`); the group commit's writer commits each accumulated batch in
    one transaction. Reads first wait for the writes queued before them. The rules are in
    broker.storage.contract.
    """

    def __init__(
        self, db: aiosqlite.Connection, clock: Clock, lock: StoreLock | None = None
    ) -> None:
        """Wrap an open, migrated connection (and the file's lock, released on close);
        call `SQLiteStore.open` instead."""
        self._db = db
        self._transaction = asyncio.Lock()  # keeps reads out of the writer's transaction
        super().__init__(_SQLiteWriter(db, self._transaction, lock), clock)

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        clock: Clock | None = None,
    ) -> SQLiteStore:
        """Open (creating or migrating) the database at `path`.

        `synchronous` is FULL (a commit survives power loss) or NORMAL (it survives a crash
        of the process). Raises BrokerError if the file's schema is newer than this code.
        The writer starts with the first write, or under `run()`.

        One store per file: the store holds an exclusive lock on `<path>.lock` until it is
        closed (or its process ends), and a second open of the same file, from this
        process or another, raises StorageError naming the holder's pid.
        """
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
        lock = None if str(path) in ("", ":memory:") else StoreLock.acquire(path)
        connecting = aiosqlite.connect(path, isolation_level=None)  # we issue BEGIN ourselves
        try:
            db = await connecting
        except BaseException:
            try:
                await _ended(connecting)
            finally:
                if lock is not None:
                    lock.release()
            raise
        try:
            async with db.execute("PRAGMA journal_mode = WAL") as cursor:
                row = await cursor.fetchone()
            if row is None or row[0] != "wal":
                _log.warning("%s: journal_mode is %s, not wal; commits will be slower", path, row)
            await db.execute(f"PRAGMA synchronous = {synchronous}")
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await migrate(db, path)
        except BaseException:
            try:
                await db.close()
            finally:
                if lock is not None:
                    lock.release()
            raise
        return cls(db, clock or SystemClock(), lock)

    # -- reads ----------------------------------------------------------------------------

    async def get_task(self, task_id: TaskId) -> Task | None:
        """The task with this id, or None."""
        tasks = await self.get_tasks((task_id,))
        return tasks[0] if tasks else None

    async def get_tasks(self, task_ids: Collection[TaskId]) -> list[Task]:
        """The stored tasks among these ids: one read, in statements of at most 500 ids."""
        ids = list(dict.fromkeys(task_ids))
        await self._settle(ids)
        tasks: list[Task] = []
        async with self._transaction:
            for start in range(0, len(ids), _IDS_PER_READ):
                chunk = ids[start : start + _IDS_PER_READ]
                sql = f"{SELECT_TASKS} WHERE id IN ({', '.join('?' * len(chunk))})"
                tasks.extend(
                    task_from_row(row) for row in await self._db.execute_fetchall(sql, chunk)
                )
        return tasks

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        """Tasks matching the filter, newest (highest id) first, at most `flt.limit`."""
        if flt.limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {flt.limit}")
        sql, params = list_query(flt)
        return [task_from_row(row) for row in await self._fetch(sql, params)]

    async def load_unfinished(self) -> list[Task]:
        """Pending, assigned and running tasks in submission (seq) order, for recovery."""
        marks = ", ".join("?" * len(_UNFINISHED))
        rows = await self._fetch(
            f"{SELECT_TASKS} WHERE state IN ({marks}) ORDER BY seq", [*map(int, _UNFINISHED)]
        )
        return [task_from_row(row) for row in rows]

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
        rows = await self._fetch(f"SELECT {POOL_COLUMNS} FROM pools ORDER BY name")
        return [pool_from_row(row) for row in rows]

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
                f"{SELECT_TASKS} WHERE pool = ? AND idempotency_key IN ({marks})"
                " AND created_at >= ? ORDER BY id",
                [pool, *chunk, since],
            )
            for row in rows:
                task = task_from_row(row)
                found.setdefault(task.spec.idempotency_key, task)
        return found

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        """Audited configuration changes, newest first; of one pool, or of all."""
        where, params = ("WHERE pool = ?", [pool]) if pool else ("", [])
        rows = await self._fetch(
            f"SELECT {CONFIG_CHANGE_COLUMNS} FROM config_audit {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [config_change_from_row(row) for row in rows]

    # -- metrics history ------------------------------------------------------------------

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
            f"SELECT {ROLLUP_COLUMNS} FROM metric_rollups WHERE {' AND '.join(clauses)}"
            " ORDER BY start, pool, task_type, worker_id, bucket_s",
            params,
        )
        return [rollup_from_row(row) for row in rows]

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

    # -- retention ------------------------------------------------------------------------

    async def purge_tasks(
        self, pool: str, finished_before: float, states: Collection[TaskState], limit: int
    ) -> dict[TaskState, int]:
        """Delete at most `limit` finished tasks of `pool` in `states` that finished before
        `finished_before`, oldest first, in one transaction; how many of each state went.

        The tasks_finished index (pool, finished_at, over terminal tasks only) finds them
        without a scan.
        """
        chosen = check_purge(states, limit)
        self._check_writable()
        await self._settle()
        marks = ", ".join("?" * len(chosen))
        sql = (
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks"
            f" WHERE pool = ? AND {TERMINAL_STATES_SQL} AND finished_at < ?"
            f" AND state IN ({marks}) ORDER BY finished_at LIMIT ?) RETURNING state"
        )
        params = [pool, finished_before, *sorted(map(int, chosen)), limit]
        try:
            async with self._transaction:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    rows = await self._db.execute_fetchall(sql, params)
                    await self._db.commit()
                except BaseException:
                    await _rollback(self._db)
                    raise
        except sqlite3.Error as exc:
            raise StorageError(f"the task store could not purge tasks: {exc}") from exc
        return dict(Counter(TaskState(state) for (state,) in rows))

    # -- internals ------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        await self._settle()
        async with self._transaction:
            return list(await self._db.execute_fetchall(sql, params))

    async def _rollup_transaction(self, steps: Sequence[tuple[str, dict[str, object]]]) -> int:
        """Run the statements in one transaction of their own, after the writes queued
        before; the last one's row count."""
        self._check_writable()
        await self._settle()
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
                    await _rollback(self._db)
                    raise
        except sqlite3.Error as exc:
            raise StorageError(
                f"the task store could not change the metrics history: {exc}"
            ) from exc
        return changed


def _statements(batch: WriteBatch[Row]) -> list[tuple[str, Sequence[Row]]]:
    """What a commit executes, in WriteBatch's order: inserts first, so that a save queued
    after an insert lands on its row; connects before disconnects."""
    return [
        (_INSERT_TASK, batch.inserts),
        (_UPDATE_TASK, list(batch.saves.values())),
        (_UPSERT_POOL, [pool_row(pool, at) for pool, at in batch.pools.values()]),
        (_INSERT_CONFIG_CHANGE, [config_change_row(c) for c in batch.config_changes]),
        (_UPSERT_FILE_SETTINGS, list(batch.file_settings.items())),
        (_UPSERT_TOKEN, [token_row(t) for t in batch.tokens.values()]),
        (
            _UPSERT_STICKY,
            [(pool, key, *where) for (pool, key), where in batch.sticky.items() if where[0]],
        ),
        (
            _DELETE_STICKY,  # an empty worker id forgets the key
            [(pool, key) for (pool, key), (worker_id, _) in batch.sticky.items() if not worker_id],
        ),
        (_UPSERT_RUNTIME, [runtime_row(k, stats) for k, stats in batch.runtimes.items()]),
        (_DELETE_ARM_STATS, [(pool,) for pool in batch.arm_stats]),
        (
            _INSERT_ARM_STATS,
            [row for pool, arms in batch.arm_stats.items() for row in arm_stats_rows(pool, arms)],
        ),
        (_UPSERT_ROLLUP, [rollup_row(row) for row in batch.rollups]),
        (_CONNECT_WORKER, [connect_row(spec, at) for spec, at in batch.connects.values()]),
        (_HEARTBEAT_WORKER, [(at, w) for w, at in batch.heartbeats.items()]),
        (_DISCONNECT_WORKER, [(at, w) for w, at in batch.disconnects.items()]),
    ]


def _write_transaction(
    conn: sqlite3.Connection, statements: list[tuple[str, Sequence[Row]]]
) -> None:
    """BEGIN, the statements and COMMIT, run in the connection's thread; on any error,
    ROLLBACK and raise it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        multi_row = _MULTI_ROW if _multi_row_writes(conn) else {}
        for sql, rows in statements:
            if sql in multi_row:
                _execute_rows(conn, *multi_row[sql], rows)
            else:
                conn.executemany(sql, rows)
        _commit(conn)
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            _log.exception("rollback failed")
        raise


def _multi_row_writes(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite takes the many-row statements: UPDATE ... FROM, and the
    parameters of the largest (most builds allow 32,766; some fewer)."""
    largest = _STATEMENT_ROWS[0] * max(_TASK_WIDTH, _SAVE_WIDTH)
    return _MULTI_ROW_SQLITE and conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) >= largest


def _execute_rows(
    conn: sqlite3.Connection,
    statement: Callable[[int], str],
    size_of: Callable[[Row], int],
    rows: Sequence[Row],
) -> None:
    """Write the rows with `statement(n)`, the statement for n rows: in runs of at most
    _STATEMENT_ROWS[0] rows and _STATEMENT_BYTES (by `size_of`; a bigger row runs alone),
    each run in statements of the sizes in _STATEMENT_ROWS, largest first."""
    start = 0
    while start < len(rows):
        end, size = start + 1, size_of(rows[start])
        while end < len(rows) and end - start < _STATEMENT_ROWS[0]:
            size += size_of(rows[end])
            if size > _STATEMENT_BYTES:
                break
            end += 1
        for count in _STATEMENT_ROWS:
            while end - start >= count:
                values = list(itertools.chain.from_iterable(rows[start : start + count]))
                conn.execute(statement(count), values)
                start += count


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


async def _in_thread(db: aiosqlite.Connection, function: Callable[..., _T], *args: Any) -> _T:
    """Run `function(connection, *args)` in the connection's own thread, as one call.

    aiosqlite runs each of its methods this way, one call each; it has no public way to
    run several statements in one call, so this uses the queue its methods use.
    """
    result: _T = await db._execute(function, db._conn, *args)  # type: ignore[no-untyped-call]
    return result


async def _rollback(db: aiosqlite.Connection) -> None:
    # After an I/O error SQLite may have rolled back already, or may fail again; the
    # error that matters is the one that made us roll back.
    try:
        await db.rollback()
    except sqlite3.Error:
        _log.exception("rollback failed")


def list_query(flt: TaskFilter) -> tuple[str, list[object]]:
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
        return f"{SELECT_TASKS}{where} ORDER BY id DESC LIMIT ?", [*params, flt.limit]
    states = sorted(flt.states) if flt.states else list(TaskState)
    part = f"{SELECT_TASKS} WHERE {' AND '.join(['state = ?', *clauses])}"
    part_params: list[object] = []
    for state in states:
        part_params += [int(state), *params]
    sql = f"{' UNION ALL '.join([part] * len(states))} ORDER BY id DESC LIMIT ?"
    return sql, [*part_params, flt.limit]


async def _ended(connection: aiosqlite.Connection) -> None:
    """Wait until the thread of a connection that failed to open has ended.

    aiosqlite stops it on a failed connect but does not wait: the thread would then report
    to a closed event loop ("RuntimeError: Event loop is closed" on stderr) once the
    program has given up and left `asyncio.run`.
    """
    thread = connection._thread  # aiosqlite keeps no public handle on it
    if thread.is_alive():
        await asyncio.to_thread(thread.join, 5.0)
