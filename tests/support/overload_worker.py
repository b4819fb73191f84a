"""A slow worker process for tests/e2e/test_overload.py.

    python tests/support/overload_worker.py ADDRESS

One worker with CAPACITY slots whose handler sleeps WORK_S, so it drains at most
CAPACITY / WORK_S tasks a second (800), far slower than the test submits. SIGTERM ends
the process at once; the test stops it only after every task it awaited has finished.
"""

from __future__ import annotations

import asyncio
import sys

from worker_sdk import TaskContext, Worker

TASK_TYPE = "overload-job"
WORKER_ID = "overload-worker"
CAPACITY = 4
WORK_S = 0.005


async def serve(address: str) -> None:
    worker = Worker(capacity=CAPACITY, worker_id=WORKER_ID)

    @worker.task(TASK_TYPE)
    async def job(ctx: TaskContext) -> None:
        await asyncio.sleep(WORK_S)

    await worker.run(address)


def main(argv: list[str]) -> None:
    asyncio.run(serve(argv[1]))


if __name__ == "__main__":
    main(sys.argv)
