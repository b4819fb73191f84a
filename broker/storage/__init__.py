"""Where the broker keeps its state: the store contract (`Store`, broker.storage.contract),
its backends, and `open_store`, which opens one by URL.

Accepted URLs (the broker's `db_path`, `taskbroker serve --db`):

- a bare path, `sqlite:relative.db` or `sqlite:///abs/path.db`: SQLite, durable;
- `memory:`: in memory, gone when the process ends (tests, demos, the simulator).

A backend is one module and one entry in BACKENDS.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

from broker.clock import Clock, SystemClock
from broker.errors import ConfigError
from broker.storage.contract import RollupStore, Store, WorkerLog
from broker.storage.memory import MemoryStore
from broker.storage.sqlite import SQLiteStore

__all__ = [
    "BACKENDS",
    "MemoryStore",
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

    forms: tuple[str, ...]  # the URL forms it accepts, for messages
    # What follows "scheme:" in the URL -> what `open` takes; ConfigError if malformed.
    location: Callable[[str], str]
    # (location, clock, synchronous) -> an open store.
    open: Callable[[str, Clock, str], Awaitable[Store]]


def _sqlite_path(rest: str) -> str:
    if rest.startswith("//"):  # sqlite:///abs/path.db: no host, then an absolute path
        rest = rest[2:]
        if rest and not rest.startswith("/"):
            raise ConfigError(
                f"sqlite://{rest} names a host; write sqlite:///abs/path.db for an absolute"
                " path or sqlite:relative.db for a relative one"
            )
    if not rest:
        raise ConfigError(
            "sqlite: needs a file path, as in sqlite:relative.db or sqlite:///abs/path.db"
        )
    return rest


def _nothing(rest: str) -> str:
    if rest not in ("", "//"):
        raise ConfigError(f"memory: takes nothing after the colon, got {rest!r}")
    return ""


async def _open_sqlite(path: str, clock: Clock, synchronous: str) -> Store:
    return await SQLiteStore.open(path, synchronous=synchronous, clock=clock)


async def _open_memory(_location: str, clock: Clock, _synchronous: str) -> Store:
    return await MemoryStore.open(clock=clock)


BACKENDS: Final[dict[str, StoreBackend]] = {
    "sqlite": StoreBackend(
        ("sqlite:///abs/path.db", "sqlite:relative.db"), _sqlite_path, _open_sqlite
    ),
    "memory": StoreBackend(("memory:",), _nothing, _open_memory),
}

# A scheme has two characters at least, so that a Windows drive (C:\...) reads as a path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def parse_store_url(url: str) -> tuple[str, str]:
    """The backend (a key of BACKENDS) and location a store URL names: a bare path is
    SQLite's, as it is. ConfigError for an unknown scheme or a malformed location."""
    match = _SCHEME.match(url)
    if match is None:
        return "sqlite", url
    scheme = match.group(1).lower()
    backend = BACKENDS.get(scheme)
    if backend is None:
        forms = ", ".join(form for b in BACKENDS.values() for form in b.forms)
        raise ConfigError(
            f"unknown store {url!r}: give a file path or one of {forms}"
            f" (a file name with a colon in it: ./{url})"
        )
    return scheme, backend.location(url[match.end() :])


async def open_store(url: str, *, clock: Clock | None = None, synchronous: str = "FULL") -> Store:
    """Open the store that `url` names (see the module docstring), ready to use; its writer
    starts with the first write, or under `store.run()` in the caller's TaskGroup.

    `synchronous` is SQLite's durability (FULL or NORMAL); other backends ignore it.
    ConfigError if the URL is not one of the accepted forms.
    """
    scheme, location = parse_store_url(url)
    return await BACKENDS[scheme].open(location, clock or SystemClock(), synchronous)
