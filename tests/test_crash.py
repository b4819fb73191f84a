"""A worker process killed with SIGKILL loses nothing: its tasks run again elsewhere."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from broker import Broker
from worker_sdk import Client, TaskContext, TaskState, Worker

STUCK_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from worker_sdk import Worker

    worker = Worker(capacity=4, worker_id="doomed")

    @worker.task("job")
    async def job(ctx):
        await asyncio.sleep(3600)

    asyncio.run(worker.run(sys.argv[1]))
    """
)


async def test_killed_worker_s_tasks_complete_on_another(broker: Broker, tmp_path: Path) -> None:
    script = tmp_path / "stuck_worker.py"
    script.write_text(STUCK_WORKER)
    doomed = subprocess.Popen([sys.executable, str(script), broker.address])
    rescuer = Worker(capacity=4, worker_id="rescuer")

    @rescuer.task("job")
    async def job(ctx: TaskContext) -> str:
        return f"attempt {ctx.attempt}"

    try:
        async with Client(broker.address) as client:
            async with asyncio.timeout(20):
                while not await client.list_workers():
                    await asyncio.sleep(0.02)
            ids = [await client.submit("job", str(i)) for i in range(4)]
            async with asyncio.timeout(20):
                while {(await client.get(i)).state for i in ids} != {TaskState.RUNNING}:
                    await asyncio.sleep(0.02)
            run = asyncio.create_task(rescuer.run(broker.address))
            doomed.kill()
            doomed.wait(timeout=10)
            infos = await client.wait_many(ids, timeout=20)
            await rescuer.shutdown(grace=2)
            await run
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait(timeout=10)
    assert all(info.state is TaskState.SUCCEEDED for info in infos)
    assert all(info.worker_id == "rescuer" for info in infos)
    assert all(info.attempts == 2 for info in infos)
    assert [info.result for info in infos] == [b"attempt 2"] * 4
