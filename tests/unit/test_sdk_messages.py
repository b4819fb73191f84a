"""A worker's Results message, as the SDK writes it and the broker reads it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.domain import TaskError
from broker.server.convert import results_from_pb
from worker_sdk._convert._worker import results_message
from worker_sdk._messages import TaskOutcome
from worker_sdk._types import TaskErrorInfo

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
task_ids = st.integers(1, 2**62).map(str)
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
    task_id=task_ids,
    attempt=st.integers(0, 2**32 - 1),
    success=st.booleans(),
    result=st.binary(max_size=40),
    error=st.one_of(st.none(), errors),
    started_at_ms=st.integers(0, 2**50),
    finished_at_ms=st.integers(0, 2**50),
    content_type=texts,
).filter(lambda o: o.success == (o.error is None))


@given(st.lists(outcomes, max_size=4), st.lists(task_ids, max_size=3), st.integers(0, 2**62))
def test_the_broker_reads_every_outcome_as_the_worker_sent_it(
    sent: list[TaskOutcome], started: list[str], seq: int
) -> None:
    message = results_message(sent, started, seq)
    assert message.WhichOneof("kind") == "results"  # even with nothing in it
    assert message.results.seq == seq
    started_ids, results = results_from_pb(message.results)
    assert started_ids == [int(i) for i in started]
    assert len(results) == len(sent)
    for outcome, result in zip(sent, results, strict=True):
        assert (result.task_id, result.attempt, result.success) == (
            int(outcome.task_id),
            outcome.attempt,
            outcome.success,
        )
        assert (result.result, result.result_content_type) == (outcome.result, outcome.content_type)
        assert (result.started_at, result.finished_at) == (
            outcome.started_at_ms / 1000,
            outcome.finished_at_ms / 1000,
        )
        error = outcome.error
        assert result.error == (
            None
            if error is None
            else TaskError(
                type=error.type,
                message=error.message,
                traceback=error.traceback,
                retryable=error.retryable,
                task_fault=error.task_fault,
            )
        )
