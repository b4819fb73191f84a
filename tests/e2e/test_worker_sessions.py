"""A worker's session across the ends of its stream, with real processes where they matter.

- A broker stopped by SIGTERM first sends every worker a Drain saying that the broker is
  stopping (so a worker reconnects rather than exits), takes the results of what they
  hold, and only then ends the streams.
- A worker whose connection breaks resumes its session on a new stream: the task it was
  running is not run again (the connection is cut by a proxy on loopback), even if its
  result was written as the connection died and never arrived.
- A worker process that crashes while holding a task does not resume: the task runs again
  elsewhere once the resume window has passed.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from broker import Broker
from tests.support.config import make_config
from tests.support.processes import Deadline, Process, child_env, spawn, stop_all
from tests.support.proxy import CuttableProxy
from tests.support.worker_stream import RawWorker
from tests.support.workers import until_workers
from worker_sdk import Client, TaskContext, TaskState, Worker
from worker_sdk._pb import worker_pb2 as _worker

LISTENING = re.compile(r"taskbroker listening on (\S+)")
BUDGET_S = 40.0


async def start_broker(workdir: Path, deadline: Deadline) -> tuple[Process, str]:
    argv = [sys.executable, "-m", "cli.main", "serve", "--port", "0", "--db", "b.db"]
    env = child_env({"TASKBROKER_SHUTDOWN_GRACE_S": "10", "TASKBROKER_HEARTBEAT_INTERVAL_S": "0.5"})
    broker = spawn("broker", argv, workdir, env)
    while not (match := LISTENING.search(broker.log.read_text(errors="replace"))):
        assert broker.popen.poll() is None, broker.output()
        deadline.left("the broker listens")
        await asyncio.sleep(0.02)
    return broker, match.group(1)


async def test_a_broker_stopped_by_sigterm_drains_its_workers_first(tmp_path: Path) -> None:
    deadline = Deadline(BUDGET_S)
    broker, address = await start_broker(tmp_path, deadline)
    try:
        async with grpc.aio.insecure_channel(address) as channel, Client(address) as client:
            worker = RawWorker(channel)
            await worker.register(capacity=1)
            task_id = await client.submit("t")
            assignment = await worker.assignment()
            sent_at = time.time()
            broker.popen.send_signal(signal.SIGTERM)
            drain = (await worker.next_of("drain")).drain
            assert drain.kind == _worker.DRAIN_REASON_BROKER_STOPPING
            assert drain.reason == "the broker is stopping"
            # The shutdown grace (10 s) from about now.
            assert sent_at + 5 < drain.deadline_ms / 1000 < time.time() + 11
            worker.result(assignment, result=b"finished while it stopped")
            worker.send(_worker.WorkerMessage(leave=_worker.Leave()))
            assert await worker.ended() in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
        async with asyncio.timeout(deadline.left("the broker stops")):
            while broker.popen.poll() is None:
                await asyncio.sleep(0.05)
        assert broker.popen.returncode == 0, broker.output()
        broker, address = await start_broker(tmp_path, deadline)  # the same database
        async with Client(address) as client:
            task = await client.get(task_id)
        assert (task.state, task.result) == (TaskState.SUCCEEDED, b"finished while it stopped")
    finally:
        stop_all([broker])


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    config = make_config(tmp_path, heartbeat_interval_s=0.2, heartbeat_timeout_s=3.0)
    async with Broker(config) as running:
        yield running


@pytest.mark.parametrize("lost", ["while the handler runs", "with the result on its way"])
async def test_a_worker_whose_connection_breaks_resumes_and_runs_the_task_once(
    broker: Broker, lost: str
) -> None:
    """The connection breaks while the handler runs, or just as its result is written:
    the write succeeds, but the connection dies with the result on its way, so the broker
    never sees it. Either way the resumed stream carries the result, and the task runs
    once."""
    proxy = await CuttableProxy.start(broker.address)
    release = asyncio.Event()
    runs = 0
    worker = Worker(capacity=1, worker_id="w1", reconnect_initial_s=0.05)
    result = "the result of the only run"

    @worker.task("t")
    async def t(ctx: TaskContext) -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return result

    run = asyncio.create_task(worker.run(proxy.address))
    try:
        async with Client(broker.address) as client:
            await until_workers(client)
            task_id = await client.submit("t")
            async with asyncio.timeout(10):
                while runs == 0:
                    await asyncio.sleep(0.01)
                if lost == "with the result on its way":
                    proxy.stall()
                    release.set()
                    while result.encode() not in proxy.dropped:  # written, and lost
                        await asyncio.sleep(0.01)
            proxy.cut()  # both ends see the connection reset; a handler runs on
            release.set()
            task = await client.wait(task_id, timeout=10)
    finally:
        await worker.shutdown(grace=2)
        await run
        proxy.close()
    assert (task.state, task.attempts, runs) == (TaskState.SUCCEEDED, 1, 1)
    assert task.result == result.encode()
    assert proxy.connections >= 2  # it did reconnect


CRASHING_WORKER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from worker_sdk import Worker

    worker = Worker(capacity=1, worker_id="crashes")

    @worker.task("t")
    async def t(ctx):
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(worker.run(sys.argv[1]))
    """
)


async def test_a_crashed_worker_process_is_not_resumed_and_its_task_runs_again(
    broker: Broker, tmp_path: Path
) -> None:
    script = tmp_path / "crashing_worker.py"
    script.write_text(CRASHING_WORKER)
    crashing = spawn(
        "crashing", [sys.executable, str(script), broker.address], tmp_path, child_env()
    )
    try:
        async with Client(broker.address) as client:
            await until_workers(client)
            task_id = await client.submit("t")
            async with asyncio.timeout(10):
                while crashing.popen.poll() is None:
                    await asyncio.sleep(0.01)
            crashed_at = time.monotonic()
            rescuer = Worker(capacity=1)

            @rescuer.task("t")
            async def t(ctx: TaskContext) -> str:
                return "rescued"

            run = asyncio.create_task(rescuer.run(broker.address))
            try:
                task = await client.wait(task_id, timeout=15)
            finally:
                await rescuer.shutdown(grace=2)
                await run
        waited = time.monotonic() - crashed_at
    finally:
        stop_all([crashing])
    assert (task.state, task.result, task.attempts) == (TaskState.SUCCEEDED, b"rescued", 2)
    assert task.worker_id != "crashes"
    # Kept for the resume window (the heartbeat timeout, 3 s), then given out again.
    assert 2.0 < waited < 3.0 + 3.0, waited


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_sdk_worker_told_the_broker_stops_finishes_and_comes_back(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, port=free_port(), shutdown_grace_s=10.0)
    release = asyncio.Event()
    worker = Worker(capacity=1, reconnect_initial_s=0.05, reconnect_max_s=0.2)

    @worker.task("t")
    async def t(ctx: TaskContext) -> str:
        await release.wait()
        return "finished in the grace"

    run = asyncio.create_task(worker.run(f"127.0.0.1:{config.port}"))
    try:
        first = Broker(config)
        async with first:
            async with Client(first.address) as client:
                await until_workers(client)
                task_id = await client.submit("t")
                async with asyncio.timeout(10):
                    while (await client.get(task_id)).state is not TaskState.RUNNING:
                        await asyncio.sleep(0.01)
            stopping = asyncio.create_task(first.shutdown())
            release.set()  # the handler ends within the grace, after the Drain
            await stopping
        assert not run.done()  # not an exit: the worker reconnects
        async with Broker(config) as second, Client(second.address) as client:
            await until_workers(client)  # the same worker, back
            task = await client.get(task_id)
    finally:
        await worker.shutdown(grace=2)
        await run
    assert (task.state, task.result, task.attempts) == (
        TaskState.SUCCEEDED,
        b"finished in the grace",
        1,
    )
