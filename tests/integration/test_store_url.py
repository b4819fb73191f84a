"""The store URL forms through the config, `taskbroker serve --db` and a running broker."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest
import uvloop

from broker import Broker, BrokerConfig, load_config
from broker.domain import TaskSpec, TaskState
from broker.errors import ConfigError
from cli import _serve
from cli._common import EVENT_LOOP_ENV
from tests.support.cli import assert_one_line_error, invoke
from tests.support.config import make_config
from tests.support.engine import RecordingChannel, ok, worker


@pytest.mark.parametrize("url", ["broker.db", "sqlite:broker.db", "sqlite:///b.db", "memory:"])
def test_the_config_takes_every_store_url(url: str) -> None:
    assert load_config(None, {"TASKBROKER_DB_PATH": url}).db_path == url


def test_the_config_refuses_another_url_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^db_path: unknown store 'redis://x'.*memory:"):
        BrokerConfig(db_path="redis://x")


def test_serve_takes_a_store_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import broker.observability.logs

    started: list[BrokerConfig] = []

    async def run(config: BrokerConfig, *args: Any) -> None:
        started.append(config)

    monkeypatch.setattr(_serve, "_run", run)
    # Not the real one: it would replace the root logger's handlers, pytest's among them.
    monkeypatch.setattr(broker.observability.logs, "configure", lambda *args: None)
    monkeypatch.delenv("TASKBROKER_DB_PATH", raising=False)
    for url in ("memory:", f"sqlite://{tmp_path}/a.db", str(tmp_path / "b.db")):
        result = invoke("serve", "--port", "0", "--db", url)
        assert result.exit_code == 0, result.output
    assert [config.db_path for config in started] == [
        "memory:",
        f"sqlite://{tmp_path}/a.db",
        str(tmp_path / "b.db"),
    ]
    line = assert_one_line_error(invoke("serve", "--port", "0", "--db", "redis://x"))
    assert "db_path: unknown store 'redis://x'" in line
    assert "sqlite:///abs/path.db" in line
    assert len(started) == 3  # the bad one started nothing


async def test_a_broker_runs_on_a_memory_store(tmp_path: Path) -> None:
    async with Broker(make_config(tmp_path, db_path="memory:")) as broker:
        engine = broker.engine
        channel = RecordingChannel()
        engine.connect_worker(worker("w1", capacity=1), channel)
        (submitted,) = await engine.submit([TaskSpec(task_type="t")])
        (assigned,) = await channel.until_assigned(1)
        engine.report("w1", [assigned.id], [ok(assigned)])
        (done,) = await engine.wait([submitted.id], max_wait=5)
        assert done.state is TaskState.SUCCEEDED
        assert (await engine.get(submitted.id)).result == b"done"
    assert list(tmp_path.iterdir()) == []  # no file anywhere


def test_serve_runs_with_what_it_imported_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of the cyclic collector's sight: full collections walk only what came after."""
    import broker.observability.logs

    frozen: list[int] = []

    async def run(config: BrokerConfig, *args: Any) -> None:
        frozen.append(gc.get_freeze_count())

    monkeypatch.setattr(_serve, "_run", run)
    monkeypatch.setattr(broker.observability.logs, "configure", lambda *args: None)
    gc.unfreeze()
    try:
        assert invoke("serve", "--port", "0", "--db", "memory:").exit_code == 0
    finally:
        gc.unfreeze()  # this test process runs on as it was
    assert frozen
    assert frozen[0] > 10_000  # the modules' objects: broker, gRPC, protobuf, OpenTelemetry


def test_serve_runs_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    import broker.observability.logs

    loops: list[type] = []

    async def run(config: BrokerConfig, *args: Any) -> None:
        loops.append(type(asyncio.get_running_loop()))

    monkeypatch.setattr(_serve, "_run", run)
    monkeypatch.setattr(broker.observability.logs, "configure", lambda *args: None)
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    try:
        assert invoke("serve", "--port", "0", "--db", "memory:").exit_code == 0
        monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
        assert invoke("serve", "--port", "0", "--db", "memory:").exit_code == 0
        monkeypatch.setenv(EVENT_LOOP_ENV, "libuv")
        line = assert_one_line_error(invoke("serve", "--port", "0", "--db", "memory:"), 2)
    finally:
        gc.unfreeze()
    assert loops == [uvloop.Loop, asyncio.SelectorEventLoop]
    assert "TASKBROKER_EVENT_LOOP must be auto, uvloop or asyncio, not 'libuv'" in line
