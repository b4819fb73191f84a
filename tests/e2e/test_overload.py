"""Overload with real processes: a flood of submits meets a bounded queue.

`taskbroker serve` with `max_queue = 2000` on its default pool, one slow worker
(tests/support/overload_worker.py), and eight submitters sending 200-task batches through the raw
generated stubs (the SDK's retries would hide the rejections), far faster than the worker
drains. The broker must refuse the excess fast with RESOURCE_EXHAUSTED and a retry hint,
keep its queue and its memory bounded meanwhile, and then run every task it accepted.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import pytest

from tests.support.overload_worker import CAPACITY, TASK_TYPE, WORKER_ID
from tests.support.processes import Deadline, Process, child_env, spawn, stop_all
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc

# Real processes for seconds: make test runs it, make test-fast skips it.
pytestmark = pytest.mark.slow

WORKER_SCRIPT = Path(__file__).parent.parent / "support" / "overload_worker.py"
LISTENING = re.compile(r"taskbroker listening on (\S+)")
PUSHBACK_KEY = "grpc-retry-pushback-ms"

POOL = "default"
MAX_QUEUE = 2000
SUBMITTERS = 8
BATCH_SIZE = 200
PAYLOAD = b"x" * 1024
BATCHES_PER_SUBMITTER = 150  # at most 240k tasks offered in all...
SUBMIT_FOR_S = 4.0  # ...or for this long, whichever ends first
SAMPLE_EVERY_S = 0.1
WAIT_CHUNK = 1000  # ids per TaskService.Wait; the broker's max_batch_size
MIB = 1024 * 1024
# What the broker may grow by over its idle size. A full queue is 2000 tasks of about
# 2 KiB each (1 KiB payload plus the Task and its queue entries), a few MiB; the tasks that
# finish meanwhile, SQLite's page cache and gRPC's buffers for eight 200 KiB requests in
# flight add a few tens more. 150 MiB is generous against that noise, yet an unbounded
# queue could not stay under it: the ~240k tasks offered here would take hundreds of MiB.
RSS_HEADROOM = 150 * MIB
# Every wait of the test comes out of this, so it fails (and cleans up) before pytest's 60 s.
BUDGET_S = 50.0
UNFINISHED = (_tasks.TASK_STATE_PENDING, _tasks.TASK_STATE_ASSIGNED, _tasks.TASK_STATE_RUNNING)
BROKER_ENV = {"TASKBROKER_SHUTDOWN_GRACE_S": "1"}


def resident_bytes(pid: int) -> int:
    """The process's resident set size (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def write_config(workdir: Path) -> Path:
    path = workdir / "broker.toml"
    db = json.dumps(str(workdir / "broker.db"))  # a JSON string is a TOML basic string
    path.write_text(
        f'[broker]\nhost = "127.0.0.1"\nport = 0\ndb_path = {db}\n\n'
        f"[pools.{POOL}]\nmax_queue = {MAX_QUEUE}\n"
    )
    return path


async def start_broker(workdir: Path, deadline: Deadline) -> tuple[Process, str]:
    """Start `taskbroker serve` on the config and return it with the address it printed."""
    argv = [sys.executable, "-m", "cli.main", "serve", "--config", str(write_config(workdir))]
    broker = spawn("broker", argv, workdir, child_env(BROKER_ENV))
    while not (match := LISTENING.search(broker.log.read_text(errors="replace"))):
        assert broker.popen.poll() is None, broker.output()
        deadline.left("the broker listens")
        await asyncio.sleep(0.02)
    return broker, match.group(1)


async def wait_for_worker(
    admin: _admin_grpc.AdminServiceAsyncStub, worker: Process, deadline: Deadline
) -> None:
    request = _admin.ListWorkersRequest(pool=POOL)
    while WORKER_ID not in {w.worker_id for w in (await admin.ListWorkers(request)).workers}:
        assert worker.popen.poll() is None, worker.output()
        deadline.left("the worker registers")
        await asyncio.sleep(0.05)


async def pool_stats(admin: _admin_grpc.AdminServiceAsyncStub) -> _admin.PoolStats:
    stats = await admin.Stats(_admin.StatsRequest(), timeout=10)
    (pool,) = [p for p in stats.pools if p.pool == POOL]
    return pool


@dataclass
class Flood:
    """What the submitters saw."""

    accepted: list[str] = field(default_factory=list)
    rejections: int = 0  # RESOURCE_EXHAUSTED answers, each a whole batch refused
    pushbacks_ms: list[int] = field(default_factory=list)
    bad_rejections: list[str] = field(default_factory=list)  # without a hint or the bound


@dataclass
class Samples:
    """Peaks seen by the samplers while the test runs."""

    rss_bytes: int = 0
    rss_samples: int = 0
    max_pending: int = 0
    stats_samples: int = 0


def record_rejection(flood: Flood, error: grpc.aio.AioRpcError) -> None:
    flood.rejections += 1
    # The stubs type the trailers as _Metadatum objects; grpc.aio gives (key, value) pairs.
    trailers = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    values = [value for key, value in trailers if key == PUSHBACK_KEY]
    problems = []
    if len(values) != 1 or not str(values[0]).isdigit() or int(values[0]) <= 0:
        problems.append(f"{PUSHBACK_KEY} is {values!r}, not one positive integer")
    else:
        flood.pushbacks_ms.append(int(values[0]))
    if "max_queue" not in (error.details() or ""):
        problems.append(f"the message {error.details()!r} does not name max_queue")
    if problems:
        flood.bad_rejections.append("; ".join(problems))


async def submitter(
    stub: _tasks_grpc.TaskServiceAsyncStub,
    request: _tasks.SubmitBatchRequest,
    flood: Flood,
    stop_at: float,
) -> None:
    """Submit one batch after another as fast as the broker answers, never backing off."""
    for _ in range(BATCHES_PER_SUBMITTER):
        if time.monotonic() >= stop_at:
            return
        try:
            response = await stub.SubmitBatch(request, timeout=20)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            record_rejection(flood, error)
            continue
        assert len(response.task_ids) == BATCH_SIZE
        flood.accepted.extend(response.task_ids)


async def sample_rss(pid: int, samples: Samples, done: asyncio.Event) -> None:
    while not done.is_set():
        samples.rss_bytes = max(samples.rss_bytes, resident_bytes(pid))
        samples.rss_samples += 1
        await asyncio.sleep(SAMPLE_EVERY_S)


async def sample_pending(
    admin: _admin_grpc.AdminServiceAsyncStub, samples: Samples, done: asyncio.Event
) -> None:
    while not done.is_set():
        samples.max_pending = max(samples.max_pending, (await pool_stats(admin)).pending)
        samples.stats_samples += 1
        await asyncio.sleep(SAMPLE_EVERY_S)


async def wait_all_succeeded(
    stub: _tasks_grpc.TaskServiceAsyncStub, task_ids: Sequence[str], deadline: Deadline
) -> Counter[str]:
    """Wait until every task is terminal (or the budget runs out); their states, counted."""
    states: Counter[str] = Counter()
    unfinished = list(task_ids)
    while unfinished:
        left = min(deadline.left(f"{len(unfinished)} tasks finish"), 10.0)
        still: list[str] = []
        for start in range(0, len(unfinished), WAIT_CHUNK):
            chunk = unfinished[start : start + WAIT_CHUNK]
            request = _tasks.WaitRequest(task_ids=chunk, timeout_s=left)
            response = await stub.Wait(request, timeout=left + 10)
            assert sorted(t.id for t in response.tasks) == sorted(chunk)
            for task in response.tasks:
                if task.state in UNFINISHED:
                    still.append(task.id)
                else:
                    states[_tasks.TaskState.Name(task.state)] += 1
        unfinished = still
    return states


async def test_a_flood_is_refused_with_pushback_and_nothing_accepted_is_lost(
    tmp_path: Path,
) -> None:
    deadline = Deadline(BUDGET_S)
    processes: list[Process] = []  # the worker first, then the broker, for stop_all
    try:
        broker, address = await start_broker(tmp_path, deadline)
        processes.append(broker)
        worker_argv = [sys.executable, str(WORKER_SCRIPT), address]
        processes.insert(0, spawn("worker", worker_argv, tmp_path, child_env()))
        async with grpc.aio.insecure_channel(address) as channel:
            tasks = _tasks_grpc.TaskServiceStub(channel)
            admin = _admin_grpc.AdminServiceStub(channel)
            await wait_for_worker(admin, processes[0], deadline)
            pool = await pool_stats(admin)
            assert (pool.max_queue, pool.capacity) == (MAX_QUEUE, CAPACITY)

            # Idle: started, a worker connected, no task yet. The peak of a few samples.
            idle_rss = 0
            for _ in range(5):
                idle_rss = max(idle_rss, resident_bytes(broker.popen.pid))
                await asyncio.sleep(0.05)

            flood, samples, done = Flood(), Samples(), asyncio.Event()
            spec = _tasks.TaskSpec(task_type=TASK_TYPE, payload=PAYLOAD, pool=POOL)
            request = _tasks.SubmitBatchRequest(tasks=[spec] * BATCH_SIZE)
            samplers = [
                asyncio.create_task(sample_rss(broker.popen.pid, samples, done)),
                asyncio.create_task(sample_pending(admin, samples, done)),
            ]
            try:
                flood_started = time.monotonic()
                stop_at = flood_started + SUBMIT_FOR_S
                async with asyncio.timeout(deadline.left("the flood starts")):
                    async with asyncio.TaskGroup() as group:
                        for _ in range(SUBMITTERS):
                            group.create_task(submitter(tasks, request, flood, stop_at))
                flood_s = time.monotonic() - flood_started
                rss_during_flood = samples.rss_bytes

                drain_started = time.monotonic()
                states = await wait_all_succeeded(tasks, flood.accepted, deadline)
                drain_s = time.monotonic() - drain_started
            finally:
                done.set()
                await asyncio.gather(*samplers, return_exceptions=True)
            for sampler in samplers:  # a sampler that failed fails the test
                sampler.result()
            final = await pool_stats(admin)

        pushbacks = sorted(flood.pushbacks_ms)
        offered = flood.rejections + len(flood.accepted) // BATCH_SIZE
        print(
            f"\noverload: {offered} batches of {BATCH_SIZE} offered in {flood_s:.1f} s; "
            f"accepted {len(flood.accepted)} tasks, {flood.rejections} RESOURCE_EXHAUSTED "
            f"answers (pushback ms min {min(pushbacks, default=0)}, median "
            f"{pushbacks[len(pushbacks) // 2] if pushbacks else 0}, max "
            f"{max(pushbacks, default=0)}), stats.rejected {final.rejected}\n"
            f"overload: broker RSS idle {idle_rss / MIB:.1f} MiB, peak "
            f"{samples.rss_bytes / MIB:.1f} MiB ({rss_during_flood / MIB:.1f} during the "
            f"flood; {samples.rss_samples} samples, bound {(idle_rss + RSS_HEADROOM) / MIB:.1f})\n"
            f"overload: max pending seen {samples.max_pending} of {MAX_QUEUE} "
            f"({samples.stats_samples} samples); drain {drain_s:.1f} s; final states "
            f"{dict(states)}, pending {final.pending}, succeeded {final.succeeded}"
        )

        assert flood.rejections >= SUBMITTERS, "the flood should hit max_queue again and again"
        assert not flood.bad_rejections, flood.bad_rejections[:5]
        assert final.rejected == flood.rejections * BATCH_SIZE  # tasks refused, not calls
        assert samples.max_pending <= MAX_QUEUE
        assert samples.rss_bytes < idle_rss + RSS_HEADROOM
        assert len(set(flood.accepted)) == len(flood.accepted), "a task id was given twice"
        assert states == Counter({"TASK_STATE_SUCCEEDED": len(flood.accepted)})
        assert (final.pending, final.succeeded) == (0, len(flood.accepted))
    finally:
        stop_all(processes)
