"""TaskContext: what a handler gets to know about the task it runs."""

from __future__ import annotations

import json as _json
from datetime import datetime
from typing import Any


class TaskContext:
    """One attempt of one task, as handed to a handler.

    `attempt` is 1-based: 1 on the first run, 2 on the first retry (or redelivery after a
    worker was lost). `deadline` is when the broker gives up on this attempt (its
    execution timeout, timezone-aware UTC), None without one; past it, the attempt fails
    with Timeout and the broker cancels it here.

    `cancelled` turns true when the broker cancels the task (or the worker gives up on it
    while shutting down); sync handlers should check it now and then, async handlers are
    also cancelled with asyncio cancellation.
    """

    __slots__ = (
        "_cancelled",
        "attempt",
        "deadline",
        "payload",
        "priority",
        "task_id",
        "task_type",
        "worker_id",
    )

    def __init__(
        self,
        *,
        task_id: str,
        task_type: str,
        attempt: int,
        priority: int,
        payload: bytes,
        worker_id: str,
        deadline: datetime | None = None,
    ) -> None:
        self.task_id = task_id
        self.task_type = task_type
        self.attempt = attempt
        self.priority = priority
        self.payload = payload
        self.worker_id = worker_id
        self.deadline = deadline
        self._cancelled = False

    def json(self) -> Any:
        """The payload parsed as JSON (what `Client.submit(..., json=...)` sent)."""
        return _json.loads(self.payload)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _cancel(self) -> None:
        self._cancelled = True

    def __repr__(self) -> str:
        return (
            f"TaskContext(task_id={self.task_id!r}, task_type={self.task_type!r}, "
            f"attempt={self.attempt})"
        )
