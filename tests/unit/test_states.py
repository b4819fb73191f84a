"""The task and broker state machines."""

from __future__ import annotations

import pytest

from broker.core.states import BrokerState, Lifecycle, can_move, check_move
from broker.domain import TaskState
from broker.errors import InvalidTransition


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (TaskState.PENDING, TaskState.ASSIGNED),
        (TaskState.PENDING, TaskState.CANCELLED),
        (TaskState.ASSIGNED, TaskState.RUNNING),
        (TaskState.ASSIGNED, TaskState.SUCCEEDED),
        (TaskState.ASSIGNED, TaskState.PENDING),
        (TaskState.RUNNING, TaskState.FAILED),
        (TaskState.RUNNING, TaskState.PENDING),
    ],
)
def test_allowed_task_moves(current: TaskState, target: TaskState) -> None:
    assert can_move(current, target)
    check_move(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (TaskState.PENDING, TaskState.RUNNING),
        (TaskState.PENDING, TaskState.SUCCEEDED),
        (TaskState.SUCCEEDED, TaskState.PENDING),
        (TaskState.FAILED, TaskState.RUNNING),
        (TaskState.CANCELLED, TaskState.PENDING),
        (TaskState.RUNNING, TaskState.ASSIGNED),
    ],
)
def test_refused_task_moves(current: TaskState, target: TaskState) -> None:
    assert not can_move(current, target)
    with pytest.raises(InvalidTransition, match="cannot go from"):
        check_move(current, target)


def test_terminal_states_lead_only_to_an_operator_retry() -> None:
    for state in TaskState:
        if state.terminal:
            ways_out = {target for target in TaskState if can_move(state, target)}
            retryable = state in (TaskState.FAILED, TaskState.DEAD_LETTER)
            assert ways_out == ({TaskState.PENDING} if retryable else set())


def test_broker_lifecycle_in_order() -> None:
    life = Lifecycle()
    assert life.state is BrokerState.CREATED
    for state in (BrokerState.STARTING, BrokerState.RUNNING, BrokerState.DRAINING):
        life.move(state)
    life.move(BrokerState.STOPPED)
    assert life.state.value == "stopped"


def test_broker_lifecycle_refuses_invalid_moves() -> None:
    life = Lifecycle()
    with pytest.raises(InvalidTransition, match="created to running"):
        life.move(BrokerState.RUNNING)
    life.move(BrokerState.STARTING)
    life.move(BrokerState.RUNNING)
    with pytest.raises(InvalidTransition):
        life.move(BrokerState.STARTING)
    life.move(BrokerState.DRAINING)
    life.move(BrokerState.STOPPED)
    with pytest.raises(InvalidTransition):
        life.move(BrokerState.RUNNING)
