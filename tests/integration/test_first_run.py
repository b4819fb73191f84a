"""What a new user meets first: `submit --wait` that nothing can run, and so on."""

from __future__ import annotations

import asyncio
import os
import re
import sys

from broker import Broker
from tests.support.workers import start_worker
from worker_sdk import TaskContext, Worker

_CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}


async def _submit_wait(address: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "cli.main", "submit", *args, "--wait", "--broker", address),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_CLEAN_ENV,
    )


async def _line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    async with asyncio.timeout(30):
        return (await stream.readline()).decode()


async def test_submit_wait_warns_when_no_worker_takes_the_type_then_keeps_waiting(
    broker: Broker,
) -> None:
    proc = await _submit_wait(broker.address, "late", "--payload", '"hi"', "--timeout", "60")
    try:
        await _late_worker_ends_the_wait(broker, proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _late_worker_ends_the_wait(broker: Broker, proc: asyncio.subprocess.Process) -> None:
    accepted = re.fullmatch(r"task (\S+) accepted; waiting\.\.\.\n", await _line(proc.stderr))
    assert accepted
    task_id = accepted.group(1)
    warning = await _line(proc.stderr)
    assert warning == (
        f"warning: task {task_id} waits: unschedulable: no connected worker takes type 'late'\n"
    )
    assert proc.returncode is None  # still waiting
    worker = Worker(capacity=1)

    @worker.task("late")
    async def late(ctx: TaskContext) -> bytes:
        return ctx.payload

    run = await start_worker(worker, broker.address)
    try:
        async with asyncio.timeout(30):
            stdout, stderr = await proc.communicate()
        assert (await proc.wait(), stdout, stderr) == (0, b'"hi"\n', b"")
    finally:
        await worker.shutdown(grace=1)
        await run


async def test_submit_wait_warns_then_times_out_with_its_usual_error(broker: Broker) -> None:
    proc = await _submit_wait(broker.address, "typo", "--timeout", "1.5")
    async with asyncio.timeout(30):
        stdout, stderr = await proc.communicate()
    assert (proc.returncode, stdout) == (1, b"")
    assert re.fullmatch(
        r"task (\S+) accepted; waiting\.\.\.\n"
        r"warning: task \1 waits: unschedulable: no connected worker takes type 'typo'\n"
        r"error: task \1 did not finish within 1\.5s; see 'taskbroker tasks show \1'\n",
        stderr.decode(),
    ), stderr
