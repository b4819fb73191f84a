"""Slot accounting under lost messages and broken streams.

Simulated workers talk to a real engine (SQLite store, fake clock) through channels
that drop assignments messages, results and whole streams at random. Whatever is
dropped, the broker's count of each worker's busy slots must come back to what the
worker really holds (heartbeats reconcile it, leases catch what they cannot), no
slot may leak, no worker may idle while work waits, and every task must finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from broker.clock import FakeClock
from broker.domain import PoolConfig, Task, TaskId, TaskResult, TaskSpec, TaskState, WorkerSpec
from broker.errors import BrokerError
from broker.runtime.engine import Engine
from broker.storage.sqlite import SQLiteStore
from tests.support.config import make_config

TASKS = 300
WORKERS = 4
CAPACITY = 3


class LossyWorker:
    """A worker process and its stream: gets assignments (unless the message is lost),
    runs them, reports results (unless lost) and heartbeats what it holds."""

    def __init__(self, worker_id: str, rng: random.Random) -> None:
        self.worker_id = worker_id
        self.rng = rng
        self.holding: dict[TaskId, int] = {}  # task -> attempt, as the worker sees it
        self.sent: list[tuple[int, list[TaskId]]] = []  # assignments messages, by seq
        self.seq = 0
        self.seen = 0
        self.loss = 0.0
        self.closed = False

    # The engine's WorkerChannel --------------------------------------------------------

    def send_assignments(self, tasks: Sequence[Task]) -> None:
        self.seq += 1
        self.sent.append((self.seq, [t.id for t in tasks]))
        if self.rng.random() < self.loss:
            return  # the message is lost; a later one still moves `seen` past it
        self.seen = self.seq
        for task in tasks:
            self.holding[task.id] = task.attempts

    def send_cancel(self, task_ids: Sequence[TaskId]) -> None:
        for task_id in task_ids:
            self.holding.pop(task_id, None)

    def send_drain(self, reason: str, deadline: float = 0.0, stopping: bool = False) -> None:
        pass

    def send_dropped(self, dropped: Sequence[tuple[TaskResult, str]]) -> None:
        pass

    def close(self, error: BrokerError | None) -> None:
        self.closed = True

    def in_transit(self, seen: int) -> set[TaskId]:
        return {i for seq, ids in self.sent if seq > seen for i in ids}

    # What the worker does each step ----------------------------------------------------

    def work(self, engine: Engine) -> None:
        done = [i for i in self.holding if self.rng.random() < 0.6]
        results = []
        for task_id in done:
            attempt = self.holding.pop(task_id)
            if self.rng.random() < self.loss:
                continue  # ran, but the result is lost
            results.append(TaskResult(task_id=task_id, attempt=attempt, success=True))
        if results:
            engine.report(self.worker_id, [], results)
        engine.heartbeat(self.worker_id, 0.0, sorted(self.holding), self.seen)


def connect(engine: Engine, worker: LossyWorker) -> None:
    worker.holding.clear()
    worker.sent.clear()
    worker.seq = worker.seen = 0
    worker.closed = False
    spec = WorkerSpec(
        worker_id=worker.worker_id, pool="default", capacity=CAPACITY, task_types=frozenset("t")
    )
    engine.connect_worker(spec, worker)


def check_slots(engine: Engine, live: dict[TaskId, Task]) -> None:
    """The engine agrees with itself: each slot holds exactly its active tasks."""
    active: dict[str, set[TaskId]] = {}
    for task in live.values():
        if task.state.active:
            active.setdefault(task.worker_id, set()).add(task.id)
    for status in engine.workers():
        held = active.get(status.spec.worker_id, set())
        assert status.in_flight == len(held), status.spec.worker_id


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_no_slot_leaks_whatever_is_lost(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    # Every task must survive the rough patch, however often it is lost: no delivery cap.
    config = make_config(
        tmp_path, heartbeat_interval_s=1.0, heartbeat_timeout_s=3.0, max_deliveries=1000
    )
    config = dataclasses.replace(config, pools=(PoolConfig(name="default", lease_s=4.0),))
    async with await SQLiteStore.open(config.db_path, clock=clock) as store:
        engine = Engine(config, store, clock, rng=random.Random(seed))
        await engine.recover()
        engine.start()
        workers = [LossyWorker(f"w{i}", rng) for i in range(WORKERS)]
        for worker in workers:
            connect(engine, worker)
        submitted = await engine.submit([TaskSpec(task_type="t") for _ in range(TASKS)])
        ids = [t.id for t in submitted]

        async def step(loss: float, breaks: float) -> None:
            for worker in workers:
                worker.loss = loss
                if rng.random() < breaks:  # the stream breaks; the worker reconnects
                    engine.disconnect_worker(worker.worker_id, "stream broke")
                    connect(engine, worker)
                worker.work(engine)
            clock.advance(1.0)
            engine.reap()
            engine.tick()
            for worker in workers:
                if worker.closed:  # reaped: it comes back
                    connect(engine, worker)
            for _ in range(5):
                await asyncio.sleep(0)
            check_slots(engine, engine._core.live)

        for _ in range(30):  # a rough patch: messages and streams lost at random
            await step(loss=0.2, breaks=0.05)
        for _ in range(200):  # then calm: everything left must finish
            await step(loss=0.0, breaks=0.0)
            pending = sum(s.pending for s in await engine.stats())
            if pending:  # no worker idles while work waits
                for status in engine.workers():
                    assert status.in_flight == status.capacity, "a worker idles"
            real = {w.worker_id: set(w.holding) for w in workers}
            if all(not held for held in real.values()) and not pending:
                break
        done = await engine.wait(ids, max_wait=5)
        assert {t.state for t in done} == {TaskState.SUCCEEDED}
        for status in engine.workers():
            assert status.in_flight == 0  # no slot leaked
        stats = (await engine.stats())[0]
        assert stats.active == 0
        assert stats.reconciled + stats.lease_expired > 0  # the losses were repaired
