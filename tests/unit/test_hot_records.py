"""The per-task records (`hot_record`) of the broker and the SDK: plain dataclasses at run
time, compared and hashed as frozen ones are, and frozen to the type checker."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import mypy.api
import pytest

from broker.core.strategies._base import Outcome, WorkerSlot
from broker.domain import Task, TaskError, TaskResult, TaskSpec
from worker_sdk._messages import Assignment, TaskOutcome
from worker_sdk._types import TaskErrorInfo

SPEC = TaskSpec(task_type="resize", payload=b"x", priority=3, trace_context={"a": "b"})
RESULT = TaskResult(
    task_id=7,
    attempt=2,
    success=False,
    error=TaskError(type="ValueError", message="bad"),
    started_at=1.5,
    finished_at=2.5,
)
OUTCOME = Outcome(
    WorkerSlot("w1", "default", 4, frozenset({"resize"})), Task(id=7, spec=SPEC), 0.1, 0.2, True
)
ASSIGNMENT = Assignment("7", 2, "resize", b"x", 3, trace_context={"a": "b"})
DONE = TaskOutcome("7", 2, False, b"", TaskErrorInfo("ValueError", "bad", "tb"), 1, 2)
# A field of each, and another value for it.
CHANGES: list[tuple[Any, str, object]] = [
    (SPEC, "priority", 4),
    (RESULT, "attempt", 3),
    (OUTCOME, "run_s", 0.3),
    (ASSIGNMENT, "attempt", 3),
    (DONE, "finished_at_ms", 3),
]


@pytest.mark.parametrize(("record", "name", "value"), CHANGES, ids=lambda x: type(x).__name__)
def test_equal_by_their_fields(record: Any, name: str, value: object) -> None:
    twin = dataclasses.replace(record)
    assert twin == record
    assert twin is not record
    changed = dataclasses.replace(record, **{name: value})
    assert changed != record
    assert getattr(changed, name) == value
    assert not hasattr(record, "__dict__")  # slots


@pytest.mark.parametrize("record", [RESULT, DONE], ids=lambda x: type(x).__name__)
def test_hashed_by_their_fields(record: Any) -> None:
    assert hash(dataclasses.replace(record)) == hash(record)
    assert len({record, dataclasses.replace(record)}) == 1


@pytest.mark.parametrize("record", [SPEC, ASSIGNMENT], ids=lambda x: type(x).__name__)
def test_unhashable_with_a_dict_field_as_a_frozen_one(record: Any) -> None:
    with pytest.raises(TypeError, match="unhashable"):
        hash(record)


def test_the_broker_ones_take_keywords_only() -> None:
    with pytest.raises(TypeError):
        TaskSpec("resize")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        TaskResult(7, 2, True)  # type: ignore[call-arg]


def test_the_type_checker_sees_them_frozen(tmp_path: Path) -> None:
    """Nothing stops an assignment at run time: `make lint` must."""
    lines = [
        "from broker.core.strategies._base import Outcome",
        "from broker.domain import TaskResult, TaskSpec",
        "from worker_sdk._messages import Assignment, TaskOutcome",
        "def change(s: TaskSpec, r: TaskResult, o: Outcome, a: Assignment, d: TaskOutcome)"
        " -> None:",
    ]
    assigned = {
        "s.task_type": "TaskSpec",
        "r.success": "TaskResult",
        "o.run_s": "Outcome",
        "a.attempt": "Assignment",
        "d.result": "TaskOutcome",
    }
    lines += [f"    {target} = {target}" for target in assigned]
    out, err, _ = mypy.api.run(
        ["--config-file", "", "--strict", "--cache-dir", str(tmp_path), "-c", "\n".join(lines)]
    )
    snippet_errors = [line for line in out.splitlines() if line.startswith("<string>:")]
    assert snippet_errors == [
        f'<string>:{number}: error: Property "{target.split(".")[1]}" defined in "{cls}" is'
        " read-only  [misc]"
        for number, (target, cls) in enumerate(assigned.items(), start=len(lines) - 4)
    ], out + err
