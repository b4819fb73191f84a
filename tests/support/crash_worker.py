"""A worker process for tests/e2e/test_crash_broker.py that journals every execution.

    python tests/support/crash_worker.py ADDRESS JOURNAL CAPACITY

The journal gets one line per event, each written with a single write(2) to a file opened
with O_APPEND, so a line is in the file as soon as the event happens, whoever dies next.
T is time.monotonic(), which on Linux is one clock for every process:

    registered T   the worker (re)registered with a broker
    start ID T     a handler began to run task ID
    done ID T      that handler returned

Everything between two `registered` lines was handed out by one broker process: the SDK
ends a session (cancelling its handlers) before it registers again, and starts handlers
only after the registration. SIGTERM ends the process at once; nothing is lost by that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from worker_sdk import TaskContext, Worker

TASK_TYPE = "crash-job"
# A tiny bit of work per task, so that the workers always have tasks in their hands.
WORK_S = 0.0015
# Reconnect quickly once the broker is back (the SDK's defaults are 0.2 s, up to 10 s).
RECONNECT_INITIAL_S = 0.05
RECONNECT_MAX_S = 0.5


class Journal:
    """An append-only file written one line per write(2), without buffering."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, line: str) -> None:
        os.write(self._fd, f"{line}\n".encode())


class RegistrationMarks(logging.Handler):
    """Journals a `registered` line when the SDK logs that the broker acknowledged us.

    The SDK has no callback for a registration; its INFO log line is the one signal, so the
    test checks that each journal has exactly as many marks as broker processes.
    """

    def __init__(self, journal: Journal) -> None:
        super().__init__(logging.INFO)
        self._journal = journal

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("registered with "):
            self._journal.write(f"registered {time.monotonic()}")


async def serve(address: str, journal: Journal, capacity: int) -> None:
    worker = Worker(
        capacity=capacity,
        reconnect_initial_s=RECONNECT_INITIAL_S,
        reconnect_max_s=RECONNECT_MAX_S,
    )

    @worker.task(TASK_TYPE)
    async def job(ctx: TaskContext) -> None:
        journal.write(f"start {ctx.task_id} {time.monotonic()}")
        await asyncio.sleep(WORK_S)
        journal.write(f"done {ctx.task_id} {time.monotonic()}")

    await worker.run(address)


def main(argv: list[str]) -> None:
    address, journal_path, capacity = argv[1], argv[2], int(argv[3])
    journal = Journal(journal_path)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sdk_log = logging.getLogger("taskbroker.worker")
    sdk_log.setLevel(logging.INFO)
    sdk_log.addHandler(RegistrationMarks(journal))
    asyncio.run(serve(address, journal, capacity))


if __name__ == "__main__":
    main(sys.argv)
