"""Soak: a steady workload with a short retention keeps the SQLite file's live size and the
process's RSS flat.

A real broker on loopback with a real SQLite file and a worker, on a FakeClock that moves
one second per round; the broker's own retention job (every 50 ms of real time) deletes
what is past retention. After each round the test waits until the job has purged (the
stats count what is stored), then measures the file's live bytes ((page_count -
freelist_count) * page_size: freed pages are reused, so this is what the data needs) and
the RSS. It runs SOAK_S seconds: 20 by default, longer by hand with
TASKBROKER_SOAK_S=600 .venv/bin/pytest tests/integration/test_retention_soak.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import time
from pathlib import Path

import pytest

from broker import Broker
from broker.clock import FakeClock
from broker.domain import PoolConfig
from tests.support.config import make_config
from tests.support.workers import start_worker
from worker_sdk import Client, TaskContext, TaskRequest, Worker

# A soak of seconds: make test runs it, make test-fast skips it.
pytestmark = pytest.mark.slow

SOAK_S = float(os.environ.get("TASKBROKER_SOAK_S", "20"))
RETENTION_S = 5.0  # fake seconds: five rounds
TASKS_PER_ROUND = 40
PAYLOAD_BYTES = 16 * 1024  # and a result as large: 32 KiB a task, 1.25 MiB a round
WARM_UP_ROUNDS = 8  # the retention window is full after six
# Bounds once warm: the live size grows by at most this share plus one MiB (the metrics
# history gains rows as the fake minutes pass), the RSS by at most 40 MiB.
SIZE_SLACK = 0.25
RSS_SLACK_BYTES = 40 * 1024 * 1024


def live_bytes(db_path: str) -> int:
    with sqlite3.connect(db_path) as db:
        (page_count,) = db.execute("PRAGMA page_count").fetchone()
        (freelist,) = db.execute("PRAGMA freelist_count").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    return int((page_count - freelist) * page_size)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def stored_finished(client: Client) -> int:
    (default,) = [p for p in (await client.stats()).pools if p.pool == "default"]
    return default.succeeded + default.failed + default.cancelled + default.dead_letter


@pytest.mark.timeout(SOAK_S + 60)
async def test_a_steady_workload_with_a_short_retention_stays_flat(tmp_path: Path) -> None:
    config = make_config(tmp_path, task_purge_interval_s=0.05, task_purge_batch=100)
    config = dataclasses.replace(
        config, pools=(PoolConfig(name="default", retention_s=RETENTION_S),)
    )
    clock = FakeClock(start=time.time())
    worker = Worker(capacity=16)

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    sizes: list[int] = []
    rss: list[int] = []
    async with Broker(config, clock=clock) as broker:
        run = await start_worker(worker, broker.address)
        async with Client(broker.address) as client:
            deadline = time.monotonic() + SOAK_S
            rounds = 0
            while time.monotonic() < deadline or rounds <= 2 * WARM_UP_ROUNDS:
                payload = os.urandom(PAYLOAD_BYTES)  # incompressible, new each round
                ids = await client.submit_many(
                    [TaskRequest("echo", payload) for _ in range(TASKS_PER_ROUND)]
                )
                await client.wait_many(ids, timeout=30)
                clock.advance(1.0)
                rounds += 1
                # The job keeps the tasks of the last RETENTION_S fake seconds only.
                most = TASKS_PER_ROUND * int(RETENTION_S + 1)
                async with asyncio.timeout(10):
                    while await stored_finished(client) > most:
                        await asyncio.sleep(0.01)
                sizes.append(live_bytes(config.db_path))
                rss.append(rss_bytes())
        await worker.shutdown(grace=2)
        await run

    written = rounds * TASKS_PER_ROUND * 2 * PAYLOAD_BYTES
    warm_size, warm_rss = max(sizes[:WARM_UP_ROUNDS]), max(rss[:WARM_UP_ROUNDS])
    later_size, later_rss = max(sizes[WARM_UP_ROUNDS:]), max(rss[WARM_UP_ROUNDS:])
    report = (
        f"{rounds} rounds, {written / 2**20:.0f} MiB of payloads and results written; live size"
        f" {warm_size / 2**20:.1f} MiB warm, at most {later_size / 2**20:.1f} MiB after;"
        f" RSS {warm_rss / 2**20:.0f} MiB warm, at most {later_rss / 2**20:.0f} MiB after"
    )
    print(report, "RSS MiB by round:", [r // 2**20 for r in rss[:: max(1, len(rss) // 12)]])
    assert written > 2 * warm_size, report  # enough written to show the purge at work
    assert later_size <= warm_size * (1 + SIZE_SLACK) + 2**20, report
    assert later_rss <= warm_rss + RSS_SLACK_BYTES, report
