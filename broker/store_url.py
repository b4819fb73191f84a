"""Store URLs: the forms `open_store` (broker.storage) accepts, checked without opening
anything, so that the configuration can check `db_path` at load.

- a bare path, `sqlite:relative.db` or `sqlite:///abs/path.db`: SQLite, durable;
- `memory:`: in memory, gone when the process ends (tests, demos, the simulator);
- `postgresql://user:password@host:port/database` (or `postgres://`): PostgreSQL, durable,
  and shareable by several brokers (broker.cluster).

Each scheme here has its opener in broker.storage.BACKENDS (a test holds the two lists
to the same keys).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, NamedTuple

from broker.errors import ConfigError

SYNCHRONOUS_MODES: Final = ("FULL", "NORMAL")  # SQLite's durability settings


def redacted(url: str) -> str:
    """A store URL fit to show or log: a password in it becomes ***."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, userinfo = head.partition("//")
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{tail}"


class Scheme(NamedTuple):
    """A URL scheme of the stores."""

    forms: tuple[str, ...]  # the URL forms it accepts, for messages
    # What follows "scheme:" in the URL -> the location its backend opens; ConfigError if
    # malformed.
    location: Callable[[str], str]


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


def _postgres_url(rest: str) -> str:
    if not rest.startswith("//") or len(rest) <= 2:
        raise ConfigError(
            "postgresql: needs a server, as in postgresql://user:password@host:5432/database"
        )
    return f"postgresql:{rest}"


SCHEMES: Final[dict[str, Scheme]] = {
    "sqlite": Scheme(("sqlite:///abs/path.db", "sqlite:relative.db"), _sqlite_path),
    "memory": Scheme(("memory:",), _nothing),
    "postgresql": Scheme(("postgresql://user:password@host:port/database",), _postgres_url),
    "postgres": Scheme(("postgres://user:password@host:port/database",), _postgres_url),
}

# A scheme has two characters at least, so that a Windows drive (C:\...) reads as a path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def parse_store_url(url: str) -> tuple[str, str]:
    """The backend (a key of SCHEMES) and location a store URL names: a bare path is
    SQLite's, as it is. ConfigError for an unknown scheme or a malformed location."""
    match = _SCHEME.match(url)
    if match is None:
        return "sqlite", url
    scheme = match.group(1).lower()
    known = SCHEMES.get(scheme)
    if known is None:
        forms = ", ".join(form for b in SCHEMES.values() for form in b.forms)
        raise ConfigError(
            f"unknown store {url!r}: give a file path or one of {forms}"
            f" (a file name with a colon in it: ./{url})"
        )
    return scheme, known.location(url[match.end() :])
