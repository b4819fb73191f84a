"""What clients and operators do to a task: cancel it, or send a failed one round again.

Both are lifecycle events (broker.core.lifecycle): they move the task through the
checked state machine in place and leave what others must do in the lifecycle's
effects. A cancelled task stops waiting, or its worker's slot is freed and the worker
is told to stop it; a retried one waits in its pool again with a fresh set of attempts.
"""

from __future__ import annotations

from broker.core.admission import Admission
from broker.core.attempts import move
from broker.core.effects import Effects
from broker.core.held import Held
from broker.core.members import Members
from broker.core.waiting import Waiting
from broker.domain import Task, TaskError, TaskId, TaskState
from broker.errors import FailedPrecondition


class Operators:
    """Cancels and retries, on the lifecycle's tasks."""

    def __init__(
        self,
        live: dict[TaskId, Task],
        effects: Effects,
        admission: Admission,
        waiting: Waiting,
        held: Held,
        members: Members,
    ) -> None:
        self._live = live
        self._effects = effects
        self._admission = admission
        self._waiting = waiting
        self._held = held
        self._members = members

    def cancel(self, task: Task, now: float) -> bool:
        """Cancel a pending or running task (a running one is told to stop on its worker);
        False if it was cancelled already, FailedPrecondition if it ended otherwise. The
        runtime places again once the cancellation is durable."""
        if task.state is TaskState.CANCELLED:
            return False
        if task.state.terminal:
            raise FailedPrecondition(
                f"task {task.id} has {task.state.name.lower()} already; it cannot be cancelled"
            )
        effects = self._effects
        effects.now = now
        if task.state is TaskState.PENDING:
            self._waiting.unwait(task)
        else:
            self._held.release(task)
            if task.worker_id in self._members:
                effects.cancel.append((task.worker_id, [task.id]))
        move(
            task,
            TaskState.CANCELLED,
            finished_at=now,
            error=TaskError(type="Cancelled", message="cancelled by a client request"),
        )
        effects.save.append(task)
        effects.finished.append(task)
        return True

    @staticmethod
    def check_retryable(task: Task) -> None:
        """FailedPrecondition unless an operator may send this task round again."""
        if task.state not in (TaskState.FAILED, TaskState.DEAD_LETTER):
            raise FailedPrecondition(
                f"task {task.id} is {task.state.name.lower()}; only failed or "
                "dead-lettered tasks can be retried"
            )

    def retry(self, task: Task, now: float) -> bool:
        """An operator sends a durable failed or dead-lettered task round again, with a
        fresh set of attempts; False if it is not (yet) durable and terminal. The runtime
        places again once the retries are durable."""
        if task.id in self._live or not task.state.terminal:
            return False  # not durable yet, or retried by a concurrent call
        self._effects.now = now
        move(
            task,
            TaskState.PENDING,
            attempts=0,
            worker_id="",
            assigned_at=0.0,
            started_at=0.0,
            finished_at=0.0,
            result=b"",
            error=None,
            not_before=0.0,
            placement_note="retried by an operator",
        )
        self._effects.save.append(task)
        self._live[task.id] = task
        self._admission.count(task, 1)
        self._waiting.wait(task, now, deadline_from=now)
        return True
