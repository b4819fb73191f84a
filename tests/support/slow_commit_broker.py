"""`taskbroker serve` whose every SQLite commit takes longer, for tests/e2e/test_crash_broker.py.

    python tests/support/slow_commit_broker.py DELAY_S serve [OPTIONS]

Each transaction of the store waits DELAY_S seconds before it is written: results keep
arriving while a commit runs, as on a slow disk, so a kill finds many of them received
and not yet durable unless the broker holds the workers back.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

from broker.storage import sqlite
from broker.storage.groupcommit import WriteBatch
from broker.storage.sqlite_rows import Row

_commit = sqlite._SQLiteWriter.commit


def slow(delay_s: float) -> None:
    async def commit(self: sqlite._SQLiteWriter, batch: WriteBatch[Row]) -> None:
        await asyncio.sleep(delay_s)
        await _commit(self, batch)

    sqlite._SQLiteWriter.commit = commit  # type: ignore[method-assign]


if __name__ == "__main__":
    # Run as a script, its own directory comes first on the path, and its cli.py would
    # shadow the CLI package.
    sys.path.remove(str(Path(__file__).resolve().parent))
    slow(float(sys.argv.pop(1)))
    importlib.import_module("cli.main").main()
