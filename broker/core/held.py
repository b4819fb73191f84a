"""Tasks on workers: held from assignment until they come back or are given back.

A task a worker holds has a lease, renewed by the worker's start notices and
heartbeats, and counts as active. It stops being held when its attempt comes back
(a result, or an execution timeout): its slot is freed and its pool learns from the
attempt. Or it is given back: released (cancelled), taken back from a worker that
should no longer run it, or requeued, pending again in its pool (broker.core.waiting),
when its worker is lost or its lease runs out (at-least-once delivery). The lifecycle
(broker.core.lifecycle) decides when; this keeps the leases and the count in step with
the pools' schedulers and the timers.
"""

from __future__ import annotations

import logging

from broker.core.admission import Admission
from broker.core.attempts import move
from broker.core.effects import Effects
from broker.core.scheduler import PoolScheduler
from broker.core.timers import Timers
from broker.core.waiting import Waiting
from broker.domain import Task, TaskId, TaskResult, TaskState


class Held:
    """The tasks workers hold, with their leases, and how each stops being held."""

    def __init__(
        self,
        pools: dict[str, PoolScheduler],
        timers: Timers,
        effects: Effects,
        admission: Admission,
        waiting: Waiting,
    ) -> None:
        self._pools = pools
        self._timers = timers
        self._effects = effects
        self._admission = admission
        self._waiting = waiting
        self.leases: dict[TaskId, float] = {}  # held task -> when its lease runs out
        self.active = 0  # tasks held by workers

    def came_back(self, task: Task, result: TaskResult, now: float) -> float:
        """Free the slot of a task that came back, and let the pool learn from the attempt.
        Returns the attempt's run time."""
        # The broker's measure: from the assignment to the result's arrival.
        run_s = max(0.0, now - task.assigned_at)
        if 0 < result.started_at <= result.finished_at:
            # The worker's own measure is finer (no network in it), but only believed
            # when it fits within what the broker saw.
            worker_run_s = result.finished_at - result.started_at
            if worker_run_s <= max(0.0, now - task.assigned_at):
                run_s = worker_run_s
        pool = self._pools[task.spec.pool]
        worker = pool.workers.get(task.worker_id)
        if worker is None or task.id not in worker.held:
            return run_s
        pool.finish(
            task,
            task.worker_id,
            queue_wait_s=max(0.0, task.assigned_at - task.created_at),
            run_s=run_s,
            success=result.success,
        )
        self.leases.pop(task.id, None)
        if task.spec.execution_timeout_s:
            self._timers.cancel(("timeout", (task.id, task.attempts)))
        self.active -= 1
        return run_s

    def dropped(self, task_id: TaskId) -> None:
        """The task's worker is gone, and its slot with it: it holds the task no more."""
        self.active -= 1
        self.leases.pop(task_id, None)

    def release(self, task: Task) -> None:
        """The worker holding this task no longer does: its credit comes back."""
        pool = self._pools[task.spec.pool]
        worker = pool.workers.get(task.worker_id)
        if worker is not None and task.id in worker.held:
            pool.release(task.worker_id, task.id)
            self.leases.pop(task.id, None)
            if task.spec.execution_timeout_s:
                self._timers.cancel(("timeout", (task.id, task.attempts)))
            self.active -= 1

    def requeue(self, task: Task, reason: str, now: float) -> None:
        """A task a worker held goes back to pending (at-least-once delivery)."""
        effects = self._effects
        effects.requeued.append((task, reason))
        effects.logs.append((logging.DEBUG, "task %d requeued: %s", (task.id, reason), task))
        move(task, TaskState.PENDING)
        effects.save.append(task)
        self.let_go(task)
        self._admission.count(task, 1)
        self._waiting.wait(task, now)

    def let_go(self, task: Task) -> None:
        """Forget the lease and the execution timeout of a task its worker no longer
        holds (its slot is freed or gone already)."""
        self.leases.pop(task.id, None)
        if task.spec.execution_timeout_s:
            self._timers.cancel(("timeout", (task.id, task.attempts)))

    def take_back(self, task: Task, reason: str, now: float) -> None:
        """Free the worker's slot of a task it should no longer run, tell it to stop,
        and requeue the task."""
        self.release(task)
        self._effects.cancel.append((task.worker_id, [task.id]))
        self.requeue(task, reason, now)
