"""What the engine tells observers (tracing, metrics, the metrics history) as tasks move.

The engine calls every observer synchronously on the event loop, at the moment each
thing happens; an observer must be quick and must not raise (the engine logs and drops
an observer's exception rather than lose a task over it). Observers never change the
tasks they are shown.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from broker.domain import Task, WorkerId

log = logging.getLogger("taskbroker.observe")


class Observer(Protocol):
    """Hooks for the life of a task; each gets the task as it is right then."""

    def submitted(self, tasks: Sequence[Task], at: float) -> None:
        """New tasks were stored (durable) and queued or delayed."""

    def placed(self, task: Task, queue_wait_s: float, at: float) -> None:
        """The task was assigned to `task.worker_id`; `task.placement_note` says why."""

    def attempt_ended(self, task: Task, success: bool, run_s: float, at: float) -> None:
        """An attempt came back (a result, or the broker's timeout). The task is in its
        new state: terminal, or pending again for a retry."""

    def requeued(self, task: Task, reason: str, at: float) -> None:
        """A task a worker held went back to pending without a result (worker lost,
        lease expired, slot reconciled)."""

    def finished(self, task: Task) -> None:
        """The task is terminal and durable."""

    def worker_changed(self, worker_id: WorkerId, pool: str, event: str, at: float) -> None:
        """A worker connected, disconnected, or its breaker or cordon changed (`event`)."""


class Observers:
    """Several observers behind one; an observer that raises is logged, not fatal."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self._observers = list(observers)

    def add(self, observer: Observer) -> None:
        self._observers.append(observer)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def submitted(self, tasks: Sequence[Task], at: float) -> None:
        for observer in self._observers:
            try:
                observer.submitted(tasks, at)
            except Exception:
                log.exception("observer %r failed on submitted", observer)

    def placed(self, task: Task, queue_wait_s: float, at: float) -> None:
        for observer in self._observers:
            try:
                observer.placed(task, queue_wait_s, at)
            except Exception:
                log.exception("observer %r failed on placed", observer)

    def attempt_ended(self, task: Task, success: bool, run_s: float, at: float) -> None:
        for observer in self._observers:
            try:
                observer.attempt_ended(task, success, run_s, at)
            except Exception:
                log.exception("observer %r failed on attempt_ended", observer)

    def requeued(self, task: Task, reason: str, at: float) -> None:
        for observer in self._observers:
            try:
                observer.requeued(task, reason, at)
            except Exception:
                log.exception("observer %r failed on requeued", observer)

    def finished(self, task: Task) -> None:
        for observer in self._observers:
            try:
                observer.finished(task)
            except Exception:
                log.exception("observer %r failed on finished", observer)

    def worker_changed(self, worker_id: WorkerId, pool: str, event: str, at: float) -> None:
        for observer in self._observers:
            try:
                observer.worker_changed(worker_id, pool, event, at)
            except Exception:
                log.exception("observer %r failed on worker_changed", observer)
