"""Fakes for driving the engine without a network: a worker channel that records what it
is sent, worker specs and results."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from broker.domain import Task, TaskId, TaskResult, WorkerSpec
from broker.errors import BrokerError


class RecordingChannel:
    """Collects what the engine sends to one worker."""

    def __init__(self) -> None:
        self.assigned: list[Task] = []
        self.cancelled: list[TaskId] = []
        self.drained: list[str] = []
        self.closed: BrokerError | None = None
        self.wake = asyncio.Event()

    def send_assignments(self, tasks: Sequence[Task]) -> None:
        self.assigned.extend(tasks)
        self.wake.set()

    def send_cancel(self, task_ids: Sequence[TaskId]) -> None:
        self.cancelled.extend(task_ids)

    def send_drain(self, reason: str, deadline: float = 0.0, stopping: bool = False) -> None:
        self.drained.append(reason)

    def in_transit(self, seen: int) -> set[TaskId]:
        return set()

    def send_dropped(self, dropped: Sequence[tuple[TaskResult, str]]) -> None:
        pass

    def close(self, error: BrokerError | None) -> None:
        self.closed = error

    async def until_assigned(self, count: int) -> list[Task]:
        async with asyncio.timeout(5):
            while len(self.assigned) < count:
                self.wake.clear()
                await self.wake.wait()
        return self.assigned


def worker(worker_id: str, capacity: int = 2, types: tuple[str, ...] = ("t",)) -> WorkerSpec:
    return WorkerSpec(
        worker_id=worker_id, pool="default", capacity=capacity, task_types=frozenset(types)
    )


def ok(task: Task, result: bytes = b"done") -> TaskResult:
    return TaskResult(task_id=task.id, attempt=task.attempts, success=True, result=result)
