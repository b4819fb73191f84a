"""Runtime reconfiguration: UpdatePool, a reload of the config file, and the audit of both.

Each path validates before it changes anything, persists what it changed in SQLite, and
records who changed what and when (`config history`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker import Broker
from broker.domain import PoolConfig
from broker.errors import FailedPrecondition, InvalidArgument
from tests.support.config import make_config
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc

CONFIG = """
[broker]
host = "127.0.0.1"
port = 0
db_path = {db}

[pools.default]
strategy = "round_robin"

[pools.gpu]
strategy = "least_loaded"
max_queue = {gpu_max_queue}
"""


def write_config(path: Path, db: Path, gpu_max_queue: int = 100, extra: str = "") -> Path:
    path.write_text(CONFIG.format(db=json.dumps(str(db)), gpu_max_queue=gpu_max_queue) + extra)
    return path


@pytest.fixture
async def configured(tmp_path: Path) -> AsyncIterator[tuple[Broker, Path]]:
    from broker.config import load_config

    path = write_config(tmp_path / "taskbroker.toml", tmp_path / "broker.db")
    async with Broker(load_config(path, {}), config_path=path) as broker:
        yield broker, path


async def history(broker: Broker, pool: str = "") -> list[_admin.ConfigChange]:
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _admin_grpc.AdminServiceStub(channel)
        answer = await stub.ConfigHistory(_admin.ConfigHistoryRequest(pool=pool))
    return list(answer.changes)


async def test_update_pool_is_audited_with_who_and_what(
    configured: tuple[Broker, Path],
) -> None:
    broker, _ = configured
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _admin_grpc.AdminServiceStub(channel)
        (pool,) = [
            p for p in (await stub.ListPools(_admin.ListPoolsRequest())).pools if p.name == "gpu"
        ]
        pool.max_queue = 500
        pool.strategy = "predictive"
        await stub.UpdatePool(
            _admin.UpdatePoolRequest(pool=pool), metadata=(("x-taskbroker-client", "alice"),)
        )
        pool.max_queue = 20_000_000  # over the limit: refused, nothing changes
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdatePool(_admin.UpdatePoolRequest(pool=pool))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "max_queue" in (refused.value.details() or "")
    latest = (await history(broker, "gpu"))[0]
    assert (latest.who, latest.source, list(latest.fields)) == (
        "alice",
        "update_pool",
        ["max_queue", "strategy"],
    )
    assert json.loads(latest.before)["max_queue"] == 100
    assert json.loads(latest.after)["strategy"] == "predictive"
    assert {p.name: p.max_queue for p in broker.engine.pools()}["gpu"] == 500


async def test_a_reload_applies_changed_pools_and_creates_new_ones(
    configured: tuple[Broker, Path], tmp_path: Path
) -> None:
    broker, path = configured
    write_config(
        path,
        tmp_path / "broker.db",
        extra='\n[pools.batch]\nstrategy = "round_robin"\nmax_inflight = 4\n',
        gpu_max_queue=250,
    )
    changes = await broker.reload_config(who="ops")
    assert sorted((c.pool, c.source, c.who) for c in changes) == [
        ("batch", "reload", "ops"),
        ("gpu", "reload", "ops"),
    ]
    pools = {p.name: p for p in broker.engine.pools()}
    assert pools["gpu"].max_queue == 250
    assert pools["batch"].max_inflight == 4
    assert await broker.reload_config(who="ops") == []  # nothing changed since


async def test_a_bad_reload_changes_nothing(
    configured: tuple[Broker, Path], tmp_path: Path
) -> None:
    broker, path = configured
    before = broker.engine.pools()
    write_config(
        path,
        tmp_path / "broker.db",
        extra='\n[pools.batch]\nstrategy = "fastest"\n',
        gpu_max_queue=250,
    )
    with pytest.raises(InvalidArgument, match=r"pools.batch.strategy"):
        await broker.reload_config(who="ops")
    assert broker.engine.pools() == before
    path.write_text("this is [not toml")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        await broker.reload_config()
    assert broker.engine.pools() == before


async def test_a_lease_within_two_heartbeats_is_refused_at_run_time(
    configured: tuple[Broker, Path], tmp_path: Path
) -> None:
    broker, path = configured  # heartbeat_interval_s is 5: a lease needs 10 s at least
    before = broker.engine.pools()
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _admin_grpc.AdminServiceStub(channel)
        (pool,) = [
            p for p in (await stub.ListPools(_admin.ListPoolsRequest())).pools if p.name == "gpu"
        ]
        pool.lease_s = 9.0
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.UpdatePool(_admin.UpdatePoolRequest(pool=pool))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "pools.gpu.lease_s: must be 0 (the heartbeat timeout) or at least 2" in (
            refused.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreatePool(
                _admin.CreatePoolRequest(pool=_admin.Pool(name="short", lease_s=1.0))
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "pools.short.lease_s" in (refused.value.details() or "")
        pool.lease_s = 10.0
        await stub.UpdatePool(_admin.UpdatePoolRequest(pool=pool))
    assert {p.name: p.lease_s for p in broker.engine.pools()}["gpu"] == 10.0
    before = broker.engine.pools()
    # A reload is checked against the interval the broker runs with, even if the file
    # changes the interval too (that takes effect at the next start).
    write_config(path, tmp_path / "broker.db", extra="\n[pools.batch]\nlease_s = 4.0\n")
    with pytest.raises(InvalidArgument, match=r"pools\.batch\.lease_s"):
        await broker.reload_config(who="ops")
    text = path.read_text().replace("port = 0\n", "port = 0\nheartbeat_interval_s = 1.0\n")
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=r"config not reloaded: pools\.batch\.lease_s"):
        await broker.reload_config(who="ops")
    assert broker.engine.pools() == before


async def test_reload_over_grpc_and_without_a_config_file(
    configured: tuple[Broker, Path], tmp_path: Path
) -> None:
    broker, path = configured
    write_config(path, tmp_path / "broker.db", gpu_max_queue=7)
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _admin_grpc.AdminServiceStub(channel)
        answer = await stub.ReloadConfig(
            _admin.ReloadConfigRequest(), metadata=(("x-taskbroker-client", "bob"),)
        )
    ((change),) = answer.changes
    assert (change.pool, change.who, list(change.fields)) == ("gpu", "bob", ["max_queue"])
    (tmp_path / "other").mkdir()
    async with Broker(make_config(tmp_path / "other")) as plain:
        with pytest.raises(FailedPrecondition, match="without a config file"):
            await plain.reload_config()


async def test_changes_persist_and_the_audit_survives_a_restart(tmp_path: Path) -> None:
    from broker.config import load_config

    path = write_config(tmp_path / "taskbroker.toml", tmp_path / "broker.db")
    async with Broker(load_config(path, {}), config_path=path) as broker:
        await broker.engine.create_pool(PoolConfig(name="adhoc", max_queue=9), who="carol")
    write_config(path, tmp_path / "broker.db", gpu_max_queue=3)
    async with Broker(load_config(path, {}), config_path=path) as broker:
        pools = {p.name: p for p in broker.engine.pools()}
        assert pools["adhoc"].max_queue == 9  # made at run time, kept
        assert pools["gpu"].max_queue == 3  # the file changed between the runs
        changes = await history(broker)
    by_pool = {(c.pool, c.source, c.who) for c in changes}
    assert ("adhoc", "create_pool", "carol") in by_pool
    assert ("gpu", "startup", "config file") in by_pool


async def test_config_history_refuses_an_unknown_pool_and_a_bad_limit(
    configured: tuple[Broker, Path],
) -> None:
    broker, _ = configured
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _admin_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.ConfigHistory(_admin.ConfigHistoryRequest(pool="nope"))
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
        assert "nope" in (unknown.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await stub.ConfigHistory(_admin.ConfigHistoryRequest(limit=20_000))
        assert too_many.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "limit" in (too_many.value.details() or "")


async def set_gpu(broker: Broker, **settings: object) -> None:
    """Change the gpu pool at run time, through UpdatePool."""
    async with grpc.aio.insecure_channel(broker.address) as channel:
        stub = _admin_grpc.AdminServiceStub(channel)
        (pool,) = [
            p for p in (await stub.ListPools(_admin.ListPoolsRequest())).pools if p.name == "gpu"
        ]
        for key, value in settings.items():
            setattr(pool, key, value)
        await stub.UpdatePool(
            _admin.UpdatePoolRequest(pool=pool), metadata=(("x-taskbroker-client", "alice"),)
        )


def gpu(broker: Broker) -> PoolConfig:
    return {p.name: p for p in broker.engine.pools()}["gpu"]


async def test_a_run_time_change_stands_until_the_file_changes_that_key(
    configured: tuple[Broker, Path], tmp_path: Path
) -> None:
    broker, path = configured
    await set_gpu(broker, max_queue=500, strategy="predictive")
    assert await broker.reload_config(who="ops") == []  # the file is as it was
    assert (gpu(broker).max_queue, gpu(broker).strategy) == (500, "predictive")
    assert (await history(broker, "gpu"))[0].source == "update_pool"

    write_config(path, tmp_path / "broker.db", gpu_max_queue=250)
    (change,) = await broker.reload_config(who="ops")
    assert (change.pool, change.who, change.source, change.fields) == (
        "gpu",
        "ops",
        "reload",
        ("max_queue",),
    )
    assert json.loads(change.before)["max_queue"] == 500
    # The file's new value applies; the key it did not change keeps its run-time value.
    assert (gpu(broker).max_queue, gpu(broker).strategy) == (250, "predictive")
    assert await broker.reload_config(who="ops") == []
    await set_gpu(broker, max_queue=600)
    assert await broker.reload_config(who="ops") == []
    assert gpu(broker).max_queue == 600


async def test_a_restart_keeps_run_time_changes_unless_the_file_changed_the_key(
    tmp_path: Path,
) -> None:
    from broker.config import load_config

    path = write_config(tmp_path / "taskbroker.toml", tmp_path / "broker.db")
    async with Broker(load_config(path, {}), config_path=path) as broker:
        await set_gpu(broker, max_queue=500, strategy="predictive")
    async with Broker(load_config(path, {}), config_path=path) as broker:  # file unchanged
        assert (gpu(broker).max_queue, gpu(broker).strategy) == (500, "predictive")
        assert (await history(broker, "gpu"))[0].source == "update_pool"
    write_config(path, tmp_path / "broker.db", gpu_max_queue=250)
    async with Broker(load_config(path, {}), config_path=path) as broker:
        assert (gpu(broker).max_queue, gpu(broker).strategy) == (250, "predictive")
        latest = (await history(broker, "gpu"))[0]
        assert (latest.who, latest.source, list(latest.fields)) == (
            "config file",
            "startup",
            ["max_queue"],
        )
        assert json.loads(latest.before)["max_queue"] == 500
    async with Broker(load_config(path, {}), config_path=path) as broker:  # nothing new
        assert (gpu(broker).max_queue, gpu(broker).strategy) == (250, "predictive")
