"""A worker process for tests/e2e/test_cluster_failover.py: crash_worker's journal, for a
pool of one's choosing, given every broker's address.

    python tests/support/cluster_worker.py ADDRESSES JOURNAL CAPACITY POOL

ADDRESSES is comma-separated: the worker follows the broker that schedules POOL, and
moves on when one dies. The journal is crash_worker's (registered, start, done lines).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from tests.support.crash_worker import (
    RECONNECT_INITIAL_S,
    RECONNECT_MAX_S,
    TASK_TYPE,
    WORK_S,
    Journal,
    RegistrationMarks,
)
from worker_sdk import TaskContext, Worker


async def serve(addresses: str, journal: Journal, capacity: int, pool: str) -> None:
    worker = Worker(
        pool,
        capacity=capacity,
        reconnect_initial_s=RECONNECT_INITIAL_S,
        reconnect_max_s=RECONNECT_MAX_S,
    )

    @worker.task(TASK_TYPE)
    async def job(ctx: TaskContext) -> None:
        journal.write(f"start {ctx.task_id} {time.monotonic()}")
        await asyncio.sleep(WORK_S)
        journal.write(f"done {ctx.task_id} {time.monotonic()}")

    await worker.run(addresses)


def main(argv: list[str]) -> None:
    addresses, journal_path, capacity, pool = argv[1], argv[2], int(argv[3]), argv[4]
    journal = Journal(journal_path)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sdk_log = logging.getLogger("taskbroker.worker")
    sdk_log.setLevel(logging.INFO)
    sdk_log.addHandler(RegistrationMarks(journal))
    asyncio.run(serve(addresses, journal, capacity, pool))


if __name__ == "__main__":
    main(sys.argv)
