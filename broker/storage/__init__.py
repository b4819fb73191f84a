"""Where the broker keeps its state: the store contract (`Store`, broker.storage.contract),
its backends, and `open_store`, which opens one by URL.

Accepted URLs (the broker's `db_path`, `taskbroker serve --db`):

- a bare path, `sqlite:relative.db` or `sqlite:///abs/path.db`: SQLite, durable;
- `memory:`: in memory, gone when the process ends (tests, demos, the simulator);
- `postgresql://user:password@host:port/database` (or `postgres://`): PostgreSQL.

A backend is one module, its opener in BACKENDS and its URL scheme in
broker.store_url.SCHEMES.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

from broker.clock import Clock, SystemClock
from broker.storage.contract import RollupStore, Store, WorkerLog
from broker.storage.memory import MemoryStore
from broker.storage.postgres import PostgresStore
from broker.storage.sqlite import SQLiteStore
from broker.store_url import parse_store_url

__all__ = [
    "BACKENDS",
    "MemoryStore",
    "PostgresStore",
    "RollupStore",
    "SQLiteStore",
    "Store",
    "StoreBackend",
    "WorkerLog",
    "open_store",
    "parse_store_url",
]


class StoreBackend(NamedTuple):
    """One kind of store that `open_store` can open."""

    # (location, clock, synchronous) -> an open store.
    open: Callable[[str, Clock, str], Awaitable[Store]]


async def _open_sqlite(path: str, clock: Clock, synchronous: str) -> Store:
    return await SQLiteStore.open(path, synchronous=synchronous, clock=clock)


async def _open_memory(_location: str, clock: Clock, _synchronous: str) -> Store:
    return await MemoryStore.open(clock=clock)


async def _open_postgres(url: str, clock: Clock, _synchronous: str) -> Store:
    return await PostgresStore.open(url, clock=clock)


# One entry per URL scheme of broker.store_url.SCHEMES.
BACKENDS: Final[dict[str, StoreBackend]] = {
    "sqlite": StoreBackend(_open_sqlite),
    "memory": StoreBackend(_open_memory),
    "postgresql": StoreBackend(_open_postgres),
    "postgres": StoreBackend(_open_postgres),
}


async def open_store(url: str, *, clock: Clock | None = None, synchronous: str = "FULL") -> Store:
    """Open the store that `url` names (see the module docstring), ready to use; its writer
    starts with the first write, or under `store.run()` in the caller's TaskGroup.

    `synchronous` is SQLite's durability (FULL or NORMAL); other backends ignore it.
    ConfigError if the URL is not one of the accepted forms.
    """
    scheme, location = parse_store_url(url)
    return await BACKENDS[scheme].open(location, clock or SystemClock(), synchronous)
