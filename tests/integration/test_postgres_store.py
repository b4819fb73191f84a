"""What only the PostgreSQL store has: its URL, its schema versions, its fence. The rest of
what it promises is the store contract (tests/contract), which it runs like every backend."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import asyncpg
import pytest

from broker import Broker
from broker.domain import TaskState
from broker.errors import BrokerError, StorageError
from broker.storage import PostgresStore, groupcommit, open_store
from broker.storage.groupcommit import WriteBatch
from broker.storage.postgres import batch_statement
from broker.storage.postgres_schema import MIGRATIONS, SCHEMA_VERSION
from broker.storage.sqlite_rows import TASK_COLUMNS, Row, insert_row, update_row
from tests.support.config import make_config
from tests.support.postgres import SUPERUSER, free_port, fresh_database, server
from tests.support.store import finished, make_task


async def test_a_postgresql_url_opens_a_migrated_postgres_store() -> None:
    url = await fresh_database()
    async with await open_store(url) as store:
        assert isinstance(store, PostgresStore)
        await store.insert_tasks([make_task(1)])
        version = await store.pool.fetchval("SELECT version FROM taskbroker_schema")
        assert version == SCHEMA_VERSION
    async with await open_store(url.replace("postgresql:", "postgres:", 1)) as again:
        assert await again.get_task(1) == make_task(1)  # kept, and migrated only once


async def test_a_newer_schema_is_refused() -> None:
    url = await fresh_database()
    async with await open_store(url) as store:
        assert isinstance(store, PostgresStore)
        await store.pool.execute("UPDATE taskbroker_schema SET version = version + 1")
    with pytest.raises(BrokerError, match="knows only up to"):
        await open_store(url)


async def test_a_database_of_schema_version_2_is_migrated_keeping_its_tasks() -> None:
    """Step 3 adds a task's result content type (empty for the tasks already stored), arm
    statistics and API tokens."""
    url = await fresh_database()
    conn = await asyncpg.connect(url)
    try:
        for step in MIGRATIONS[:2]:
            for statement in step:
                await conn.execute(statement)
        await conn.execute("CREATE TABLE taskbroker_schema (version INTEGER)")
        await conn.execute("INSERT INTO taskbroker_schema VALUES (2)")
        old_columns = TASK_COLUMNS.replace(" result_content_type,", "")
        row = insert_row(finished(make_task(1)))
        old_row = (*row[:20], *row[21:])
        marks = ", ".join(f"${i + 1}" for i in range(len(old_row)))
        await conn.execute(f"INSERT INTO tasks ({old_columns}) VALUES ({marks})", *old_row)
    finally:
        await conn.close()
    async with await open_store(url) as store:
        assert isinstance(store, PostgresStore)
        assert await store.pool.fetchval("SELECT version FROM taskbroker_schema") == 3
        assert await store.get_task(1) == finished(make_task(1))
        assert await store.load_arm_stats() == {}
        assert await store.load_tokens() == []


async def test_a_save_of_a_task_inserted_in_the_same_batch_is_written_with_its_insert() -> None:
    """The batch's one statement cannot touch a row twice: the save is folded into the
    insert, every state column included (the result's content type, the last of them)."""
    async with await open_store(await fresh_database()) as store:
        assert isinstance(store, PostgresStore)
        task = make_task(1, payload_content_type="text/csv", submitter="ci")
        done = finished(task, result=b"{}", result_content_type="application/json")
        batch: WriteBatch[Row] = WriteBatch()
        batch.inserts.append(insert_row(task))
        batch.saves[task.id] = update_row(done)
        statement = batch_statement(batch, None)
        await store.pool.execute(statement.sql(), *statement.args)
        assert await store.get_task(1) == done


async def test_a_save_rides_along_with_the_next_commit_someone_waits_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on SQLite: a save alone does not start a commit; the next write that is waited
    for commits both, in one statement."""
    monkeypatch.setattr(groupcommit, "SAVE_DELAY_S", 3600.0)
    async with await open_store(await fresh_database()) as store:
        assert isinstance(store, PostgresStore)
        first = make_task(1)
        await store.insert_tasks([first])
        before = store.commits
        store.save(finished(first, result_content_type="text/plain"))
        for _ in range(20):  # every chance for the writer to start a commit of its own
            await asyncio.sleep(0)
        assert store.commits == before
        await store.insert_tasks([make_task(2)])
        assert store.commits == before + 1
        rows = await store.pool.fetch("SELECT id, state, result_content_type FROM tasks")
        assert sorted(map(tuple, rows)) == [
            (1, int(TaskState.SUCCEEDED), "text/plain"),
            (2, int(TaskState.PENDING), ""),
        ]


async def test_an_unreachable_server_is_a_storage_error_without_the_password() -> None:
    with pytest.raises(StorageError, match="cannot connect") as refused:
        await open_store(f"postgresql://u:secret@127.0.0.1:{free_port()}/db")
    assert "secret" not in str(refused.value)


async def test_a_commit_under_a_lease_that_moved_on_writes_nothing() -> None:
    async with await open_store(await fresh_database()) as store:
        assert isinstance(store, PostgresStore)
        await store.pool.execute("INSERT INTO pool_leases VALUES ('default', 'b1', 1, 0, 1e12)")
        epochs = {"default": 1}
        store.set_fence(lambda: (list(epochs), list(epochs.values())))
        await store.insert_tasks([make_task(1)])  # under epoch 1, which holds
        # Another broker takes the pool: epoch 2. A write made under epoch 1 is refused.
        await store.pool.execute("UPDATE pool_leases SET owner = 'b2', epoch = 2")
        store.save(dataclasses.replace(make_task(1), state=TaskState.RUNNING))
        with pytest.raises(StorageError, match="lease has moved on"):
            await store.flush()  # a held task's save: durable() would not wait for it
        with pytest.raises(StorageError):
            await store.insert_tasks([make_task(2)])
        store.set_fence(None)
        assert await store.get_task(1) == make_task(1)
        assert await store.get_task(2) is None


async def test_a_commit_under_a_fence_notifies_every_new_and_ended_task() -> None:
    url = await fresh_database()
    async with await open_store(url) as store:
        assert isinstance(store, PostgresStore)
        store.set_fence(lambda: ([], []), source="b1")
        heard: list[tuple[str, str]] = []
        listener = await asyncpg.connect(url)
        try:
            for channel in ("taskbroker_submitted", "taskbroker_finished"):
                await listener.add_listener(channel, lambda *a: heard.append((a[2], a[3])))
            # Two thousand ids do not fit one notification's 8000 bytes: several go.
            tasks = [make_task(10**9 + i) for i in range(2000)]
            await store.insert_tasks(tasks)
            await store.insert_tasks([finished(make_task(1))])
            async with asyncio.timeout(5):
                while len({i for _, p in heard for i in p.split(":")[1].split(",")}) < 2001:
                    await asyncio.sleep(0.01)
        finally:
            await listener.close()
    submitted = [p for c, p in heard if c == "taskbroker_submitted"]
    assert len(submitted) > 1
    assert all(p.startswith("b1|default:") and len(p) < 8000 for p in submitted)
    ids = {int(i) for p in submitted for i in p.split(":")[1].split(",")}
    assert ids == {t.id for t in tasks} | {1}
    assert ("taskbroker_finished", "b1|:1") in heard


async def test_a_password_in_the_store_url_never_reaches_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The test server trusts loopback, so any password connects; it must still not show.
    secret = "pw-s3cret-42"
    url = (await fresh_database()).replace(f"//{SUPERUSER}@", f"//{SUPERUSER}:{secret}@", 1)
    caplog.set_level(logging.DEBUG)
    async with Broker(make_config(tmp_path, db_path=url)):
        pass
    unreachable = url.replace(f":{server().port}/", f":{free_port()}/", 1)
    with pytest.raises(StorageError) as refused:
        await open_store(unreachable)
    assert "taskbroker listening on" in caplog.text
    assert secret not in caplog.text
    assert secret not in str(refused.value)
    assert f"{SUPERUSER}:***@" in str(refused.value)
