"""Several brokers in one process on one PostgreSQL database: pools spread over them, a
worker at the wrong broker is sent to the owner, and clients submit and wait anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from broker import Broker, BrokerConfig, PoolConfig
from broker.cluster.assignment import desired_owner
from broker.cluster.node import ClusterNode, list_brokers
from broker.domain import TaskState as StoredState
from broker.server.status import OWNER_KEY
from broker.storage import PostgresStore, groupcommit, open_store
from tests.support.cli import assert_one_line_error, invoke
from tests.support.config import make_config
from tests.support.postgres import free_port, fresh_database
from tests.support.raw_grpc import register, worker_stream_error
from tests.support.store import finished, make_task
from tests.support.tcp_proxy import TcpProxy
from worker_sdk import Client, TaskContext, TaskState, Worker

POOLS = ("default", "alpha", "beta", "gamma", "delta")


def cluster_config(tmp_path: Path, url: str, broker_id: str = "") -> BrokerConfig:
    config = make_config(tmp_path, db_path=url, cluster_lease_s=1.5, broker_id=broker_id)
    return dataclasses.replace(config, pools=tuple(PoolConfig(name=p) for p in POOLS))


@contextlib.asynccontextmanager
async def two_brokers(tmp_path: Path) -> AsyncIterator[tuple[Broker, Broker]]:
    url = await fresh_database()
    # Named, so that rendezvous hashing gives each some of POOLS whatever the run.
    first = Broker(cluster_config(tmp_path, url, "broker-1"))
    second = Broker(cluster_config(tmp_path, url, "broker-2"))
    await asyncio.gather(first.start(), second.start())
    try:
        yield first, second
    finally:
        await asyncio.gather(first.shutdown(), second.shutdown())


def owned(broker: Broker) -> set[str]:
    assert broker._node is not None
    return set(broker._node.owned)


async def test_pools_are_spread_and_each_is_held_by_exactly_one_broker(tmp_path: Path) -> None:
    async with two_brokers(tmp_path) as (first, second):
        assert owned(first) | owned(second) == set(POOLS)
        assert not owned(first) & owned(second)
        assert owned(first)  # both have work, by rendezvous hashing
        assert owned(second)
        assert isinstance(first._store, PostgresStore)
        rows = await list_brokers(first._store)
        assert {row.address for row in rows} == {first.address, second.address}
        assert {pool for row in rows for pool, _, _ in row.pools} == set(POOLS)


async def test_a_worker_at_a_broker_that_does_not_own_its_pool_is_sent_to_the_owner(
    tmp_path: Path,
) -> None:
    async with two_brokers(tmp_path) as (first, second):
        pool = sorted(owned(second))[0]
        assert first._node is not None
        async with asyncio.timeout(5):  # the first learns where pools are every renewal
            while first._node.owner(pool) != second.address:
                await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(first.address) as channel:
            refused = await worker_stream_error(
                channel, [register(pool=pool, capacity=1, task_types=["t"])]
            )
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            metadata: Any = refused.trailing_metadata() or ()
            assert (OWNER_KEY, second.address) in [tuple(pair) for pair in metadata]
            assert second.address in (refused.details() or "")


async def test_a_task_submitted_to_any_broker_runs_at_its_pools_owner_and_is_waited_anywhere(
    tmp_path: Path,
) -> None:
    async with two_brokers(tmp_path) as (first, second):
        pool = sorted(owned(second))[0]
        worker = Worker(pool, capacity=4)

        @worker.task("echo")
        async def echo(ctx: TaskContext) -> bytes:
            return ctx.payload

        running = asyncio.create_task(worker.run(second.address))
        try:
            async with Client(first.address) as client:
                ids = [await client.submit("echo", f"x{i}".encode(), pool=pool) for i in range(5)]
                done = [await client.wait(task_id, timeout=20) for task_id in ids]
            assert [t.result for t in done] == [f"x{i}".encode() for i in range(5)]
            assert {t.state for t in done} == {TaskState.SUCCEEDED}
        finally:
            await worker.shutdown()
            await running


async def test_brokers_list_shows_each_broker_with_its_pools(tmp_path: Path) -> None:
    async with two_brokers(tmp_path) as (first, second):
        db = first.config.db_path
        listed = await asyncio.to_thread(invoke, "brokers", "list", "--db", db, "-o", "json")
        assert listed.exit_code == 0, listed.output
        rows = {row["address"]: row for row in json.loads(listed.stdout)}
        assert set(rows) == {first.address, second.address}
        for broker in (first, second):
            row = rows[broker.address]
            assert {p["pool"] for p in row["pools"]} == owned(broker)
            assert row["expires_in_s"] > 0
        table = await asyncio.to_thread(invoke, "brokers", "list", "--db", db)
        assert "broker-1" in table.stdout
        assert "broker-2" in table.stdout
    refused = await asyncio.to_thread(invoke, "brokers", "list", "--db", "x.db")
    assert "PostgreSQL" in assert_one_line_error(refused)


async def test_a_client_given_several_brokers_fails_over_to_one_that_answers(
    tmp_path: Path,
) -> None:
    async with two_brokers(tmp_path) as (first, second):
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        async with Client(f"{dead},{second.address}") as client:
            task_id = await client.submit("echo", b"x", pool=sorted(owned(first))[0])
            assert (await client.get(task_id)).state is TaskState.PENDING


class _IdleEngine:
    """An engine that holds nothing of any pool (so each may be handed over), and notes
    which pools the node held when it was asked to save what the pools learned."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.saved_learning_owning: list[set[str]] = []

    def idle_pool(self, pool: str) -> bool:
        return True

    def save_learning(self) -> None:
        self.saved_learning_owning.append(set(self.node.owned))


async def test_a_pool_handed_over_keeps_the_saves_still_queued_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A save rides along with a later commit; handing the pool over first would take it
    out of the fence, and the save would change nothing: the new owner would run a task
    that ended here."""
    monkeypatch.setattr(groupcommit, "SAVE_DELAY_S", 3600.0)
    pool = next(p for p in (f"p{i}" for i in range(100)) if desired_owner(p, ["b1", "b2"]) == "b2")
    async with await open_store(await fresh_database()) as store:
        assert isinstance(store, PostgresStore)
        node = ClusterNode(store, broker_id="b1", address="127.0.0.1:1", lease_s=3.0)
        await node.join([pool])  # alone: it takes the pool
        assert set(node.owned) == {pool}
        task = make_task(1, pool=pool)
        await store.insert_tasks([task])
        engine = _IdleEngine(node)
        node._engine = engine  # type: ignore[assignment]
        await store.pool.execute("INSERT INTO brokers VALUES ('b2', '127.0.0.1:2', 0, 1e12)")
        await node._round([pool])  # learns of b2, whom the pool should go to
        assert set(node.owned) == {pool}
        store.save(finished(task, StoredState.CANCELLED))  # queued, not committed
        await node._round([pool])  # hands the pool over
        assert node.owned == {}
        assert engine.saved_learning_owning == [{pool}]  # what it learned, saved first
        await store.flush()
        state = await store.pool.fetchval("SELECT state FROM tasks WHERE id = 1")
        assert state == int(StoredState.CANCELLED)


class _AdoptingEngine:
    """An engine that keeps the pools it has and records the tasks it is given."""

    def __init__(self) -> None:
        self.adopted: list[int] = []

    def idle_pool(self, pool: str) -> bool:
        return False

    def adopt(self, tasks: Any) -> int:
        ids = [task.id for task in tasks]
        self.adopted += ids
        return len(ids)


class _CutAfter(ClusterNode):
    """A node whose database connection is cut right after one step of its round."""

    proxy: TcpProxy
    cut_after = ""

    async def _renew(self) -> set[str]:
        kept = await super()._renew()
        if self.cut_after == "renewal":
            await self.proxy.cut()
        return kept

    async def _take(self, pools: Any) -> list[str]:
        taken = await super()._take(pools)
        if self.cut_after == "take":
            await self.proxy.cut()
        return taken


async def test_a_database_lost_in_the_middle_of_a_round_leaves_the_rest_for_the_next() -> None:
    """PostgreSQL goes away after the renewal (the take fails), then after the take (the
    read of the pool's tasks fails): the broker carries on, and the next round finishes
    what was left, the pool's unfinished task queued here."""
    url = await fresh_database()
    proxy = TcpProxy(int(url.rsplit(":", 1)[1].split("/", 1)[0]))
    await proxy.start()
    proxied = re.sub(r":(\d+)/", f":{proxy.port}/", url, count=1)
    try:
        async with await open_store(proxied) as store:
            assert isinstance(store, PostgresStore)
            node = _CutAfter(store, broker_id="b1", address="127.0.0.1:1", lease_s=3.0)
            node.proxy = proxy
            await node.join([])
            engine = node._engine = _AdoptingEngine()  # type: ignore[assignment]
            await store.insert_tasks([make_task(1, pool="default")])

            async def round_cut_after(step: str) -> None:
                node.cut_after = step
                await node._round(["default"])
                if step:  # the database is back
                    await proxy.start(proxy.port)
                    await store.pool.expire_connections()

            await round_cut_after("renewal")
            assert (node.owned, node.stepped_down, engine.adopted) == ({}, False, [])
            await round_cut_after("take")
            assert (list(node.owned), engine.adopted) == (["default"], [])
            await round_cut_after("")
            assert (list(node.owned), engine.adopted) == (["default"], [1])
    finally:
        await proxy.cut()
