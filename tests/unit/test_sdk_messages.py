"""A worker's Results message: every outcome, as the wire schema has it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker_sdk._convert._worker import results_message
from worker_sdk._messages import TaskOutcome
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._types import TaskErrorInfo

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
errors = st.builds(
    TaskErrorInfo,
    type=texts,
    message=texts,
    traceback=texts,
    retryable=st.one_of(st.none(), st.booleans()),
    task_fault=st.booleans(),
)
outcomes = st.builds(
    TaskOutcome,
    task_id=texts,
    attempt=st.integers(0, 2**32 - 1),
    success=st.booleans(),
    result=st.binary(max_size=40),
    error=st.one_of(st.none(), errors),
    started_at_ms=st.integers(0, 2**62),
    finished_at_ms=st.integers(0, 2**62),
    content_type=texts,
)


def expected(outcome: TaskOutcome) -> _worker.TaskResult:
    msg = _worker.TaskResult(
        task_id=outcome.task_id,
        attempt=outcome.attempt,
        success=outcome.success,
        result=outcome.result,
        started_at_ms=outcome.started_at_ms,
        finished_at_ms=outcome.finished_at_ms,
        result_content_type=outcome.content_type,
    )
    if (error := outcome.error) is not None:
        msg.error.CopyFrom(
            _tasks.TaskError(
                type=error.type,
                message=error.message,
                traceback=error.traceback,
                task_fault=error.task_fault,
            )
        )
        if error.retryable is not None:
            msg.error.retryable = error.retryable
    return msg


@given(st.lists(outcomes, max_size=4), st.lists(texts, max_size=3), st.integers(0, 2**62))
def test_results_carry_every_outcome(sent: list[TaskOutcome], started: list[str], seq: int) -> None:
    message = results_message(sent, started, seq)
    assert message.WhichOneof("kind") == "results"  # even with nothing in it
    assert message.results == _worker.Results(
        results=[expected(o) for o in sent], started_task_ids=started, seq=seq
    )
