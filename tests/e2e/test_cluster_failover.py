"""Three broker processes on one PostgreSQL database, with real workers and clients.

- Tasks submitted to any broker run exactly once, each at its pool's owner.
- The owner of a busy pool killed with SIGKILL: another broker takes the pool within the
  bound (deploy/cluster.md), every acknowledged task completes, and a task runs twice only
  if it was in a worker's hands at the kill.
- The owner paused with SIGSTOP past its lease, then resumed: it hands out no more work,
  steps down and exits, while the broker that took over finishes the pool.
- The owner whose connection to the database is cut (it connects through a proxy the
  test closes) reports NOT_SERVING, and another broker takes its pools.

The workers (tests/support/cluster_worker.py) are given every broker's address and
journal every execution; the store says what was committed. `pytest -s` prints figures.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.crash_worker import TASK_TYPE
from tests.support.postgres import free_port, fresh_database
from tests.support.processes import Deadline, Process, child_env, logs, spawn, stop_all
from tests.support.tcp_proxy import TcpProxy
from worker_sdk import Client, TaskRequest

ROOT = Path(__file__).parent.parent.parent
WORKER_SCRIPT = ROOT / "tests" / "support" / "cluster_worker.py"
LISTENING = re.compile(r"taskbroker listening on (\S+)")
LEASE_S = 1.5
# The longest a pool may go without an owner after its owner dies (deploy/cluster.md): its
# lease runs out, and the broker that should have it takes it at its next renewal, a
# third of a lease later. The slack is for a loaded two-core machine.
TAKEOVER_BOUND_S = LEASE_S + LEASE_S / 3 + 1.0
# Rendezvous hashing over these ids puts p1 at broker-c, p2 and p3 at broker-a, default at
# broker-b (tests/unit/test_cluster_assignment.py holds the hashing to that).
BROKERS = ("broker-a", "broker-b", "broker-c")
SPREAD = {"default": "broker-b", "p1": "broker-c", "p2": "broker-a", "p3": "broker-a"}
CONFIG = f"""
[broker]
cluster_lease_s = {LEASE_S}
heartbeat_interval_s = 0.2
heartbeat_timeout_s = 5
shutdown_grace_s = 1

[pools.default]
[pools.p1]
[pools.p2]
[pools.p3]
"""
BUDGET_S = 50.0


@dataclass
class Cluster:
    url: str
    workdir: Path
    deadline: Deadline
    brokers: dict[str, Process] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    workers: dict[str, tuple[Process, Path]] = field(default_factory=dict)  # pool -> journal

    @property
    def processes(self) -> list[Process]:
        return [*self.brokers.values(), *(w for w, _ in self.workers.values())]

    def all_addresses(self) -> str:
        return ",".join(self.addresses.values())

    async def start_broker(self, name: str, db_url: str | None = None) -> None:
        config = self.workdir / "taskbroker.toml"
        config.write_text(CONFIG)
        argv = [sys.executable, "-m", "cli.main", "serve", "--config", str(config)]
        argv += ["--port", str(free_port()), "--db", db_url or self.url]
        env = child_env({"TASKBROKER_BROKER_ID": name, "PYTHONPATH": str(ROOT)})
        self.brokers[name] = spawn(name, argv, self.workdir, env)

    async def listening(self) -> None:
        for name, broker in self.brokers.items():
            while not (match := LISTENING.search(broker.log.read_text(errors="replace"))):
                assert broker.popen.poll() is None, broker.output()
                self.deadline.left(f"{name} listens")
                await asyncio.sleep(0.05)
            self.addresses[name] = match.group(1)

    def start_worker(self, pool: str, capacity: int) -> None:
        journal = self.workdir / f"journal-{pool}.txt"
        argv = [sys.executable, str(WORKER_SCRIPT), self.all_addresses(), str(journal)]
        argv += [str(capacity), pool]
        env = child_env({"PYTHONPATH": str(ROOT)})
        self.workers[pool] = (spawn(f"worker-{pool}", argv, self.workdir, env), journal)

    async def owners(self) -> dict[str, tuple[str, int]]:
        """pool -> (owner, epoch) of the leases held now."""
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch(
                "SELECT pool, owner, epoch FROM pool_leases WHERE owner <> ''"
                " AND expires_at > extract(epoch from clock_timestamp())"
            )
        finally:
            await conn.close()
        return {row[0]: (row[1], row[2]) for row in rows}

    async def until_owned(self, pools: set[str]) -> dict[str, tuple[str, int]]:
        while True:
            owners = await self.owners()
            if pools <= owners.keys():
                return owners
            self.deadline.left(f"every pool of {sorted(pools)} has an owner")
            await asyncio.sleep(0.05)

    async def until_spread(self) -> dict[str, tuple[str, int]]:
        """Once every pool is held by the broker rendezvous hashing names (SPREAD): idle
        pools move to it when it joins."""
        while True:
            owners = await self.owners()
            if {pool: owner for pool, (owner, _) in owners.items()} == SPREAD:
                return owners
            self.deadline.left(f"the pools spread as {SPREAD} (now {owners})")
            await asyncio.sleep(0.05)

    async def states(self, ids: list[int]) -> Counter[int]:
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch("SELECT state FROM tasks WHERE id = ANY($1::bigint[])", ids)
        finally:
            await conn.close()
        return Counter(row[0] for row in rows)

    async def until_succeeded(self, ids: list[int]) -> None:
        while (done := (await self.states(ids))[4]) < len(ids):
            if self.deadline.left_s() < 0.5:
                conn = await asyncpg.connect(self.url)
                rows = await conn.fetch(
                    "SELECT id, pool, state, attempts, worker_id FROM tasks"
                    " WHERE id = ANY($1::bigint[]) AND state <> 4 LIMIT 5",
                    ids,
                )
                await conn.close()
                raise AssertionError(f"{len(ids) - done} tasks did not succeed, as {rows}")
            await asyncio.sleep(0.1)


def starts(journal: Path) -> Counter[int]:
    text = journal.read_text() if journal.exists() else ""
    return Counter(int(line.split()[1]) for line in text.splitlines() if line.startswith("start"))


def sessions(journal: Path) -> list[list[tuple[str, int, float]]]:
    """The journal's events by registration: [(kind, task id, time)] per session."""
    split: list[list[tuple[str, int, float]]] = []
    for line in journal.read_text().splitlines():
        parts = line.split()
        if parts[0] == "registered":
            split.append([])
        elif split:
            split[-1].append((parts[0], int(parts[1]), float(parts[2])))
    return split


async def cluster(
    tmp_path: Path, url: str = "", proxied: str = "", proxy: TcpProxy | None = None
) -> Cluster:
    url = url or await fresh_database()
    running = Cluster(url, tmp_path, Deadline(BUDGET_S))
    for name in BROKERS:
        db_url = url
        if name == proxied and proxy is not None:
            db_url = re.sub(r":(\d+)/", f":{proxy.port}/", url, count=1)
        await running.start_broker(name, db_url)
    await running.listening()
    return running


async def submit(address: str, pool: str, count: int, batch: int = 25) -> list[int]:
    async with Client(address) as client:
        ids: list[int] = []
        while len(ids) < count:
            requests = [
                TaskRequest(TASK_TYPE, b"", pool=pool) for _ in range(min(batch, count - len(ids)))
            ]
            ids += [int(task_id) for task_id in await client.submit_many(requests)]
        return ids


async def test_tasks_submitted_to_any_broker_run_exactly_once(tmp_path: Path) -> None:
    running = await cluster(tmp_path)
    try:
        await running.until_spread()
        for pool in ("p1", "p2", "p3"):
            running.start_worker(pool, capacity=4)
        ids = []
        for pool in ("p1", "p2", "p3"):
            for address in running.addresses.values():  # every broker, owner or not
                ids += await submit(address, pool, 40)
        await running.until_succeeded(ids)
        counts = Counter[int]()
        for _, journal in running.workers.values():
            counts += starts(journal)
        assert set(counts) == set(ids)
        assert set(counts.values()) == {1}  # exactly once
        print(f"\n{len(ids)} tasks over 3 pools, submitted to 3 brokers, each ran once")
    except BaseException:
        print(logs(running.processes))
        raise
    finally:
        stop_all(running.processes)


async def test_the_owner_of_a_busy_pool_killed_loses_no_acknowledged_task(tmp_path: Path) -> None:
    running = await cluster(tmp_path)
    try:
        owners = await running.until_spread()
        dead, epoch = owners["p1"]
        capacity = 4
        running.start_worker("p1", capacity)
        survivor = next(a for n, a in running.addresses.items() if n != dead)
        ids = await submit(survivor, "p1", 200)
        await asyncio.sleep(0.3)  # busy: tasks in the worker's hands
        running.brokers[dead].popen.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        while (owner := (await running.owners()).get("p1")) is None or owner[0] == dead:
            running.deadline.left("another broker takes p1")
            await asyncio.sleep(0.02)
        takeover_s = time.monotonic() - killed_at
        assert owner[1] > epoch
        ids += await submit(survivor, "p1", 200)
        await running.until_succeeded(ids)
        counts = starts(running.workers["p1"][1])
        assert set(ids) <= set(counts)
        duplicates = sum(n - 1 for n in counts.values())
        # Only what the worker held at the kill, and one commit's worth of its results.
        assert duplicates <= 2 * capacity
        assert takeover_s <= TAKEOVER_BOUND_S
        print(
            f"\nkill -9 of {dead}: p1 taken by {owner[0]} after {takeover_s:.2f} s"
            f" (bound {TAKEOVER_BOUND_S:.2f} s); {len(ids)} acknowledged tasks succeeded,"
            f" {duplicates} ran twice"
        )
    except BaseException:
        print(logs(running.processes))
        raise
    finally:
        stop_all(running.processes)


async def test_an_owner_paused_past_its_lease_neither_dispatches_nor_writes_and_steps_down(
    tmp_path: Path,
) -> None:
    running = await cluster(tmp_path)
    try:
        owners = await running.until_spread()
        paused, epoch = owners["p1"]
        running.start_worker("p1", capacity=2)
        survivor = next(a for n, a in running.addresses.items() if n != paused)
        ids = await submit(survivor, "p1", 20)
        await running.until_succeeded(ids)
        process = running.brokers[paused].popen
        process.send_signal(signal.SIGSTOP)
        while (owner := (await running.owners()).get("p1")) is None or owner[0] == paused:
            running.deadline.left("another broker takes p1 from the paused one")
            await asyncio.sleep(0.05)
        later = await submit(survivor, "p1", 20)
        await asyncio.sleep(LEASE_S)  # the old owner stays paused well past its lease
        process.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        while process.poll() is None:
            running.deadline.left("the paused broker steps down")
            await asyncio.sleep(0.05)
        assert process.returncode != 0
        assert "steps down" in running.brokers[paused].output()
        await running.until_succeeded(ids + later)
        # Nothing started in the worker's session with the old owner after it resumed.
        first = sessions(running.workers["p1"][1])[0]
        assert [event for event in first if event[0] == "start" and event[2] > resumed_at] == []
        assert owner[1] > epoch
        print(f"\n{paused} paused past its lease: stepped down on resuming; {owner[0]} took p1")
    except BaseException:
        print(logs(running.processes))
        raise
    finally:
        stop_all(running.processes)


async def test_a_broker_cut_off_from_postgresql_reports_not_serving_and_its_pools_move(
    tmp_path: Path,
) -> None:
    url = await fresh_database()
    port = int(re.search(r":(\d+)/", url).group(1))  # type: ignore[union-attr]
    proxy = TcpProxy(port)
    await proxy.start()
    running = await cluster(tmp_path, url, proxied="broker-a", proxy=proxy)
    try:
        await running.until_spread()
        address = running.addresses["broker-a"]
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving
            await proxy.cut()
            cut_at = time.monotonic()
            while (await health.Check(health_pb2.HealthCheckRequest())).status == serving:
                running.deadline.left("the cut-off broker reports NOT_SERVING")
                await asyncio.sleep(0.05)
            not_serving_s = time.monotonic() - cut_at
        while (await running.owners()).get("p2", ("broker-a", 0))[0] == "broker-a":
            running.deadline.left("another broker takes p2")
            await asyncio.sleep(0.05)
        moved_s = time.monotonic() - cut_at
        assert not_serving_s <= LEASE_S + 0.5
        assert moved_s <= TAKEOVER_BOUND_S + LEASE_S
        print(f"\ncut off: NOT_SERVING after {not_serving_s:.2f} s, p2 moved after {moved_s:.2f} s")
    except BaseException:
        print(logs(running.processes))
        raise
    finally:
        stop_all(running.processes)
        await proxy.cut()
