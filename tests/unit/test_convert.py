"""Tasks on the wire: what the broker writes reads back as it was, however it is built."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.domain import (
    ANYWHERE,
    NO_RETRY,
    TERMINAL_STATES,
    Placement,
    PreferredLabel,
    Task,
    TaskError,
    TaskSpec,
    TaskState,
)
from broker.server import convert
from tests.support.strategies import retry_policies
from worker_sdk._pb import tasks_pb2 as _tasks

characters = st.characters(exclude_categories=["Cs"])  # protobuf strings hold no surrogates
texts = st.text(characters, max_size=20)
names = st.text(characters, min_size=1, max_size=20)
wire_seconds = st.integers(0, 10**12).map(lambda ms: ms / 1000)  # whole milliseconds
placements = st.one_of(
    st.just(ANYWHERE),
    st.builds(
        Placement,
        required_labels=st.dictionaries(names, texts, max_size=3),
        preferred_labels=st.lists(
            st.builds(PreferredLabel, names, texts, st.integers(1, 100)), max_size=3
        ).map(tuple),
        anti_affinity_group=texts,
        anti_affinity_soft=st.booleans(),
        sticky_key=texts,
        routing_key=texts,
    ),
)
retries = st.one_of(st.just(NO_RETRY), retry_policies(names, min_attempts=2))
specs = st.builds(
    TaskSpec,
    task_type=names,
    payload=st.binary(max_size=40),
    priority=st.integers(-1000, 1000),
    pool=names,
    placement=placements,
    retry=retries,
    not_before=wire_seconds,
    start_timeout_s=st.floats(0, 1e6),
    execution_timeout_s=st.floats(0, 1e6),
    idempotency_key=texts,
    fairness_key=texts,
    trace_context=st.dictionaries(names, texts, max_size=3),
    payload_content_type=texts,
    submitter=texts,
)
tasks = st.builds(
    Task,
    id=st.integers(1, 2**62),
    spec=specs,
    state=st.sampled_from(TaskState),
    attempts=st.integers(0, 100),
    worker_id=texts,
    created_at=wire_seconds,
    assigned_at=wire_seconds,
    started_at=wire_seconds,
    finished_at=wire_seconds,
    result=st.binary(max_size=40),
    result_content_type=texts,
    error=st.one_of(st.none(), st.builds(TaskError, type=names, message=texts, traceback=texts)),
    placement_note=texts,
    unschedulable=st.booleans(),
    not_before=wire_seconds,
)


@given(tasks)
def test_a_task_reads_back_as_it_was(task: Task) -> None:
    msg = convert.task_to_pb(task)
    assert convert.spec_from_pb(msg.spec, task.spec.submitter) == task.spec
    assert msg.id == str(task.id)
    assert msg.state == int(task.state)
    assert msg.terminal == (task.state in TERMINAL_STATES)
    assert (msg.attempts, msg.worker_id, msg.result) == (task.attempts, task.worker_id, task.result)
    assert [msg.created_at_ms, msg.assigned_at_ms, msg.started_at_ms, msg.finished_at_ms] == [
        round(t * 1000)
        for t in (task.created_at, task.assigned_at, task.started_at, task.finished_at)
    ]
    assert msg.HasField("error") == (task.error is not None)
    if task.error is not None:
        assert (msg.error.type, msg.error.message) == (task.error.type, task.error.message)


@given(tasks)
def test_a_task_built_in_a_repeated_field_is_the_task_built_alone(task: Task) -> None:
    alone = _tasks.Completions()
    alone.tasks.append(convert.task_to_pb(task))
    in_place = _tasks.Completions()
    convert.task_to_pb(task, convert.FULL, in_place.tasks.add)
    assert in_place == alone


@given(tasks)
def test_the_basic_view_leaves_out_payload_and_result(task: Task) -> None:
    msg = convert.task_to_pb(task, convert.BASIC)
    assert (msg.spec.payload, msg.result, msg.view) == (b"", b"", convert.BASIC)
