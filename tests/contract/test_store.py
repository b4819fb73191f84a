"""SQLiteStore on real files: schema, group commit, query plans, durability across reopening.

What every store must do is in test_store_contract.py, which runs against SQLite too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from broker.clock import FakeClock
from broker.domain import TERMINAL_STATES, PoolConfig, Task, TaskFilter, TaskState, WorkerSpec
from broker.errors import BrokerError, StorageError
from broker.storage import groupcommit
from broker.storage import sqlite as sqlite_module
from broker.storage.sqlite import SQLiteStore, list_query
from broker.storage.sqlite_schema import SCHEMA_VERSION, TERMINAL_STATES_SQL
from tests.support.store import (
    ASSIGNED,
    FILTERS,
    PENDING,
    ROUND_TRIP_CASES,
    RUNNING,
    SUCCEEDED,
    finished,
    listing_tasks,
    make_task,
)


async def query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
    """Read the file through a connection of its own: sees only what was committed."""
    async with aiosqlite.connect(path) as db:
        return list(await db.execute_fetchall(sql, params))


def failing_commit(message: str) -> Callable[[sqlite3.Connection], None]:
    """A stand-in for the COMMIT of a transaction (run in the connection's thread, after
    its statements) that fails as a disk would."""

    def commit(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError(message)

    return commit


def held_commits(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, threading.Event]:
    """Make every COMMIT wait, in the connection's thread, until the returned threading
    event is set; the asyncio event is set once one has started."""
    loop = asyncio.get_running_loop()
    started, release = asyncio.Event(), threading.Event()
    commit = sqlite_module._commit

    def held(conn: sqlite3.Connection) -> None:
        loop.call_soon_threadsafe(started.set)
        if not release.wait(timeout=30):
            raise sqlite3.OperationalError("the test never released the commit")
        commit(conn)

    monkeypatch.setattr(sqlite_module, "_commit", held)
    return started, release


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "broker.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    async with await SQLiteStore.open(db_path) as opened:
        yield opened


# Schema and opening ---------------------------------------------------------------------


async def test_open_creates_the_schema_and_reopening_changes_nothing(db_path: Path) -> None:
    async with await SQLiteStore.open(db_path) as store:
        await store.insert_tasks([make_task(1)])
    schema_sql = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    schema = await query(db_path, schema_sql)
    tables = {name for kind, name, _ in schema if kind == "table"}
    assert tables == {
        "api_tokens",
        "pools",
        "tasks",
        "workers",
        "sticky_keys",
        "runtimes",
        "metric_rollups",
        "config_audit",
        "pool_file_settings",
        "arm_stats",
    }
    assert await query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]

    async with await SQLiteStore.open(db_path) as store:
        assert await store.get_task(1) == make_task(1)
    assert await query(db_path, schema_sql) == schema
    assert await query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    async with aiosqlite.connect(db_path) as db:
        await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(BrokerError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        await SQLiteStore.open(db_path)
    assert await query(db_path, "SELECT name FROM sqlite_master") == []
    assert await query(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]


# One store per file ---------------------------------------------------------------------

# Opens the store at argv[1] and holds it, printing "open", until killed.
_HOLDER = """
import asyncio, sys
from broker.domain import TERMINAL_STATES
from broker.storage.sqlite_schema import TERMINAL_STATES_SQL
from broker.storage.sqlite import SQLiteStore

async def main():
    store = await SQLiteStore.open(sys.argv[1])
    print("open", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_second_open_of_the_same_file_fails_until_the_first_closes(
    db_path: Path,
) -> None:
    first = await SQLiteStore.open(db_path)
    try:
        with pytest.raises(StorageError, match=rf"{db_path} is in use by process {os.getpid()}\b"):
            await SQLiteStore.open(db_path)
        await first.insert_tasks([make_task(1)])  # the refused open did not disturb it
    finally:
        await first.close()
    async with await SQLiteStore.open(db_path) as second:
        assert await second.get_task(1) == make_task(1)


async def test_a_store_held_by_a_killed_process_opens(db_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parent.parent.parent,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"open\n"
        with pytest.raises(StorageError, match=rf"in use by process {holder.pid}\b"):
            await SQLiteStore.open(db_path)
    finally:
        holder.kill()  # SIGKILL: no close, no clean-up
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    async with await SQLiteStore.open(db_path) as store:
        assert await store.max_task_id() == 0


async def test_a_failing_migration_changes_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker.storage.sqlite_schema as schema_module

    steps = (*schema_module.MIGRATIONS, ("CREATE TABLE extra (x)", "THIS IS NOT SQL"))
    monkeypatch.setattr(schema_module, "MIGRATIONS", steps)
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", len(steps))
    with pytest.raises(sqlite3.OperationalError):
        await SQLiteStore.open(db_path)
    assert await query(db_path, "SELECT name FROM sqlite_master") == []
    assert await query(db_path, "PRAGMA user_version") == [(0,)]


@pytest.mark.parametrize(("mode", "level"), [("FULL", 2), ("NORMAL", 1)])
async def test_pragmas(db_path: Path, mode: str, level: int) -> None:
    async with await SQLiteStore.open(db_path, synchronous=mode) as store:
        db = store._db  # synchronous is per connection, so only the store's own can tell
        assert list(await db.execute_fetchall("PRAGMA synchronous")) == [(level,)]
        assert list(await db.execute_fetchall("PRAGMA journal_mode")) == [("wal",)]


async def test_an_unknown_synchronous_mode_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await SQLiteStore.open(db_path, synchronous="OFF")
    assert await query(db_path, "SELECT name FROM sqlite_master") == []  # nothing created


# Round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
async def test_every_field_survives_reopening(db_path: Path, task: Task) -> None:
    async with await SQLiteStore.open(db_path) as store:
        await store.insert_tasks([task])
    async with await SQLiteStore.open(db_path) as store:
        assert await store.get_task(task.id) == task


async def test_error_none_is_stored_as_null(store: SQLiteStore, db_path: Path) -> None:
    await store.insert_tasks([make_task(1), ROUND_TRIP_CASES["failed, error with empty fields"]])
    sql = "SELECT error_type, error_message, error_traceback FROM tasks ORDER BY id"
    assert await query(db_path, sql) == [(None, None, None), ("X", "", "")]


# Group commit -----------------------------------------------------------------------------


async def test_concurrent_inserts_share_transactions(store: SQLiteStore) -> None:
    callers, per_call = 50, 20
    batches = [[make_task(c * per_call + i + 1) for i in range(per_call)] for c in range(callers)]
    before = store.commits
    await asyncio.gather(*(store.insert_tasks(batch) for batch in batches))
    assert store.commits - before < callers // 10
    assert await store.max_task_id() == callers * per_call
    counts = await store.count_by_pool_state()
    assert counts == {("default", PENDING): callers * per_call}


async def test_insert_returns_only_once_committed(store: SQLiteStore, db_path: Path) -> None:
    await store.insert_tasks([make_task(1), make_task(2)])
    assert await query(db_path, "SELECT id FROM tasks ORDER BY id") == [(1,), (2,)]


async def test_repeated_saves_write_only_the_last(store: SQLiteStore, db_path: Path) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    statements: list[str] = []
    await store._db.set_trace_callback(statements.append)
    before = store.commits
    store.save(dataclasses.replace(task, state=ASSIGNED, worker_id="w1", attempts=1))
    store.save(dataclasses.replace(task, state=RUNNING, worker_id="w1", attempts=1))
    last = finished(task)
    store.save(last)
    await store.flush()
    assert store.commits == before + 1
    assert sum(s.lstrip().startswith("UPDATE tasks") for s in statements) == 1
    assert (await query(db_path, "SELECT state FROM tasks")) == [(SUCCEEDED,)]
    assert await store.get_task(1) == last


async def test_an_insert_and_a_later_save_in_one_batch_end_as_the_save(
    store: SQLiteStore,
) -> None:
    task = make_task(1)

    async def save_it() -> None:
        store.save(finished(task))

    before = store.commits
    await asyncio.gather(store.insert_tasks([task]), save_it())
    await store.flush()
    assert store.commits == before + 1  # both went into one transaction
    assert await store.get_task(1) == finished(task)


async def test_durable_waits_for_the_commit_that_carries_the_save(
    store: SQLiteStore, db_path: Path
) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    store.save(finished(task))
    durable = store.durable()
    assert not durable.done()
    await durable
    assert await query(db_path, "SELECT state FROM tasks") == [(SUCCEEDED,)]


async def test_a_save_rides_along_with_the_next_commit_someone_waits_for(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    """A save alone does not start a commit (an assignment, say): the next write that is
    waited for (its result, a submit) commits both at once."""
    monkeypatch.setattr(groupcommit, "SAVE_DELAY_S", 3600.0, raising=False)  # not here
    first = make_task(1)
    await store.insert_tasks([first])
    before = store.commits
    store.save(finished(first))
    for _ in range(20):  # every chance for the writer to start a commit of its own
        await asyncio.sleep(0)
    await store.insert_tasks([make_task(2)])
    assert store.commits == before + 1
    assert await query(db_path, "SELECT id, state FROM tasks ORDER BY id") == [
        (1, SUCCEEDED),
        (2, PENDING),
    ]


async def test_writes_during_a_commit_go_into_the_next_one(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    first, second = make_task(1), make_task(2)
    await store.insert_tasks([first, second])
    commit_started, release = held_commits(monkeypatch)
    before = store.commits
    store.save(finished(first))
    await commit_started.wait()  # the first save's commit is now in flight
    try:
        joins_in_flight = store.durable()  # nothing queued: waits for the commit in flight
        store.save(finished(second))  # queued for the next commit
        waits_for_next = store.durable()
        assert not joins_in_flight.done()
        assert not waits_for_next.done()
        assert await query(db_path, "SELECT state FROM tasks") == [(PENDING,), (PENDING,)]
    finally:
        release.set()  # a failed assertion must not leave the writer stuck
    await joins_in_flight
    assert store.commits == before + 1
    await waits_for_next
    assert store.commits == before + 2
    assert await query(db_path, "SELECT state FROM tasks") == [(SUCCEEDED,), (SUCCEEDED,)]


async def test_a_failed_commit_fails_its_waiters_and_the_writer_goes_on(
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    db_path: Path,
) -> None:
    await store.insert_tasks([make_task(1)])
    commit = sqlite_module._commit
    monkeypatch.setattr(sqlite_module, "_commit", failing_commit("disk I/O error"))
    store.save(finished(make_task(1)))
    with caplog.at_level(logging.ERROR, logger="taskbroker.store"):
        results = await asyncio.gather(
            store.insert_tasks([make_task(2)]), store.flush(), return_exceptions=True
        )
    causes = [r.__cause__ for r in results if isinstance(r, StorageError)]
    assert [str(c) for c in causes] == ["disk I/O error", "disk I/O error"]
    assert any(r.name == "taskbroker.store" and r.exc_info for r in caplog.records)

    monkeypatch.setattr(sqlite_module, "_commit", commit)
    await store.insert_tasks([make_task(3)])
    rows = await query(db_path, "SELECT id, state FROM tasks ORDER BY id")
    assert rows == [(1, PENDING), (3, PENDING)]  # the failed batch was rolled back whole


async def test_a_duplicate_id_fails_the_whole_batch(store: SQLiteStore) -> None:
    await store.insert_tasks([make_task(1)])
    results = await asyncio.gather(
        store.insert_tasks([make_task(1)]),
        store.insert_tasks([make_task(2)]),
        return_exceptions=True,
    )
    causes = [r.__cause__ for r in results if isinstance(r, StorageError)]
    assert len(causes) == 2
    assert all(isinstance(c, sqlite3.IntegrityError) for c in causes)
    assert await store.get_task(2) is None
    await store.insert_tasks([make_task(2)])
    assert await store.get_task(2) == make_task(2)


@pytest.mark.parametrize("count", [1, 2, 3, 255, 1023, 1024, 1025, 2100])
async def test_many_row_writes_store_what_one_row_writes_store(
    tmp_path: Path, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inserts and saves written by many-row statements leave the file as `executemany`
    does, row for row, whatever the count: around the sizes the statements come in, with
    payloads of up to 3 KB, so that runs of rows end at _STATEMENT_BYTES too."""
    tasks = [
        make_task(
            i, priority=i % 7, payload=bytes([i % 256]) * (i * 7919 % 3000), idempotency_key=f"k{i}"
        )
        for i in range(1, count + 1)
    ]
    tables: dict[bool, list[Any]] = {}
    for many_row in (True, False):
        monkeypatch.setattr(sqlite_module, "_multi_row_writes", lambda conn, m=many_row: m)
        path = tmp_path / f"many_row_{many_row}.db"
        async with await SQLiteStore.open(path) as store:
            await store.insert_tasks(tasks)
            for task in tasks[::2]:  # a save for every other task, and one for a stranger
                store.save(finished(task, result=b"r%d" % task.id, placement_note="n"))
            store.save(finished(make_task(count + 10)))
            await store.flush()
        tables[many_row] = await query(path, "SELECT * FROM tasks ORDER BY id")
    assert len(tables[True]) == count
    assert tables[True] == tables[False]


async def test_a_many_row_statement_binds_a_bounded_number_of_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite keeps copies of what a statement binds: big rows go in statements of fewer
    rows, up to _STATEMENT_BYTES of payloads each, a bigger row alone."""
    counts: list[int] = []
    insert_sql, size_of = sqlite_module._MULTI_ROW[sqlite_module._INSERT_TASK]

    def recording(count: int) -> str:
        counts.append(count)
        return insert_sql(count)

    monkeypatch.setitem(sqlite_module._MULTI_ROW, sqlite_module._INSERT_TASK, (recording, size_of))
    sizes = [1_000, 100_000, 100_000, 100_000, 300_000, 10, 10]
    tasks = [make_task(i, payload=bytes(size)) for i, size in enumerate(sizes, 1)]
    async with await SQLiteStore.open(tmp_path / "broker.db") as store:
        await store.insert_tasks(tasks)
        assert await store.get_task(5) == tasks[4]
    statements, start = [], 0
    for count in counts:  # the statements take the rows in order
        statements.append(sizes[start : start + count])
        start += count
    assert statements == [[1_000, 100_000], [100_000], [100_000], [300_000], [10, 10]]


async def test_the_many_row_statements_are_the_ones_used_here(store: SQLiteStore) -> None:
    """This SQLite takes them (3.33 or later, with room for their parameters), so the
    tests above and every store test here run them, not the fallback."""
    assert sqlite3.sqlite_version_info >= (3, 33, 0)
    assert await sqlite_module._in_thread(store._db, sqlite_module._multi_row_writes)


async def test_a_duplicate_id_among_many_rows_fails_the_whole_batch(store: SQLiteStore) -> None:
    await store.insert_tasks([make_task(5)])
    with pytest.raises(StorageError) as failed:
        await store.insert_tasks([make_task(i) for i in range(1, 300)])
    assert isinstance(failed.value.__cause__, sqlite3.IntegrityError)
    assert [task.id for task in await store.list_tasks(TaskFilter())] == [5]


# Queries ---------------------------------------------------------------------------------


async def test_queries_walk_indexes_without_sorting_everything(store: SQLiteStore) -> None:
    async def plan(sql: str, params: list[object]) -> str:
        rows = await store._db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
        return " | ".join(row[3] for row in rows)

    for flt in FILTERS:
        listing = await plan(*list_query(flt))
        assert "TEMP B-TREE" not in listing, (flt, listing)
        if flt.pool or flt.states or flt.task_type:
            assert "SCAN" not in listing, (flt, listing)
    statements: list[str] = []
    await store._db.set_trace_callback(statements.append)
    await store.load_unfinished()
    recovery = await plan(statements[-1], [])
    assert "SEARCH tasks USING INDEX" in recovery, recovery
    counting = await plan("SELECT pool, state, count(*) FROM tasks GROUP BY pool, state", [])
    assert "COVERING INDEX" in counting, counting


async def test_the_purge_walks_the_finished_index_without_a_scan(store: SQLiteStore) -> None:
    statements: list[str] = []
    await store._db.set_trace_callback(statements.append)
    await store.purge_tasks("default", 100.0, {TaskState.SUCCEEDED, TaskState.FAILED}, 1000)
    await store._db.set_trace_callback(None)  # type: ignore[arg-type]
    purge = next(s for s in statements if s.startswith("DELETE FROM tasks"))
    rows = await store._db.execute_fetchall(f"EXPLAIN QUERY PLAN {purge}")
    plan = " | ".join(row[3] for row in rows)
    assert "USING INDEX tasks_finished (pool=? AND finished_at<?)" in plan, plan
    assert "SCAN" not in plan, plan
    assert "TEMP B-TREE" not in plan, plan


# Pools and workers -----------------------------------------------------------------------


async def test_an_updated_pool_keeps_its_creation_time(db_path: Path) -> None:
    clock = FakeClock()
    async with await SQLiteStore.open(db_path, clock=clock) as store:
        await store.upsert_pool(PoolConfig(name="gpu", strategy="least_loaded"))
        clock.advance(60)
        await store.upsert_pool(PoolConfig(name="gpu", strategy="round_robin"))
    rows = await query(db_path, "SELECT strategy, created_at FROM pools WHERE name = 'gpu'")
    assert rows == [("round_robin", clock.now() - 60)]


async def test_worker_connect_heartbeat_disconnect(store: SQLiteStore, db_path: Path) -> None:
    spec = WorkerSpec(
        worker_id="w1",
        pool="gpu",
        capacity=4,
        task_types=frozenset({"resize", "encode"}),
        labels={"zone": "b", "arch": "arm"},
        sdk_version="1.2.3",
    )
    store.worker_connected(spec, 100.0)
    await store.flush()
    row_sql = "SELECT * FROM workers"
    labels, task_types = '{"arch": "arm", "zone": "b"}', '["encode", "resize"]'
    assert await query(db_path, row_sql) == [
        ("w1", "gpu", labels, 4, task_types, "1.2.3", 100.0, None, 100.0)
    ]
    store.worker_heartbeat("w1", 105.0)  # rides along with the next commit
    store.worker_disconnected("w1", 110.0)
    await store.flush()
    assert (await query(db_path, row_sql))[0][-3:] == (100.0, 110.0, 105.0)

    store.worker_disconnected("w1", 120.0)
    store.worker_connected(spec, 121.0)  # reconnected before the commit
    await store.flush()
    assert (await query(db_path, row_sql))[0][-3:] == (121.0, None, 121.0)


# Closing ---------------------------------------------------------------------------------


async def test_close_writes_what_is_queued(db_path: Path) -> None:
    store = await SQLiteStore.open(db_path)
    await store.insert_tasks([make_task(1)])
    store.save(finished(make_task(1)))
    worker = WorkerSpec(worker_id="w", pool="p", capacity=1, task_types=frozenset())
    store.worker_connected(worker, 5.0)
    store.worker_heartbeat("w", 6.0)
    await store.close()
    async with await SQLiteStore.open(db_path) as reopened:
        assert await reopened.get_task(1) == finished(make_task(1))
    assert await query(db_path, "SELECT last_heartbeat FROM workers") == [(6.0,)]


async def test_close_during_a_commit_writes_what_came_after_it(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await SQLiteStore.open(db_path)
    first, second = make_task(1), make_task(2)
    await store.insert_tasks([first, second])
    commit_started, release = held_commits(monkeypatch)
    store.save(finished(first))
    await commit_started.wait()
    store.save(finished(second))  # queued behind the commit in flight
    closing = asyncio.create_task(store.close())
    release.set()
    await closing
    async with await SQLiteStore.open(db_path) as reopened:
        assert await reopened.get_task(2) == finished(second)


async def test_data_survives_reopening(db_path: Path) -> None:
    tasks = listing_tasks()
    async with await SQLiteStore.open(db_path) as store:
        await store.insert_tasks(tasks)
        await store.upsert_pool(PoolConfig(name="gpu"))
    async with await SQLiteStore.open(db_path) as store:
        assert await store.list_tasks(TaskFilter(limit=1000)) == tasks[::-1]
        assert await store.list_pools() == [PoolConfig(name="gpu")]
        assert (await store.max_task_id(), await store.max_seq()) == (60, 60)


async def test_close_raises_when_the_last_commit_fails(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await SQLiteStore.open(db_path)
    await store.insert_tasks([make_task(1)])
    monkeypatch.setattr(sqlite_module, "_commit", failing_commit("disk full"))
    store.save(finished(make_task(1)))
    with pytest.raises(StorageError, match="could not commit: disk full"):
        await store.close()
    await store.close()  # closed all the same
    async with await SQLiteStore.open(db_path) as reopened:
        assert await reopened.get_task(1) == make_task(1)


def test_the_finished_index_condition_names_the_terminal_states() -> None:
    """The SQL condition of the retention index is a literal (a query repeats it word for
    word to use the index); it must name exactly the domain's terminal states."""
    values = sorted(state.value for state in TERMINAL_STATES)
    assert f"state IN ({', '.join(map(str, values))})" == TERMINAL_STATES_SQL
