"""What the lifecycle decided the world should see: the effects of its events.

The lifecycle (broker.core.lifecycle) changes its tasks and its scheduling state in
place and leaves here what someone else must do about it: store these tasks, send
these assignments and cancellations, tell observers and watchers, place again in
these pools. The runtime applies them to the store, the worker channels and the
observers; the simulator to its virtual workers. One sink is reused for the life of
the lifecycle (no list per event): whoever applies it calls `clear()` afterwards. The
runtime does so right after each event, with no await in between, so the effects of
one call are never applied by another.
"""

from __future__ import annotations

from broker.domain import Task, TaskId, WorkerId

# A log record the runtime writes: level, %-format, its arguments, and the task it is
# about (for the record's task fields) or None.
LogNote = tuple[int, str, tuple[object, ...], Task | None]


class Effects:
    """The effects of the events since the last `clear()`, in the order they arose."""

    __slots__ = (
        "attempts",
        "cancel",
        "dispatch",
        "finished",
        "logs",
        "now",
        "placed",
        "requeued",
        "save",
        "worker_events",
    )

    def __init__(self) -> None:
        self.now = 0.0  # when the last event happened
        self.save: list[Task] = []  # tasks whose state changed: persist them
        # New assignments in decision order, with how long each task waited in its queue;
        # send them, one message per worker (`task.worker_id`).
        self.placed: list[tuple[Task, float]] = []
        self.cancel: list[tuple[WorkerId, list[TaskId]]] = []  # tell a worker to stop these
        self.finished: list[Task] = []  # now terminal: tell watchers once durable
        self.dispatch: set[str] = set()  # pools to place again
        self.attempts: list[tuple[Task, bool, float]] = []  # attempts ended: success, run_s
        self.requeued: list[tuple[Task, str]] = []  # held tasks sent back to pending: why
        self.worker_events: list[tuple[WorkerId, str, str]] = []  # worker, pool, event
        self.logs: list[LogNote] = []

    def clear(self) -> None:
        """Forget what was applied (keeping the lists, so the next event allocates none)."""
        if self.save:
            self.save.clear()
        if self.placed:
            self.placed.clear()
        if self.cancel:
            self.cancel.clear()
        if self.finished:
            self.finished.clear()
        if self.dispatch:
            self.dispatch.clear()
        if self.attempts:
            self.attempts.clear()
        if self.requeued:
            self.requeued.clear()
        if self.worker_events:
            self.worker_events.clear()
        if self.logs:
            self.logs.clear()
