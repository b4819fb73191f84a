"""State machines: a task's life, and the broker's own lifecycle."""

from __future__ import annotations

import enum

from broker.domain import TaskState
from broker.errors import InvalidTransition

_TASK_MOVES: dict[TaskState, frozenset[TaskState]] = {
    # A pending task that was not started within its start deadline fails.
    TaskState.PENDING: frozenset({TaskState.ASSIGNED, TaskState.CANCELLED, TaskState.FAILED}),
    # A worker may report a result without a start notice; a lost worker sends it back.
    TaskState.ASSIGNED: frozenset(
        {
            TaskState.RUNNING,
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.CANCELLED,
            TaskState.PENDING,
            TaskState.DEAD_LETTER,
        }
    ),
    TaskState.RUNNING: frozenset(
        {
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.CANCELLED,
            TaskState.PENDING,
            TaskState.DEAD_LETTER,
        }
    ),
    TaskState.SUCCEEDED: frozenset(),
    # An operator may send a failed or dead-lettered task round again (`tasks retry`).
    TaskState.FAILED: frozenset({TaskState.PENDING}),
    TaskState.CANCELLED: frozenset(),
    TaskState.DEAD_LETTER: frozenset({TaskState.PENDING}),
}


def can_move(current: TaskState, target: TaskState) -> bool:
    """Whether a task in `current` may go to `target`."""
    return target in _TASK_MOVES[current]


def check_move(current: TaskState, target: TaskState) -> None:
    """Raise InvalidTransition unless a task in `current` may go to `target`."""
    if not can_move(current, target):
        raise InvalidTransition(
            f"a task cannot go from {current.name.lower()} to {target.name.lower()}"
        )


class BrokerState(enum.Enum):
    """The broker's lifecycle."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


_BROKER_MOVES: dict[BrokerState, frozenset[BrokerState]] = {
    BrokerState.CREATED: frozenset({BrokerState.STARTING, BrokerState.STOPPED}),
    BrokerState.STARTING: frozenset({BrokerState.RUNNING, BrokerState.STOPPED}),
    BrokerState.RUNNING: frozenset({BrokerState.DRAINING}),
    BrokerState.DRAINING: frozenset({BrokerState.STOPPED}),
    BrokerState.STOPPED: frozenset(),
}


class Lifecycle:
    """The broker's current lifecycle state; refuses moves the table does not allow."""

    def __init__(self) -> None:
        self._state = BrokerState.CREATED

    @property
    def state(self) -> BrokerState:
        return self._state

    def move(self, target: BrokerState) -> None:
        if target not in _BROKER_MOVES[self._state]:
            raise InvalidTransition(
                f"the broker cannot go from {self._state.value} to {target.value}"
            )
        self._state = target
