"""The broker's background work runs in one TaskGroup: a crash in it stops the broker
cleanly and says why; a normal shutdown leaves nothing running."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from broker import Broker
from broker.app import BackgroundJobFailed
from broker.core.states import BrokerState
from broker.errors import BrokerError
from broker.observability.rollups import MetricsHistory
from broker.storage.groupcommit import GroupCommit
from cli import _serve
from tests.support.config import make_config
from worker_sdk import Client, TaskbrokerError, Unavailable


def _background_tasks() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("taskbroker-")}


async def test_a_crashed_background_job_stops_the_broker_and_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    crashed = asyncio.Event()

    async def crash(self: MetricsHistory, interval_s: float | None = None) -> None:
        crashed.set()
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(MetricsHistory, "run", crash)
    broker = Broker(make_config(tmp_path))
    with caplog.at_level(logging.CRITICAL, logger="taskbroker.server"):
        await broker.start()
        address = broker.address
        async with asyncio.timeout(10):
            await broker.wait_stopped()
    assert crashed.is_set()
    assert broker.state is BrokerState.STOPPED
    assert isinstance(broker.failure, BackgroundJobFailed)
    assert "metrics history" in str(broker.failure)
    assert "disk on fire" in str(broker.failure)
    assert any("disk on fire" in r.getMessage() for r in caplog.records)
    assert _background_tasks() == set()
    async with Client(address, max_submit_retries=0) as client:
        with pytest.raises(Unavailable):
            await client.submit("t")


async def test_a_clean_shutdown_leaves_no_background_task(tmp_path: Path) -> None:
    async with Broker(make_config(tmp_path)) as broker:
        assert {"taskbroker-reaper", "taskbroker-metrics history"} <= _background_tasks()
    assert broker.failure is None
    assert _background_tasks() == set()


async def test_serve_exits_with_the_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`taskbroker serve` ends with an error (exit 1) rather than as if asked to stop."""

    async def crash(self: MetricsHistory, interval_s: float | None = None) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(MetricsHistory, "run", crash)
    with pytest.raises(BrokerError, match="stopped after a failure: the metrics history failed"):
        async with asyncio.timeout(10):
            await _serve._run(make_config(tmp_path))


async def test_a_dead_store_writer_stops_the_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's writer is one of the supervised jobs: if it dies, the broker does not
    carry on taking tasks it can no longer store."""
    broker = Broker(make_config(tmp_path))
    await broker.start()
    real_commit = GroupCommit._commit_queued

    async def broken(self: GroupCommit[object]) -> None:
        raise RuntimeError("writer bug")

    monkeypatch.setattr(GroupCommit, "_commit_queued", broken)
    async with Client(broker.address, max_submit_retries=0) as client:
        with pytest.raises(TaskbrokerError):
            await client.submit("t")
    async with asyncio.timeout(10):
        await broker.wait_stopped()
    monkeypatch.setattr(GroupCommit, "_commit_queued", real_commit)
    assert broker.state is BrokerState.STOPPED
    assert isinstance(broker.failure, BackgroundJobFailed)
    assert "store writer" in str(broker.failure)
    assert _background_tasks() == set()
