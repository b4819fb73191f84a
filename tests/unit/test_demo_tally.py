"""The demo's live table: done counts succeeded tasks, failed ones apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Console

from cli.demo import PRIORITIES, Tally
from worker_sdk import TaskErrorInfo, TaskInfo, TaskState

CREATED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _task(state: TaskState, priority: int, queued_ms: int) -> TaskInfo:
    failed = state is not TaskState.SUCCEEDED
    return TaskInfo(
        id="1",
        task_type="divide",
        pool="default",
        priority=priority,
        payload=b"",
        state=state,
        attempts=1,
        worker_id="w-1",
        created_at=CREATED,
        assigned_at=CREATED + timedelta(milliseconds=queued_ms),
        started_at=None,
        finished_at=None,
        result=b"",
        error=TaskErrorInfo("ZeroDivisionError", "division by zero", "") if failed else None,
    )


def _rows(tally: Tally) -> dict[str, list[str]]:
    console = Console(width=200, record=True)
    console.print(tally.priority_table())
    rows = {}
    for line in console.export_text().splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        cells = [c for c in cells if c]
        if cells:
            rows[cells[0]] = cells[1:]
    return rows


def test_done_counts_succeeded_tasks_and_failed_ones_apart() -> None:
    name, priority = next(iter(PRIORITIES.items()))
    tally = Tally()
    tally.submitted[priority] += 3
    tally.add(_task(TaskState.SUCCEEDED, priority, 10))
    tally.add(_task(TaskState.SUCCEEDED, priority, 20))
    tally.add(_task(TaskState.FAILED, priority, 30))
    rows = _rows(tally)
    assert rows["priority"] == ["submitted", "done", "failed", "avg wait in queue"]
    # 2 done (succeeded) + 1 failed = 3 submitted; the wait is over all three.
    assert rows[f"{name} ({priority})"] == ["3", "2", "1", "20 ms"]
    assert (sum(tally.done.values()), sum(tally.failed.values())) == (2, 1)
