"""How an attempt ends: succeeded, failed, retried after a backoff, or dead-lettered.

Pure decisions on one task, moved in place through the checked state machine; what
is worth a log line goes to the lifecycle's effects.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import replace

from broker.core.effects import LogNote
from broker.core.states import check_move
from broker.domain import Task, TaskError, TaskResult, TaskState


def move(task: Task, state: TaskState, **changes: object) -> Task:
    """Move the task to a new state, in place; InvalidTransition if the state machine
    forbids it. Returns the task."""
    check_move(task.state, state)
    task.state = state
    for name, value in changes.items():
        setattr(task, name, value)
    return task


class Outcomes:
    """Decides how attempts end, by the broker's limits and each task's retry policy."""

    def __init__(
        self,
        *,
        max_result_bytes: int,
        max_traceback_chars: int,
        rng: random.Random,
        events: Counter[tuple[str, str]],
        logs: list[LogNote],
    ) -> None:
        self._max_result_bytes = max_result_bytes
        self._max_traceback_chars = max_traceback_chars
        self._random = rng  # the backoff's jitter
        self._events = events  # (pool, "retried") counts, for stats
        self._logs = logs

    def finish(self, task: Task, result: TaskResult, now: float) -> None:
        """Move the task on from its worker's report of the attempt: SUCCEEDED, FAILED if
        the result is too large, else as `fail` decides (the error truncated)."""
        started_at = task.started_at or worker_time(result.started_at, task.assigned_at, now)
        if result.success:
            if len(result.result) > self._max_result_bytes:
                move(
                    task,
                    TaskState.FAILED,
                    started_at=started_at,
                    finished_at=now,
                    error=TaskError(
                        type="ResultTooLarge",
                        message=f"the result is {len(result.result)} bytes, over the limit "
                        f"of {self._max_result_bytes} (max_result_bytes)",
                    ),
                )
                return
            check_move(task.state, TaskState.SUCCEEDED)
            task.state = TaskState.SUCCEEDED
            task.started_at = started_at
            task.finished_at = now
            task.result = result.result
            task.result_content_type = result.result_content_type
            return
        error = result.error or TaskError(type="Error", message="the worker reported a failure")
        limit = self._max_traceback_chars
        if len(error.traceback) > limit or len(error.message) > limit:
            error = replace(
                error,
                message=truncate(error.message, limit),
                traceback=truncate(error.traceback, limit),
            )
        self.fail(task, error, now, started_at)

    def fail(self, task: Task, error: TaskError, now: float, started_at: float) -> None:
        """A failed attempt: back to pending after a backoff (full jitter) if the retry
        policy allows another; else FAILED, or DEAD_LETTER if retries were allowed and
        ran out."""
        policy = task.spec.retry
        if policy.max_attempts > 1 and policy.retryable(error.type, error.retryable):
            if task.attempts < policy.max_attempts:
                backoff = self._random.uniform(0.0, policy.backoff_cap(task.attempts))
                self._events[(task.spec.pool, "retried")] += 1
                self._logs.append(
                    (
                        logging.INFO,
                        "task %d: attempt %d failed (%s); retrying in %.2f s",
                        (task.id, task.attempts, error.type, backoff),
                        task,
                    )
                )
                move(
                    task,
                    TaskState.PENDING,
                    error=error,
                    not_before=now + backoff,
                    placement_note=f"attempt {task.attempts} of {policy.max_attempts} failed "
                    f"({error.type}); retrying in {backoff:.2f} s",
                )
                return
            self._logs.append(
                (
                    logging.WARNING,
                    "task %d: dead-lettered after %d attempts (%s)",
                    (task.id, task.attempts, error.type),
                    task,
                )
            )
            move(task, TaskState.DEAD_LETTER, started_at=started_at, finished_at=now, error=error)
            return
        move(task, TaskState.FAILED, started_at=started_at, finished_at=now, error=error)


def worker_time(reported: float, earliest: float, now: float) -> float:
    """A time from the worker's clock, where the broker saw nothing better: 0.0 if the
    worker said nothing, else clamped to [earliest, now] (a worker's clock may be wrong,
    even by decades)."""
    if reported <= 0.0:
        return 0.0
    return min(max(reported, earliest), now)


def truncate(text: str, limit: int) -> str:
    """The text, cut to `limit` characters with a note of how much was cut."""
    if len(text) <= limit:
        return text
    marker = f"\n... ({len(text) - limit} characters cut)"
    return text[: max(0, limit - len(marker))] + marker
