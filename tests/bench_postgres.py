"""PostgreSQL benchmark: `make bench-postgres` (or `python -m tests.bench_postgres`).

Starts a private PostgreSQL server (tests/support/postgres.py, fsync on, as a database
would run) and measures, from this process through the SDK client, as tests/bench.py does:

- one broker with two no-op workers, on SQLite and then on PostgreSQL: N tasks submitted
  at once, submit to result (`e2e_throughput_sqlite`, `e2e_throughput_postgres`), and one
  task at a time (`e2e_latency_p50_*`, `e2e_latency_p99_*`);
- three brokers on one PostgreSQL database serving three pools (one each, by rendezvous
  hashing), a worker per pool, N tasks per pool submitted at once to the pools' owners:
  the combined throughput (`e2e_throughput_postgres_3_brokers`).

Each figure is a `NAME VALUE UNIT` line. Every process shares this machine's cores: on two
cores, three brokers with their workers, the client and PostgreSQL compete for them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from tests.bench import _percentile, _single, _stop, latencies
from tests.support.postgres import PostgresServer
from worker_sdk import Client, TaskContext, Worker

WORKER_CAPACITY = 512


async def _throughput(client: Client, count: int) -> float:
    """Tasks per second, submit to result, of `count` single submits pipelined."""
    started = time.perf_counter()
    await _single(client, count)
    return count / (time.perf_counter() - started)


# Rendezvous hashing over bench-1..3 gives each of these pools to a different broker.
CLUSTER = {"bench-1": "q3", "bench-2": "q0", "bench-3": "q1"}


async def _run_broker(db: str, address_file: str, broker_id: str, config_file: str) -> None:
    from broker import Broker, load_config

    overrides: dict[str, object] = {"port": 0, "db_path": db}
    if broker_id:
        overrides["broker_id"] = broker_id
    config = load_config(Path(config_file) if config_file else None, os.environ, **overrides)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Broker(config) as broker:
        Path(address_file).write_text(broker.address)
        await stop.wait()


async def _run_worker(address: str, pool: str) -> None:
    worker = Worker(pool, capacity=WORKER_CAPACITY)

    @worker.task("noop")
    async def noop(ctx: TaskContext) -> None:
        return None

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.shutdown(5)))
    await worker.run(address)


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.bench_postgres", *args])


async def _start_broker(
    tmp: str, name: str, db: str, procs: list[subprocess.Popen[bytes]], config: str = ""
) -> str:
    address_file = os.path.join(tmp, f"{name}.address")
    procs.append(_spawn("broker", db, address_file, name if config else "", config))
    deadline = time.monotonic() + 60
    while not os.path.exists(address_file) or not Path(address_file).read_text():
        if time.monotonic() > deadline or procs[-1].poll() is not None:
            raise SystemExit(f"broker {name} did not start")
        await asyncio.sleep(0.05)
    return Path(address_file).read_text()


async def _until_workers(address: str, pool: str, count: int) -> None:
    async with Client(address) as client, asyncio.timeout(60):
        while len(await client.list_workers(pool)) < count:
            await asyncio.sleep(0.05)


async def _one_broker(address: str, tasks: int, samples: int, name: str) -> None:
    await _until_workers(address, "default", 2)
    async with Client(address) as client:
        await _throughput(client, 1000)  # warm up
        throughput = await _throughput(client, tasks)
        latency_samples = await latencies(client, samples)
    print(f"e2e_throughput_{name} {throughput:.0f} tasks/s", flush=True)
    print(f"e2e_latency_p50_{name} {statistics.median(latency_samples):.2f} ms", flush=True)
    print(f"e2e_latency_p99_{name} {_percentile(latency_samples, 99):.2f} ms", flush=True)


async def _until_spread(db: str) -> None:
    """Until each pool of CLUSTER is held by its broker (idle pools move to it)."""
    conn = await asyncpg.connect(db)
    try:
        async with asyncio.timeout(60):
            while True:
                rows = await conn.fetch("SELECT owner, pool FROM pool_leases WHERE owner <> ''")
                if all((name, pool) in {tuple(r) for r in rows} for name, pool in CLUSTER.items()):
                    return
                await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _pool_throughput(address: str, pool: str, count: int) -> None:
    async with Client(address) as client:

        async def one() -> None:
            task_id = await client.submit("noop", pool=pool)
            await client.wait(task_id)

        async with asyncio.timeout(300):
            await asyncio.gather(*(one() for _ in range(count)))


async def _three_brokers(addresses: dict[str, str], tasks: int) -> None:
    for name, pool in CLUSTER.items():
        await _until_workers(addresses[name], pool, 1)
    await asyncio.gather(*(_pool_throughput(addresses[n], p, 300) for n, p in CLUSTER.items()))
    started = time.perf_counter()
    await asyncio.gather(*(_pool_throughput(addresses[n], p, tasks) for n, p in CLUSTER.items()))
    throughput = 3 * tasks / (time.perf_counter() - started)
    print(f"e2e_throughput_postgres_3_brokers {throughput:.0f} tasks/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("role", nargs="?", default="main", choices=["main", "broker", "worker"])
    parser.add_argument("args", nargs="*")
    options = parser.parse_args()
    if options.role == "broker":
        asyncio.run(_run_broker(*options.args))
        return
    if options.role == "worker":
        asyncio.run(_run_worker(*options.args))
        return
    server = PostgresServer.start(fsync=True)
    try:
        # One event loop for every measurement: gRPC's asyncio support keeps to one.
        asyncio.run(_bench(server, options.tasks, options.latency_samples))
    finally:
        server.stop()


async def _bench(server: PostgresServer, tasks: int, samples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, db in (
            ("sqlite", os.path.join(tmp, "bench.db")),
            ("postgres", await server.create_database("one")),
        ):
            procs: list[subprocess.Popen[bytes]] = []
            try:
                address = await _start_broker(tmp, name, db, procs)
                procs += [_spawn("worker", address, "default") for _ in range(2)]
                await _one_broker(address, tasks, samples, name)
            finally:
                _stop(procs)
        config = os.path.join(tmp, "cluster.toml")
        pools = "".join(f"[pools.{pool}]\n" for pool in ("default", *CLUSTER.values()))
        Path(config).write_text(f"[broker]\ncluster_lease_s = 5\n\n{pools}")
        db = await server.create_database("three")
        procs = []
        try:
            addresses = {
                name: await _start_broker(tmp, name, db, procs, config) for name in CLUSTER
            }
            await _until_spread(db)
            for name, pool in CLUSTER.items():
                procs.append(_spawn("worker", addresses[name], pool))
            await _three_brokers(addresses, tasks // 3)
        finally:
            _stop(procs)


if __name__ == "__main__":
    main()
