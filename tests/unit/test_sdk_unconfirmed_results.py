"""The results a worker wrote but the broker has not said it saw: kept for a resume,
forgotten once the broker echoes their message's seq or once no resume could want them."""

from __future__ import annotations

from worker_sdk._messages import TaskOutcome
from worker_sdk._session import _Held


def outcome(task_id: str) -> TaskOutcome:
    return TaskOutcome(task_id, 1, True, task_id.encode(), None, 0, 0)


def test_the_broker_echo_forgets_the_results_up_to_it() -> None:
    held = _Held()
    held.unconfirmed.extend([(1, 10.0, [outcome("a")]), (2, 11.0, [outcome("b")])])
    held.seen(1)
    assert [seq for seq, _, _ in held.unconfirmed] == [2]
    held.seen(5)
    assert not held.unconfirmed


def test_results_older_than_any_resume_are_forgotten() -> None:
    held = _Held()
    held.unconfirmed.extend([(1, 10.0, [outcome("a")]), (2, 20.0, [outcome("b")])])
    held.seen(0, written_before=15.0)
    assert [seq for seq, _, _ in held.unconfirmed] == [2]


def test_a_resume_owes_what_the_broker_did_not_see_first() -> None:
    held = _Held()
    held.unconfirmed.extend([(1, 10.0, [outcome("a")]), (2, 11.0, [outcome("b"), outcome("c")])])
    held.outcomes.append(outcome("d"))
    held.resend_unseen(1)
    assert [o.task_id for o in held.outcomes] == ["b", "c", "d"]
    assert not held.unconfirmed
