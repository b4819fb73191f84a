"""open_store: which store each URL opens, and a clear error for any other."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from broker.clock import FakeClock
from broker.domain import PoolConfig
from broker.errors import ConfigError
from broker.storage import BACKENDS, MemoryStore, SQLiteStore, open_store
from broker.store_url import SCHEMES, parse_store_url
from tests.support.store import make_task


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where relative paths land


@pytest.mark.parametrize(
    ("url", "file"),
    [
        ("broker.db", "broker.db"),  # a bare path, as ever
        ("data/broker.db", "data/broker.db"),
        ("{tmp}/bare-absolute.db", "bare-absolute.db"),
        ("./name:with-colon.db", "name:with-colon.db"),
        ("sqlite:relative.db", "relative.db"),
        ("SQLite:relative.db", "relative.db"),
        ("sqlite:///{tmp}/absolute.db", "absolute.db"),
    ],
)
async def test_paths_and_sqlite_urls_open_a_sqlite_file(
    url: str, file: str, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    async with await open_store(url.format(tmp=tmp_path)) as store:
        assert isinstance(store, SQLiteStore)
        await store.insert_tasks([make_task(1)])
    async with aiosqlite.connect(tmp_path / file) as db:
        assert list(await db.execute_fetchall("SELECT id FROM tasks")) == [(1,)]


async def test_a_bare_colon_memory_colon_is_still_sqlite_in_memory(tmp_path: Path) -> None:
    async with await open_store(":memory:") as store:
        assert isinstance(store, SQLiteStore)
        await store.insert_tasks([make_task(1)])
        assert await store.get_task(1) == make_task(1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["memory:", "memory://", "MEMORY:"])
async def test_memory_opens_a_memory_store(url: str, tmp_path: Path) -> None:
    async with await open_store(url) as store:
        assert isinstance(store, MemoryStore)
        await store.insert_tasks([make_task(1)])
        assert await store.get_task(1) == make_task(1)
    assert list(tmp_path.iterdir()) == []


async def test_synchronous_and_clock_reach_the_store(tmp_path: Path) -> None:
    clock = FakeClock()
    async with await open_store("sqlite:broker.db", synchronous="NORMAL", clock=clock) as store:
        assert isinstance(store, SQLiteStore)
        assert list(await store._db.execute_fetchall("PRAGMA synchronous")) == [(1,)]
        await store.upsert_pool(PoolConfig(name="gpu"))
    async with aiosqlite.connect(tmp_path / "broker.db") as db:
        rows = await db.execute_fetchall("SELECT created_at FROM pools")
    assert list(rows) == [(clock.now(),)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db.example/broker", "unknown store 'mysql://db.example/broker'"),
        ("postgresql:broker", "postgresql: needs a server"),
        ("nope:broker.db", "a file name with a colon in it: ./nope:broker.db"),
        ("sqlite:", "needs a file path"),
        ("sqlite://", "needs a file path"),
        ("sqlite://host/broker.db", "names a host"),
        ("memory:broker.db", "memory: takes nothing after the colon"),
    ],
)
async def test_anything_else_is_refused_naming_what_is_accepted(
    url: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as refused:
        await open_store(url)
    assert message in str(refused.value)
    if "unknown store" in message:
        for form in (
            "file path",
            "sqlite:///abs/path.db",
            "sqlite:relative.db",
            "memory:",
            "postgresql://user:password@host:port/database",
        ):
            assert form in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # nothing opened


def test_each_backend_is_one_entry() -> None:
    assert sorted(BACKENDS) == sorted(SCHEMES) == ["memory", "postgres", "postgresql", "sqlite"]
    assert parse_store_url("x.db") == ("sqlite", "x.db")
    assert parse_store_url("sqlite:///x.db") == ("sqlite", "/x.db")
    assert parse_store_url("memory:") == ("memory", "")
