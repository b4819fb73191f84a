"""Applying the lifecycle's effects: the store, the worker channels, the observers.

The lifecycle (broker.core.lifecycle) decides; this does. After every event the engine
feeds it, `apply` stores the tasks that changed, sends the new assignments (one message
per worker) and the cancellations, tells the observers, hands the tasks that ended to
the watchers with the store's next durability future, asks for the placements the
event calls for, and re-arms the ticker for the next timer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from broker.core.effects import Effects, LogNote
from broker.core.lifecycle import TaskLifecycle
from broker.domain import Task, WorkerId
from broker.observability.logs import task_fields
from broker.observability.observe import Observers
from broker.runtime.dispatch import Dispatcher
from broker.runtime.registry import WorkerRegistry
from broker.runtime.ticker import Ticker
from broker.runtime.watchers import Watchers

log = logging.getLogger("taskbroker.engine")


class TaskSaves(Protocol):
    """Where changed tasks go (the store): queued saves, and when they are durable."""

    def save(self, task: Task) -> None: ...
    def durable(self) -> asyncio.Future[None]: ...


class Applier:
    """Does what the lifecycle's effects say, then clears them."""

    def __init__(
        self,
        core: TaskLifecycle,
        store: TaskSaves,
        workers: WorkerRegistry,
        observers: Observers,
        watchers: Watchers,
        dispatcher: Dispatcher,
        ticker: Ticker,
    ) -> None:
        self._core = core
        self._store = store
        self._workers = workers
        self.observers = observers
        self._watchers = watchers
        self._dispatcher = dispatcher
        self._ticker = ticker
        self.idle = asyncio.Event()  # no task is held by a worker

    def apply(self) -> asyncio.Future[None] | None:
        """Apply and clear the pending effects; the durability future of the tasks that
        ended, if any did."""
        effects = self._core.effects
        if effects.logs:
            _write_logs(effects.logs)
        if effects.save:
            save = self._store.save
            for task in effects.save:
                save(task)
        if effects.cancel:  # before assignments: a task may be cancelled, then sent again
            for worker_id, task_ids in effects.cancel:
                session = self._workers.get(worker_id)
                if session is not None:
                    session.channel.send_cancel(task_ids)
        if effects.placed:
            self._send_assignments(effects.placed, effects.now)
        if self.observers:
            self._observe(effects)
        durable = None
        if effects.finished:
            durable = self._store.durable()
            self._watchers.finish(list(effects.finished), durable)
        if effects.dispatch:
            self._dispatcher.request(effects.dispatch)
        effects.clear()
        self.update_idle()
        self._ticker.arm()
        return durable

    def update_idle(self) -> None:
        if self._core.active == 0:
            self.idle.set()
        else:
            self.idle.clear()

    def _send_assignments(self, placed: list[tuple[Task, float]], now: float) -> None:
        observers = self.observers
        by_worker: dict[WorkerId, list[Task]] = {}
        for task, queue_wait in placed:
            tasks = by_worker.get(task.worker_id)
            if tasks is None:
                by_worker[task.worker_id] = [task]
            else:
                tasks.append(task)
            if observers:
                observers.placed(task, queue_wait, now)
        workers = self._workers
        for worker_id, tasks in by_worker.items():
            session = workers.connected(worker_id)
            workers.sent_work(session, len(tasks))
            session.channel.send_assignments(tasks)

    def _observe(self, effects: Effects) -> None:
        observers = self.observers
        now = effects.now
        for task, reason in effects.requeued:
            observers.requeued(task, reason, now)
        for task, success, run_s in effects.attempts:
            observers.attempt_ended(task, success, run_s, now)
        for worker_id, pool, event in effects.worker_events:
            observers.worker_changed(worker_id, pool, event, now)


def _write_logs(notes: list[LogNote]) -> None:
    for level, message, args, task in notes:
        if log.isEnabledFor(level):
            log.log(level, message, *args, extra=task_fields(task) if task is not None else None)
