"""A SQLite store that fails to open leaves no thread behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from broker.storage.sqlite import SQLiteStore


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


async def test_a_failed_connect_has_ended_its_thread(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    before = store_threads()
    for _ in range(5):
        with pytest.raises(Exception, match="unable to open database file"):
            await SQLiteStore.open(tmp_path / "adir")
        assert [t for t in store_threads() if t not in before] == []
