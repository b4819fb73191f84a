"""The limits of what a task or a worker may ask for, and the messages that name them."""

from __future__ import annotations

import pytest

from broker.core.validation import (
    MAX_ATTEMPTS,
    MAX_CAPACITY,
    MAX_LABELS,
    MAX_NAME_LENGTH,
    validate_batch,
    validate_capacity,
    validate_spec,
    validate_worker,
)
from broker.domain import Placement, PreferredLabel, RetryPolicy, TaskSpec, WorkerSpec
from broker.errors import BrokerError, InvalidArgument, NotFound, OverLimit

NOW = 1_700_000_000.0
POOLS = frozenset({"default"})


def check(spec: TaskSpec) -> None:
    validate_spec(spec, "", pools=POOLS, max_payload_bytes=100, now=NOW)


def test_a_batch_is_not_empty_nor_too_big_and_names_its_bad_task() -> None:
    limits = {"pools": POOLS, "max_batch_size": 2, "max_payload_bytes": 100, "now": NOW}
    with pytest.raises(InvalidArgument, match="at least one task"):
        validate_batch([], **limits)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="at most 2 tasks, got 3"):
        validate_batch([TaskSpec(task_type="t")] * 3, **limits)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"^task 1: task_type must not be empty"):
        validate_batch([TaskSpec(task_type="t"), TaskSpec(task_type=" ")], **limits)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"^task_type must not be empty"):
        validate_batch([TaskSpec(task_type="")], **limits)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (TaskSpec(task_type="t" * (MAX_NAME_LENGTH + 1)), InvalidArgument, "longer than"),
        (
            TaskSpec(task_type="t", priority=1001),
            InvalidArgument,
            r"priority must be -1000\.\.1000",
        ),
        (TaskSpec(task_type="t", pool="gpu"), NotFound, "pool 'gpu' does not exist"),
        (TaskSpec(task_type="t", payload=b"x" * 101), OverLimit, "max_payload_bytes"),
        (
            TaskSpec(task_type="t", retry=RetryPolicy(max_attempts=MAX_ATTEMPTS + 1)),
            InvalidArgument,
            "retry max_attempts must be 1..100",
        ),
        (
            TaskSpec(task_type="t", retry=RetryPolicy(initial_backoff_s=5, max_backoff_s=1)),
            InvalidArgument,
            "initial_backoff_s <= max_backoff_s",
        ),
        (
            TaskSpec(task_type="t", retry=RetryPolicy(backoff_multiplier=0.5)),
            InvalidArgument,
            "backoff_multiplier must be 1..100",
        ),
        (TaskSpec(task_type="t", start_timeout_s=-1), InvalidArgument, "start_timeout_s"),
        (TaskSpec(task_type="t", execution_timeout_s=1e9), InvalidArgument, "execution_timeout"),
        (TaskSpec(task_type="t", not_before=NOW + 400 * 86_400), InvalidArgument, "a year"),
        (TaskSpec(task_type="t", idempotency_key="k" * 201), InvalidArgument, "idempotency_key"),
        (
            TaskSpec(task_type="t", trace_context={str(i): "" for i in range(9)}),
            InvalidArgument,
            "trace_context holds at most 8 keys",
        ),
        (
            TaskSpec(
                task_type="t",
                placement=Placement(required_labels={str(i): "" for i in range(MAX_LABELS + 1)}),
            ),
            InvalidArgument,
            "at most 64 labels",
        ),
        (
            TaskSpec(task_type="t", placement=Placement(required_labels={"": "x"})),
            InvalidArgument,
            "invalid label ''='x'",
        ),
        (
            TaskSpec(
                task_type="t",
                placement=Placement(preferred_labels=(PreferredLabel("zone", "a", 0),)),
            ),
            InvalidArgument,
            "preferred label zone=a: weight must be 1..1000, got 0",
        ),
        (
            TaskSpec(task_type="t", placement=Placement(anti_affinity_group="g" * 201)),
            InvalidArgument,
            "anti_affinity_group is longer",
        ),
    ],
)
def test_a_spec_out_of_bounds_is_refused_with_the_field_named(
    spec: TaskSpec, error: type[BrokerError], message: str
) -> None:
    with pytest.raises(error, match=message):
        check(spec)


def test_a_spec_within_bounds_passes() -> None:
    check(
        TaskSpec(
            task_type="t",
            payload=b"x" * 100,
            priority=-1000,
            placement=Placement(required_labels={"zone": "a"}, sticky_key="k"),
            retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=10),
            not_before=NOW + 60,
            start_timeout_s=10,
            execution_timeout_s=10,
            idempotency_key="key",
        )
    )


def worker(**fields: object) -> WorkerSpec:
    values: dict[str, object] = {
        "worker_id": "w",
        "pool": "default",
        "capacity": 1,
        "task_types": frozenset({"t"}),
    }
    values.update(fields)
    return WorkerSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (worker(capacity=MAX_CAPACITY + 1), "capacity must be 0 \\(paused\\)..10000"),
        (worker(task_types=frozenset()), "at least one task type"),
        (worker(task_types=frozenset({" "})), "invalid task type ' '"),
        (worker(worker_id="w" * 201), "worker_id is longer than 200"),
        (worker(labels={str(i): "" for i in range(65)}), "at most 64 labels"),
    ],
)
def test_a_worker_out_of_bounds_is_refused(spec: WorkerSpec, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_worker(spec)


def test_a_capacity_change_may_pause_but_not_exceed() -> None:
    validate_capacity(0)
    validate_capacity(MAX_CAPACITY)
    with pytest.raises(InvalidArgument, match=r"capacity must be 0\.\.10000, got -1"):
        validate_capacity(-1)
