"""Who waits for a pool's work to change: an observer that wakes them at once.

The external scaler's StreamIsActive (broker.server.keda) waits here between answers, so
the first task submitted to a pool scaled to zero is pushed to KEDA as it arrives rather
than at KEDA's next poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from broker.domain import Task, WorkerId


class ActivityFeed:
    """An observer (broker.observability.observe) that sets a pool's change event whenever
    a task of the pool is submitted, placed, ends an attempt, is requeued or finishes, or a
    worker of the pool comes, goes or changes."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def next_change(self, pool: str) -> asyncio.Event:
        """An event set at the next change of `pool`; take it before reading the pool's
        state, so that a change in between is not missed."""
        event = self._events.get(pool)
        if event is None:
            event = self._events[pool] = asyncio.Event()
        return event

    def _changed(self, pool: str) -> None:
        event = self._events.pop(pool, None)
        if event is not None:
            event.set()

    def submitted(self, tasks: Sequence[Task], at: float) -> None:
        for pool in {task.spec.pool for task in tasks}:
            self._changed(pool)

    def placed(self, task: Task, queue_wait_s: float, at: float) -> None:
        self._changed(task.spec.pool)

    def attempt_ended(self, task: Task, success: bool, run_s: float, at: float) -> None:
        self._changed(task.spec.pool)

    def requeued(self, task: Task, reason: str, at: float) -> None:
        self._changed(task.spec.pool)

    def finished(self, task: Task) -> None:
        self._changed(task.spec.pool)

    def worker_changed(self, worker_id: WorkerId, pool: str, event: str, at: float) -> None:
        self._changed(pool)
