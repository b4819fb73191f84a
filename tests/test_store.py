"""SQLiteStore on real files: schema, round trips, group commit, queries, durability."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from broker.clock import FakeClock
from broker.domain import (
    PoolConfig,
    Task,
    TaskError,
    TaskFilter,
    TaskSpec,
    TaskState,
    WorkerSpec,
)
from broker.errors import BrokerError, InvalidArgument, StorageError, Unavailable
from broker.store import SCHEMA_VERSION, SQLiteStore, _list_query

PENDING, ASSIGNED, RUNNING = TaskState.PENDING, TaskState.ASSIGNED, TaskState.RUNNING
SUCCEEDED, FAILED, CANCELLED = TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED


def make_task(task_id: int, **changes: Any) -> Task:
    spec = TaskSpec(
        task_type=changes.pop("task_type", "resize"),
        payload=changes.pop("payload", b"\x00payload"),
        priority=changes.pop("priority", 0),
        pool=changes.pop("pool", "default"),
    )
    fields: dict[str, Any] = {"seq": task_id, "created_at": 1_700_000_000.5} | changes
    return Task(id=task_id, spec=spec, **fields)


def finished(task: Task, state: TaskState = SUCCEEDED, **changes: Any) -> Task:
    """The task after one attempt on worker w1 that ended in `state`."""
    return dataclasses.replace(
        task,
        state=state,
        attempts=task.attempts + 1,
        worker_id="w1",
        assigned_at=task.created_at + 1,
        started_at=task.created_at + 2,
        finished_at=task.created_at + 3,
        **changes,
    )


async def query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
    """Read the file through a connection of its own: sees only what was committed."""
    async with aiosqlite.connect(path) as db:
        return list(await db.execute_fetchall(sql, params))


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
    assert {name for kind, name, _ in schema if kind == "table"} == {"pools", "tasks", "workers"}
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


async def test_a_failing_migration_changes_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker.store as store_module

    steps = (*store_module._MIGRATIONS, ("CREATE TABLE extra (x)", "THIS IS NOT SQL"))
    monkeypatch.setattr(store_module, "_MIGRATIONS", steps)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(steps))
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

ROUND_TRIP_CASES = {
    "pending": make_task(1),
    "empty payload": make_task(2, payload=b""),
    "large payload": make_task(3, payload=os.urandom(2 * 1024 * 1024)),
    "text everywhere": make_task(
        4, task_type="ünïcode/тип", pool="gpu.a-1", priority=-1000, worker_id="wörker"
    ),
    "succeeded": finished(make_task(5, priority=1000), result=b"\x00\xffresult"),
    "failed": finished(
        make_task(6),
        FAILED,
        error=TaskError(type="ValueError", message="bad input", traceback="Traceback..."),
    ),
    "failed, error with empty fields": finished(make_task(7), FAILED, error=TaskError(type="X")),
    "cancelled": finished(make_task(8), CANCELLED),
}


@pytest.mark.parametrize("task", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
async def test_insert_then_get_round_trips_every_field(db_path: Path, task: Task) -> None:
    async with await SQLiteStore.open(db_path) as store:
        await store.insert_tasks([task])
        assert await store.get_task(task.id) == task
    async with await SQLiteStore.open(db_path) as store:
        assert await store.get_task(task.id) == task


async def test_error_none_is_stored_as_null(store: SQLiteStore, db_path: Path) -> None:
    await store.insert_tasks([make_task(1), ROUND_TRIP_CASES["failed, error with empty fields"]])
    sql = "SELECT error_type, error_message, error_traceback FROM tasks ORDER BY id"
    assert await query(db_path, sql) == [(None, None, None), ("X", "", "")]


async def test_get_of_a_missing_task_is_none(store: SQLiteStore) -> None:
    assert await store.get_task(42) is None


async def test_save_round_trips_every_field_but_the_spec(store: SQLiteStore) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    updated = finished(task, FAILED, seq=99, error=TaskError(type="E", message="m", traceback="t"))
    store.save(updated)
    await store.flush()
    assert await store.get_task(1) == updated
    store.save(dataclasses.replace(updated, state=PENDING, error=None, worker_id=""))
    await store.flush()
    assert await store.get_task(1) == dataclasses.replace(
        updated, state=PENDING, error=None, worker_id=""
    )


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


async def test_durable_is_done_at_once_when_nothing_is_queued(store: SQLiteStore) -> None:
    assert store.durable().done()


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


async def test_writes_during_a_commit_go_into_the_next_one(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    first, second = make_task(1), make_task(2)
    await store.insert_tasks([first, second])
    commit_started, release = asyncio.Event(), asyncio.Event()
    commit = store._db.commit

    async def held_commit() -> None:
        commit_started.set()
        await release.wait()
        await commit()

    monkeypatch.setattr(store._db, "commit", held_commit)
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


async def test_cancelling_one_waiter_leaves_the_others(store: SQLiteStore) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    store.save(finished(task))
    abandoned, kept = store.durable(), store.durable()
    abandoned.cancel()
    await kept
    assert await store.get_task(1) == finished(task)


async def test_a_failed_commit_fails_its_waiters_and_the_writer_goes_on(
    store: SQLiteStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    db_path: Path,
) -> None:
    await store.insert_tasks([make_task(1)])
    commit = store._db.commit

    async def broken_commit() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store._db, "commit", broken_commit)
    store.save(finished(make_task(1)))
    with caplog.at_level(logging.ERROR, logger="taskbroker.store"):
        results = await asyncio.gather(
            store.insert_tasks([make_task(2)]), store.flush(), return_exceptions=True
        )
    causes = [r.__cause__ for r in results if isinstance(r, StorageError)]
    assert [str(c) for c in causes] == ["disk I/O error", "disk I/O error"]
    assert any(r.name == "taskbroker.store" and r.exc_info for r in caplog.records)

    monkeypatch.setattr(store._db, "commit", commit)
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


async def test_reads_see_writes_queued_before_them(store: SQLiteStore) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    store.save(finished(task))
    assert await store.get_task(1) == finished(task)


# Queries ---------------------------------------------------------------------------------


async def test_load_unfinished_returns_only_live_tasks_in_seq_order(store: SQLiteStore) -> None:
    states = [PENDING, SUCCEEDED, RUNNING, FAILED, ASSIGNED, CANCELLED, PENDING]
    seqs = [50, 10, 40, 5, 20, 1, 30]
    tasks = [
        make_task(i + 1, state=state, seq=seq)
        for i, (state, seq) in enumerate(zip(states, seqs, strict=True))
    ]
    await store.insert_tasks(tasks)
    unfinished = await store.load_unfinished()
    assert [t.id for t in unfinished] == [5, 7, 3, 1]  # seq 20, 30, 40, 50
    assert unfinished == sorted((t for t in tasks if not t.state.terminal), key=lambda t: t.seq)


async def test_max_task_id_and_max_seq(store: SQLiteStore) -> None:
    assert (await store.max_task_id(), await store.max_seq()) == (0, 0)
    await store.insert_tasks([make_task(7, seq=3), make_task(5, seq=9)])
    assert (await store.max_task_id(), await store.max_seq()) == (7, 9)


def listing_tasks() -> list[Task]:
    """60 tasks over three pools, two types and every state."""
    pools, types, states = ["default", "gpu", "tiny"], ["resize", "encode"], list(TaskState)
    return [
        make_task(
            i,
            pool=pools[i % 7 % 3],
            task_type=types[i % 5 % 2],
            state=states[i % len(states)],
        )
        for i in range(1, 61)
    ]


def expected(tasks: list[Task], flt: TaskFilter) -> list[int]:
    kept = [
        t.id
        for t in tasks
        if (not flt.pool or t.spec.pool == flt.pool)
        and (not flt.states or t.state in flt.states)
        and (not flt.task_type or t.spec.task_type == flt.task_type)
        and (flt.before_id is None or t.id < flt.before_id)
    ]
    return sorted(kept, reverse=True)[: flt.limit]


FILTERS = [
    TaskFilter(pool=pool, states=states, task_type=task_type, before_id=before_id, limit=limit)
    for pool in ["", "gpu", "nope"]
    for states in [frozenset(), frozenset({FAILED}), frozenset({PENDING, RUNNING, CANCELLED})]
    for task_type in ["", "encode"]
    for before_id in [None, 40]
    for limit in [1, 7, 100]
]


async def test_list_tasks_matches_a_plain_filter(store: SQLiteStore) -> None:
    tasks = listing_tasks()
    await store.insert_tasks(tasks)
    for flt in FILTERS:
        assert [t.id for t in await store.list_tasks(flt)] == expected(tasks, flt), flt
    everything = await store.list_tasks(TaskFilter(limit=1000))
    assert everything == sorted(tasks, key=lambda t: t.id, reverse=True)


@pytest.mark.parametrize("flt", [TaskFilter(), TaskFilter(pool="gpu", states=frozenset({FAILED}))])
async def test_paging_with_before_id_visits_every_task_once(
    store: SQLiteStore, flt: TaskFilter
) -> None:
    tasks = listing_tasks()
    await store.insert_tasks(tasks)
    seen: list[int] = []
    page = dataclasses.replace(flt, limit=4)
    while batch := await store.list_tasks(page):
        seen += [t.id for t in batch]
        page = dataclasses.replace(page, before_id=batch[-1].id)
    assert seen == expected(tasks, dataclasses.replace(flt, limit=1000))


async def test_list_tasks_limits(store: SQLiteStore) -> None:
    await store.insert_tasks(listing_tasks())
    assert await store.list_tasks(TaskFilter(limit=0)) == []
    with pytest.raises(InvalidArgument, match="limit"):
        await store.list_tasks(TaskFilter(limit=-1))


async def test_queries_walk_indexes_without_sorting_everything(store: SQLiteStore) -> None:
    async def plan(sql: str, params: list[object]) -> str:
        rows = await store._db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
        return " | ".join(row[3] for row in rows)

    for flt in FILTERS:
        listing = await plan(*_list_query(flt))
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


async def test_count_by_pool_state(store: SQLiteStore) -> None:
    assert await store.count_by_pool_state() == {}
    tasks = listing_tasks()
    await store.insert_tasks(tasks)
    assert await store.count_by_pool_state() == Counter((t.spec.pool, t.state) for t in tasks)


# Pools and workers -----------------------------------------------------------------------


async def test_pools_upsert_and_list(db_path: Path) -> None:
    clock = FakeClock()
    async with await SQLiteStore.open(db_path, clock=clock) as store:
        assert await store.list_pools() == []
        await store.upsert_pool(PoolConfig(name="gpu", strategy="least_loaded"))
        await store.upsert_pool(PoolConfig(name="default"))
        clock.advance(60)
        await store.upsert_pool(PoolConfig(name="gpu", strategy="round_robin"))
        assert await store.list_pools() == [
            PoolConfig(name="default"),
            PoolConfig(name="gpu", strategy="round_robin"),
        ]
    created = await query(db_path, "SELECT created_at FROM pools WHERE name = 'gpu'")
    assert created == [(clock.now() - 60,)]  # an update keeps the creation time


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
    commit_started, release = asyncio.Event(), asyncio.Event()
    commit = store._db.commit

    async def held_commit() -> None:
        commit_started.set()
        await release.wait()
        await commit()

    monkeypatch.setattr(store._db, "commit", held_commit)
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


WRITES: dict[str, Callable[[SQLiteStore], object]] = {
    "insert_tasks": lambda s: s.insert_tasks([make_task(2)]),
    "save": lambda s: s.save(make_task(1)),
    "upsert_pool": lambda s: s.upsert_pool(PoolConfig(name="p")),
    "worker_heartbeat": lambda s: s.worker_heartbeat("w", 1.0),
    "worker_disconnected": lambda s: s.worker_disconnected("w", 1.0),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
async def test_after_close_writes_and_reads_are_refused(
    db_path: Path, write: Callable[[SQLiteStore], object]
) -> None:
    store = await SQLiteStore.open(db_path)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(Unavailable):
        result = write(store)
        if isinstance(result, Coroutine):
            await result
    with pytest.raises(Unavailable):
        await store.get_task(1)


async def test_close_raises_when_the_last_commit_fails(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await SQLiteStore.open(db_path)
    await store.insert_tasks([make_task(1)])

    async def broken_commit() -> None:
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(store._db, "commit", broken_commit)
    store.save(finished(make_task(1)))
    with pytest.raises(StorageError, match="could not commit: disk full"):
        await store.close()
    await store.close()  # closed all the same
    async with await SQLiteStore.open(db_path) as reopened:
        assert await reopened.get_task(1) == make_task(1)
