"""The broker's durable state in PostgreSQL, written by group commit.

`PostgresStore` connects (a small asyncpg pool), creates or migrates the schema
(postgres_schema) and answers the reads; its writes are queued by the group commit
(broker.storage.groupcommit), which hands each batch to `_PostgresWriter`. A batch is
written by ONE statement, in one round trip: every table's rows go as arrays, unnested by
data-modifying common table expressions, so a thousand tasks cost one statement, not a
thousand. A statement is atomic, which makes the batch all or nothing.

All the parts of one statement see the database as it was when the statement began, so
the writer first folds together what touches one row twice: a save of a task inserted in
the same batch is written as part of its insert, rollups of one key are added up, and a
worker's heartbeat or disconnect rides on its connect.

A fence (broker.cluster) may be given: then every batch carries the lease epochs of the
pools it was written under, and the statement fails (nothing written) unless each lease is
still held with that epoch. Rows are made and read as for SQLite (sqlite_rows): the
columns are the same.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any, Final

import asyncpg

from broker.clock import Clock, SystemClock
from broker.domain import (
    ConfigChange,
    PoolConfig,
    Task,
    TaskFilter,
    TaskId,
    TaskState,
    WorkerId,
)
from broker.errors import InvalidArgument, StorageError
from broker.stats import RollupRow
from broker.storage.contract import check_purge
from broker.storage.groupcommit import GroupCommit, WriteBatch
from broker.storage.postgres_schema import migrate
from broker.storage.sqlite_rows import (  # the same columns as SQLite's
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
    rollup_row,
    runtime_row,
    task_from_row,
    token_row,
    update_row,
)
from broker.store_url import redacted

_log = logging.getLogger("taskbroker.store")

_UNREACHABLE_PAUSE_S: Final = 0.2
_CONNECT_TIMEOUT_S: Final = 5.0

_UNFINISHED: Final = [int(state) for state in TaskState if not state.terminal]


def _types(names: str) -> list[str]:
    return names.split()


# The SQL type of each column of TASK_COLUMNS, for the arrays an insert sends.
_TASK_TYPES: Final = _types(
    "bigint text text bytea integer bigint integer integer text float8 float8 float8 "
    "float8 bytea text text text text integer float8 text text text text"
)
_STATE_COLUMNS: Final = _types(
    "seq state attempts worker_id created_at assigned_at started_at finished_at "
    "result error_type error_message error_traceback placement_note unschedulable "
    "not_before result_content_type"
)
_STATE_TYPES: Final = _TASK_TYPES[5:21]

# A fence: () -> (pools, epochs) the writes of the next commit are made under; a commit
# fails if any of these leases is no longer held with its epoch.
Fence = Callable[[], tuple[list[str], list[int]]]


class Fenced(StorageError):
    """A commit was refused: a pool's lease it was written under has moved on."""


class _Statement:
    """One statement being built: its CTEs and parameters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.args: list[object] = []
        self.checks: list[str] = []  # what the final SELECT computes

    def arg(self, value: object, sql_type: str) -> str:
        self.args.append(value)
        return f"${len(self.args)}::{sql_type}"

    def columns(self, rows: Sequence[Sequence[object]], types: Sequence[str]) -> str:
        """unnest(...) of the rows' columns, one array parameter each."""
        transposed = list(zip(*rows, strict=True)) if rows else [() for _ in types]
        return ", ".join(
            self.arg(list(column), f"{sql_type}[]")
            for column, sql_type in zip(transposed, types, strict=True)
        )

    def add(self, sql: str) -> None:
        self.parts.append(f"w{len(self.parts)} AS ({sql})")

    def sql(self) -> str:
        select = f"SELECT {', '.join(self.checks) or '1'}"
        return f"WITH {', '.join(self.parts)} {select}" if self.parts else select


def _fold_saves(batch: WriteBatch[Row]) -> tuple[list[Row], list[Row]]:
    """The inserts with any save of the same batch applied, and the other saves."""
    saves = dict(batch.saves)
    inserts = []
    for row in batch.inserts:
        saved = saves.pop(row[0], None)  # type: ignore[call-overload]
        inserts.append(row if saved is None else (*row[:5], *saved[:-1], *row[21:]))
    return inserts, list(saves.values())


def _array(values: Sequence[int]) -> str:
    """A PostgreSQL array literal of integers."""
    return "{" + ",".join(map(str, values)) + "}"


_ROLLUP_TYPES: Final = _types(
    "text text text float8 integer bigint bigint bigint bigint float8 bigint float8 text text"
)
_ADDED_COLUMNS: Final = [
    "submitted",
    "completed",
    "failed",
    "wait_count",
    "wait_sum",
    "run_count",
    "run_sum",
]
_UPSERT_ROLLUPS_TAIL: Final = (
    " ON CONFLICT (pool, task_type, worker_id, bucket_s, start) DO UPDATE SET "
    + ", ".join(f"{c} = metric_rollups.{c} + excluded.{c}" for c in _ADDED_COLUMNS)
    + ", wait_hist = taskbroker_hist_add(metric_rollups.wait_hist, excluded.wait_hist)"
    + ", run_hist = taskbroker_hist_add(metric_rollups.run_hist, excluded.run_hist)"
)


def _add_rollups(statement: _Statement, rows: Sequence[RollupRow]) -> None:
    summed: dict[tuple[str, str, WorkerId, int, float], RollupRow] = {}
    for row in rows:
        stored = summed.get(row.key)
        summed[row.key] = row if stored is None else stored.plus(row)
    if not summed:
        return
    values = [rollup_row(row, _array) for row in summed.values()]
    cols = statement.columns(values, _ROLLUP_TYPES)
    statement.add(
        f"INSERT INTO metric_rollups ({ROLLUP_COLUMNS})"
        " SELECT p, t, w, s, b, su, co, fa, wc, ws, rc, rs, wh::bigint[], rh::bigint[]"
        f" FROM unnest({cols}) AS u(p, t, w, s, b, su, co, fa, wc, ws, rc, rs, wh, rh)"
        + _UPSERT_ROLLUPS_TAIL
    )


def batch_statement(
    batch: WriteBatch[Row], fence: tuple[list[str], list[int]] | None, source: str = ""
) -> _Statement:
    """The one statement that writes the batch (see the module docstring); its SELECT
    list (`st.checks`) fails the statement if the fence does not hold."""
    st = _Statement()
    inserts, saves = _fold_saves(batch)
    if inserts:
        st.add(
            f"INSERT INTO tasks ({TASK_COLUMNS}) SELECT * FROM unnest("
            f"{st.columns(inserts, _TASK_TYPES)})"
        )
    if saves:
        cols = st.columns(saves, [*_STATE_TYPES, "bigint"])
        sets = ", ".join(f"{c} = u.{c}" for c in _STATE_COLUMNS)
        # Under a fence, a broker changes only the tasks of the pools it holds.
        owned = "" if fence is None else f" AND tasks.pool = ANY({st.arg(fence[0], 'text[]')})"
        st.add(
            f"UPDATE tasks SET {sets} FROM unnest({cols}) AS u({', '.join(_STATE_COLUMNS)}, id)"
            f" WHERE tasks.id = u.id{owned}"
        )
    if batch.pools:
        rows = [pool_row(pool, at) for pool, at in batch.pools.values()]
        cols = st.columns(rows, ["text", "text", "float8", "text", "integer", "float8", "text"])
        st.add(
            "INSERT INTO pools (name, strategy, created_at, ab_strategy, ab_percent,"
            f" sticky_timeout_s, limits) SELECT * FROM unnest({cols})"
            " ON CONFLICT (name) DO UPDATE SET strategy = excluded.strategy,"
            " ab_strategy = excluded.ab_strategy, ab_percent = excluded.ab_percent,"
            " sticky_timeout_s = excluded.sticky_timeout_s, limits = excluded.limits"
        )
    if batch.config_changes:
        rows = [config_change_row(c) for c in batch.config_changes]
        cols = st.columns(rows, ["float8", "text", "text", "text", "text", "text", "text"])
        st.add(
            "INSERT INTO config_audit (at, who, source, pool, before, after, fields)"
            f" SELECT a, w, s, p, b, af, f FROM unnest({cols}) WITH ORDINALITY"
            " AS u(a, w, s, p, b, af, f, i) ORDER BY i"
        )
    if batch.file_settings:
        cols = st.columns(list(batch.file_settings.items()), ["text", "text"])
        st.add(
            f"INSERT INTO pool_file_settings (pool, settings) SELECT * FROM unnest({cols})"
            " ON CONFLICT (pool) DO UPDATE SET settings = excluded.settings"
        )
    if batch.tokens:
        rows = [token_row(token) for token in batch.tokens.values()]
        cols = st.columns(rows, _types("text text text text float8 float8"))
        st.add(
            "INSERT INTO api_tokens (name, roles, pools, digest, created_at, revoked_at)"
            f" SELECT * FROM unnest({cols}) ON CONFLICT (name) DO UPDATE SET"
            " roles = excluded.roles, pools = excluded.pools, digest = excluded.digest,"
            " created_at = excluded.created_at, revoked_at = excluded.revoked_at"
        )
    sticky = [(pool, key, *where) for (pool, key), where in batch.sticky.items() if where[0]]
    if sticky:
        cols = st.columns(sticky, ["text", "text", "text", "float8"])
        st.add(
            f"INSERT INTO sticky_keys (pool, key, worker_id, updated_at) SELECT * FROM unnest("
            f"{cols}) ON CONFLICT (pool, key) DO UPDATE SET worker_id = excluded.worker_id,"
            " updated_at = excluded.updated_at"
        )
    forgotten = [(pool, key) for (pool, key), (who, _) in batch.sticky.items() if not who]
    if forgotten:
        cols = st.columns(forgotten, ["text", "text"])
        st.add(
            f"DELETE FROM sticky_keys s USING unnest({cols}) AS u(p, k)"
            " WHERE s.pool = u.p AND s.key = u.k"
        )
    if batch.runtimes:
        rows = [runtime_row(k, stats) for k, stats in batch.runtimes.items()]
        cols = st.columns(rows, _types("text text text bigint float8 float8 float8 bigint"))
        st.add(
            f"INSERT INTO runtimes ({RUNTIME_COLUMNS}) SELECT * FROM unnest({cols})"
            " ON CONFLICT (pool, task_type, worker_class) DO UPDATE SET count = excluded.count,"
            " mean_s = excluded.mean_s, m2 = excluded.m2, abs_error_s = excluded.abs_error_s,"
            " predicted = excluded.predicted"
        )
    _arm_stats(st, batch)
    _add_rollups(st, batch.rollups)
    _worker_log(st, batch)
    if fence is None:
        return st
    _notify(st, inserts, saves, source)
    pools, epochs = fence
    if not pools:
        return st
    # FOR SHARE holds each lease row until the statement commits: a takeover waits for
    # it, and one that committed first makes the row not match, so the check fails.
    st.add(
        "SELECT count(*) AS held FROM (SELECT 1 FROM pool_leases l"
        f" JOIN unnest({st.arg(pools, 'text[]')}, {st.arg(epochs, 'bigint[]')}) AS f(pool, epoch)"
        " ON l.pool = f.pool AND l.epoch = f.epoch FOR SHARE OF l) AS h"
    )
    st.checks.append(f"taskbroker_fence((SELECT held FROM w{len(st.parts) - 1}), {len(pools)})")
    return st


# NOTIFY payloads stay below PostgreSQL's 8000 bytes.
_PAYLOAD_CHARS: Final = 7000


def _id_payloads(prefix: str, ids: Sequence[object]) -> list[str]:
    payloads, chunk = [], prefix
    for task_id in ids:
        if len(chunk) > _PAYLOAD_CHARS:
            payloads.append(chunk.rstrip(","))
            chunk = prefix
        chunk += f"{task_id},"
    if chunk != prefix:
        payloads.append(chunk.rstrip(","))
    return payloads


def _notify(st: _Statement, inserts: Sequence[Row], saves: Sequence[Row], source: str) -> None:
    """Wake the other brokers at commit: the new tasks by pool (channel
    taskbroker_submitted, "source|pool:id,id,..."), and the tasks that ended
    (taskbroker_finished, "source|:id,id,...")."""
    by_pool: dict[object, list[object]] = {}
    for row in inserts:
        by_pool.setdefault(row[1], []).append(row[0])
    submitted = [p for pool, ids in by_pool.items() for p in _id_payloads(f"{source}|{pool}:", ids)]
    terminal = {4, 5, 6, 7}
    ended = [row[-1] for row in saves if row[1] in terminal]
    ended += [row[0] for row in inserts if row[6] in terminal]
    finished = _id_payloads(f"{source}|:", ended)
    for channel, payloads in (("submitted", submitted), ("finished", finished)):
        if payloads:
            st.checks.append(
                f"(SELECT count(pg_notify('taskbroker_{channel}', x))"
                f" FROM unnest({st.arg(payloads, 'text[]')}) AS x)"
            )


def _arm_stats(st: _Statement, batch: WriteBatch[Row]) -> None:
    """Each pool's arms replace what was kept: the given ones are upserted and those
    beyond them deleted (two sets of rows, since the parts of a statement must not touch
    one row twice)."""
    if not batch.arm_stats:
        return
    counts = [(pool, len(arms)) for pool, arms in batch.arm_stats.items()]
    cols = st.columns(counts, ["text", "integer"])
    st.add(
        f"DELETE FROM arm_stats a USING unnest({cols}) AS u(p, n)"
        " WHERE a.pool = u.p AND a.arm >= u.n"
    )
    rows = [row for pool, arms in batch.arm_stats.items() for row in arm_stats_rows(pool, arms)]
    if rows:
        cols = st.columns(rows, _types("text integer text bigint bigint bigint float8 float8"))
        st.add(
            f"INSERT INTO arm_stats ({ARM_STATS_COLUMNS}) SELECT * FROM unnest({cols})"
            " ON CONFLICT (pool, arm) DO UPDATE SET strategy = excluded.strategy,"
            " placed = excluded.placed, finished = excluded.finished,"
            " failed = excluded.failed, wait_s = excluded.wait_s, run_s = excluded.run_s"
        )


def _worker_log(st: _Statement, batch: WriteBatch[Row]) -> None:
    heartbeats, disconnects = dict(batch.heartbeats), dict(batch.disconnects)
    connects = []
    for worker_id, (spec, at) in batch.connects.items():
        row = list(connect_row(spec, at))
        if worker_id in heartbeats:
            row[7] = heartbeats.pop(worker_id)
        connects.append((*row, disconnects.pop(worker_id, None)))
    if connects:
        cols = st.columns(connects, _types("text text text integer text text float8 float8 float8"))
        st.add(
            "INSERT INTO workers (worker_id, pool, labels, capacity, task_types, sdk_version,"
            f" connected_at, last_heartbeat, disconnected_at) SELECT * FROM unnest({cols})"
            " ON CONFLICT (worker_id) DO UPDATE SET pool = excluded.pool,"
            " labels = excluded.labels, capacity = excluded.capacity,"
            " task_types = excluded.task_types, sdk_version = excluded.sdk_version,"
            " connected_at = excluded.connected_at, last_heartbeat = excluded.last_heartbeat,"
            " disconnected_at = excluded.disconnected_at"
        )
    others = sorted(heartbeats.keys() | disconnects.keys())
    if others:
        rows = [(w, heartbeats.get(w), disconnects.get(w)) for w in others]
        cols = st.columns(rows, ["text", "float8", "float8"])
        st.add(
            "UPDATE workers SET last_heartbeat = coalesce(u.h, workers.last_heartbeat),"
            " disconnected_at = coalesce(u.d, workers.disconnected_at)"
            f" FROM unnest({cols}) AS u(w, h, d) WHERE workers.worker_id = u.w"
        )


class _PostgresWriter:
    """The group commit's backend: each batch in one statement (see the module docstring)."""

    inserted_row = staticmethod(insert_row)
    saved_row = staticmethod(update_row)

    def __init__(self, pool: asyncpg.Pool, fence: Fence | None) -> None:
        self._pool = pool
        self.fence = fence
        self.source = ""

    async def commit(self, batch: WriteBatch[Row]) -> None:
        fence = self.fence() if self.fence is not None else None
        st = batch_statement(batch, fence, self.source)
        try:
            conn = await self._pool.acquire()
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
            # The server is out of reach: a moment before the error, so that callers who
            # retry at once (a finished task's save) do not spin while it is away.
            await asyncio.sleep(_UNREACHABLE_PAUSE_S)
            raise
        try:
            await conn.execute(st.sql(), *st.args)
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", "") == "TB001":
                raise Fenced("a pool's lease has moved on: nothing was written") from exc
            raise
        finally:
            await self._pool.release(conn)

    async def close(self) -> None:
        await self._pool.close()


async def connect_pool(url: str, name: str = "taskbroker") -> asyncpg.Pool:
    """A small pool of connections to `url`, each named `name` (its application_name)."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=6,
            timeout=_CONNECT_TIMEOUT_S,
            command_timeout=30,
            server_settings={"application_name": name},
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise StorageError(f"cannot connect to PostgreSQL at {redacted(url)}: {exc}") from exc
    assert pool is not None
    return pool


class PostgresStore(SharedReads, GroupCommit[Row]):
    """Tasks, pools, workers and the metrics history in PostgreSQL.

    Writes are queued (`save`, `worker_*`, ...) or queued and awaited (`insert_tasks`,
    `upsert_pool`, `durable`); the group commit's writer commits each accumulated batch in
    one statement. Reads first wait for the writes queued before them. The rules are in
    broker.storage.contract.
    """

    def __init__(self, pool: asyncpg.Pool, clock: Clock, url: str = "") -> None:
        """Wrap an open pool on a migrated database; call `PostgresStore.open` instead."""
        self._pool = pool
        self.url = url
        self._writer_backend = _PostgresWriter(pool, None)
        self._id_block: int | None = None
        super().__init__(self._writer_backend, clock)

    @classmethod
    async def open(
        cls, url: str, *, clock: Clock | None = None, name: str = "taskbroker"
    ) -> PostgresStore:
        """Connect to the database at `url` (postgresql://user:password@host:port/db) and
        create or migrate its schema. StorageError if it cannot be reached; BrokerError if
        its schema is newer than this code. `name` is each connection's application_name
        (a broker's id, when several share the database)."""
        pool = await connect_pool(url, name)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, redacted(url))  # type: ignore[arg-type]
        except BaseException:
            await pool.close()
            raise
        return cls(pool, clock or SystemClock(), url)

    @property
    def pool(self) -> asyncpg.Pool:
        """The connections, for the cluster's own tables (broker.cluster)."""
        return self._pool

    def set_fence(self, fence: Fence | None, source: str = "") -> None:
        """Share the database with other brokers (broker.cluster): every later commit
        carries the lease epochs of the pools `fence` gives and fails if one has moved on,
        changes only the tasks of those pools, and wakes the other brokers (NOTIFY) with the
        tasks it added and ended. Recovery then loads only those pools' tasks, and task
        ids and seqs come from a block of the database's own (`max_task_id`). `source`
        (the broker's id) begins each notification: "source|pool:id,id,..."."""
        self._writer_backend.fence = fence
        self._writer_backend.source = source
        self._id_block = None

    async def _block(self) -> int:
        """The first id of this store's block of 2**32 task ids (and seqs), taken once."""
        if self._id_block is None:
            await self._settle()
            self._id_block = int(await self._pool.fetchval("SELECT nextval('task_ids')")) << 32
        return self._id_block

    async def load_unfinished_of(self, pools: Sequence[str]) -> list[Task]:
        """The unfinished tasks of these pools, in seq order."""
        rows = await self._fetch(
            f"{SELECT_TASKS} WHERE state = ANY($1::integer[]) AND pool = ANY($2::text[])"
            " ORDER BY seq",
            _UNFINISHED,
            list(pools),
        )
        return [task_from_row(row) for row in rows]

    async def get_tasks(self, task_ids: Collection[TaskId]) -> list[Task]:
        """The stored tasks among these ids."""
        ids = list(dict.fromkeys(task_ids))
        rows = await self._fetch(f"{SELECT_TASKS} WHERE id = ANY($1::bigint[])", ids, of_tasks=ids)
        return [task_from_row(row) for row in rows]

    # -- reads ----------------------------------------------------------------------------

    async def get_task(self, task_id: TaskId) -> Task | None:
        tasks = await self.get_tasks((task_id,))
        return tasks[0] if tasks else None

    async def list_tasks(self, flt: TaskFilter) -> list[Task]:
        if flt.limit < 0:
            raise InvalidArgument(f"limit must not be negative, got {flt.limit}")
        clauses: list[str] = []
        params: list[object] = []

        def where(term: str, value: object) -> None:
            params.append(value)
            clauses.append(term.format(f"${len(params)}"))

        if flt.pool:
            where("pool = {}", flt.pool)
        if flt.states:
            where("state = ANY({}::integer[])", sorted(map(int, flt.states)))
        if flt.task_type:
            where("task_type = {}", flt.task_type)
        if flt.before_id is not None:
            where("id < {}", flt.before_id)
        params.append(flt.limit)
        sql = (
            f"{SELECT_TASKS}{' WHERE ' + ' AND '.join(clauses) if clauses else ''}"
            f" ORDER BY id DESC LIMIT ${len(params)}"
        )
        return [task_from_row(row) for row in await self._fetch(sql, *params)]

    async def load_unfinished(self) -> list[Task]:
        fence = self._writer_backend.fence
        if fence is not None:
            return await self.load_unfinished_of(fence()[0])
        rows = await self._fetch(
            f"{SELECT_TASKS} WHERE state = ANY($1::integer[]) ORDER BY seq", _UNFINISHED
        )
        return [task_from_row(row) for row in rows]

    async def max_task_id(self) -> TaskId:
        if self._writer_backend.fence is not None:
            return await self._block() - 1
        rows = await self._fetch("SELECT coalesce(max(id), 0) FROM tasks")
        return int(rows[0][0])

    async def max_seq(self) -> int:
        if self._writer_backend.fence is not None:
            return await self._block() - 1
        rows = await self._fetch("SELECT coalesce(max(seq), 0) FROM tasks")
        return int(rows[0][0])

    async def count_by_pool_state(self) -> dict[tuple[str, TaskState], int]:
        rows = await self._fetch("SELECT pool, state, count(*) FROM tasks GROUP BY pool, state")
        return {(pool, TaskState(state)): count for pool, state, count in rows}

    async def list_pools(self) -> list[PoolConfig]:
        rows = await self._fetch(f"SELECT {POOL_COLUMNS} FROM pools ORDER BY name")
        return [pool_from_row(row) for row in rows]

    async def find_idempotent(
        self, pool: str, keys: Sequence[str], since: float
    ) -> dict[str, Task]:
        rows = await self._fetch(
            f"{SELECT_TASKS} WHERE pool = $1 AND idempotency_key = ANY($2::text[])"
            " AND created_at >= $3 ORDER BY id",
            pool,
            sorted(set(keys)),
            since,
        )
        found: dict[str, Task] = {}
        for row in rows:
            task = task_from_row(row)
            found.setdefault(task.spec.idempotency_key, task)
        return found

    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]:
        rows = await self._fetch(
            f"SELECT {CONFIG_CHANGE_COLUMNS} FROM config_audit"
            " WHERE ($1 = '' OR pool = $1) ORDER BY id DESC LIMIT $2",
            pool,
            limit,
        )
        return [config_change_from_row(row) for row in rows]

    # -- metrics history ------------------------------------------------------------------

    async def load_rollups(
        self, pool: str, task_type: str, worker_id: str, since: float, until: float
    ) -> list[RollupRow]:
        rows = await self._fetch(
            f"SELECT {ROLLUP_COLUMNS} FROM metric_rollups WHERE start < $1"
            " AND start + bucket_s > $2 AND ($3 = '' OR pool = $3)"
            " AND ($4 = '' OR task_type = $4) AND ($5 = '' OR worker_id = $5)"
            " ORDER BY start, pool, task_type, worker_id, bucket_s",
            until,
            since,
            pool,
            task_type,
            worker_id,
        )
        return [_rollup_from_record(row) for row in rows]

    async def compact_rollups(self, before: float, into_bucket_s: int) -> int:
        """Merge the rows narrower than `into_bucket_s` that start before `before` into rows
        `into_bucket_s` wide (added to any stored there); returns how many were merged."""
        self._check_writable()
        await self._settle()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                old = await conn.fetch(
                    f"DELETE FROM metric_rollups WHERE bucket_s < $1 AND start < $2"
                    f" RETURNING {ROLLUP_COLUMNS}",
                    into_bucket_s,
                    before,
                )
                merged = [
                    _rollup_from_record(row, into_bucket_s)
                    for row in sorted(old, key=lambda r: r["start"])
                ]
                st = _Statement()
                _add_rollups(st, merged)
                if st.parts:
                    await conn.execute(st.sql(), *st.args)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(
                f"the task store could not change the metrics history: {exc}"
            ) from exc
        return len(old)

    async def delete_rollups(self, before: float) -> int:
        self._check_writable()
        await self._settle()
        try:
            status = await self._pool.execute("DELETE FROM metric_rollups WHERE start < $1", before)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(
                f"the task store could not change the metrics history: {exc}"
            ) from exc
        return int(status.rsplit(" ", 1)[-1])

    # -- retention ------------------------------------------------------------------------

    async def purge_tasks(
        self, pool: str, finished_before: float, states: Collection[TaskState], limit: int
    ) -> dict[TaskState, int]:
        chosen = check_purge(states, limit)
        self._check_writable()
        await self._settle()
        try:
            rows = await self._pool.fetch(
                "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE pool = $1"
                " AND state IN (4, 5, 6, 7) AND finished_at < $2 AND state = ANY($3::integer[])"
                " ORDER BY finished_at LIMIT $4) RETURNING state",
                pool,
                finished_before,
                sorted(map(int, chosen)),
                limit,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"the task store could not purge tasks: {exc}") from exc
        return dict(Counter(TaskState(row[0]) for row in rows))

    # -- internals ------------------------------------------------------------------------

    async def _fetch(
        self, sql: str, *params: object, of_tasks: Collection[TaskId] | None = None
    ) -> list[Any]:
        await self._settle(of_tasks)
        try:
            return list(await self._pool.fetch(sql, *params))
        except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError) as exc:
            raise StorageError(f"the task store could not be read: {exc}") from exc


def _rollup_from_record(row: Any, bucket_s: int | None = None) -> RollupRow:
    start = row["start"]
    if bucket_s is not None:
        start = float(int(start / bucket_s) * bucket_s)
    return RollupRow(
        pool=row["pool"],
        task_type=row["task_type"],
        worker_id=row["worker_id"],
        start=start,
        bucket_s=row["bucket_s"] if bucket_s is None else bucket_s,
        submitted=row["submitted"],
        completed=row["completed"],
        failed=row["failed"],
        wait_count=row["wait_count"],
        wait_sum=row["wait_sum"],
        run_count=row["run_count"],
        run_sum=row["run_sum"],
        wait_hist=tuple(row["wait_hist"]),
        run_hist=tuple(row["run_hist"]),
    )
