"""What only the PostgreSQL store has: its URL, its schema versions, its fence. The rest of
what it promises is the store contract (tests/contract), which it runs like every backend."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from broker.domain import TaskState
from broker.errors import BrokerError, StorageError
from broker.storage import PostgresStore, open_store
from broker.storage.postgres_schema import SCHEMA_VERSION
from tests.support.postgres import free_port, fresh_database
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
            await store.durable()
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
