"""What a task or a worker may ask for: the limits, checked once at the door.

Each check raises the broker's error for the caller (InvalidArgument, NotFound,
ResourceExhausted) with a message that names the field and the limit; `where`
prefixes it with the task's place in a batch ("task 3: "). Pure: time is passed in.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from broker.domain import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Placement,
    TaskSpec,
    WorkerSpec,
)
from broker.errors import InvalidArgument, NotFound, ResourceExhausted

MAX_CAPACITY = 10_000
MAX_NAME_LENGTH = 200
MAX_LABELS = 64
MAX_PREFERENCE_WEIGHT = 1000
MAX_ATTEMPTS = 100
MAX_TIMEOUT_S = 30 * 86_400.0
MAX_KEY_LENGTH = 200
MAX_TRACE_KEYS = 8  # traceparent, tracestate and a little room
MAX_TRACE_VALUE = 1024
MAX_DELAY_S = 366 * 86_400.0  # how far ahead not_before may be


def validate_batch(
    specs: Sequence[TaskSpec],
    *,
    pools: Container[str],
    max_batch_size: int,
    max_payload_bytes: int,
    now: float,
) -> None:
    """Check a submitted batch: its size, then each spec (see `validate_spec`)."""
    if not specs:
        raise InvalidArgument("a batch needs at least one task")
    if len(specs) > max_batch_size:
        raise InvalidArgument(f"a batch holds at most {max_batch_size} tasks, got {len(specs)}")
    several = len(specs) > 1
    for index, spec in enumerate(specs):
        validate_spec(
            spec,
            f"task {index}: " if several else "",
            pools=pools,
            max_payload_bytes=max_payload_bytes,
            now=now,
        )


def validate_spec(
    spec: TaskSpec, where: str, *, pools: Container[str], max_payload_bytes: int, now: float
) -> None:
    """Check one task's type, priority, pool, placement, options and payload size."""
    if not spec.task_type or not spec.task_type.strip():
        raise InvalidArgument(f"{where}task_type must not be empty")
    if len(spec.task_type) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"{where}task_type is longer than {MAX_NAME_LENGTH} characters")
    if not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
        raise InvalidArgument(
            f"{where}priority must be {MIN_PRIORITY}..{MAX_PRIORITY}, got {spec.priority}"
        )
    if spec.pool not in pools:
        raise NotFound(
            f"{where}pool {spec.pool!r} does not exist "
            "(declare it in the config or create it with `taskbroker pools create`)"
        )
    if not spec.placement.free:
        validate_placement(spec.placement, where)
    if spec.has_options:
        validate_options(spec, where, now)
    if len(spec.payload) > max_payload_bytes:
        raise ResourceExhausted(
            f"{where}payload is {len(spec.payload)} bytes, over the limit of "
            f"{max_payload_bytes} (max_payload_bytes)"
        )


def validate_options(spec: TaskSpec, where: str, now: float) -> None:
    """Check the retry policy, delay, deadlines, keys and trace context."""
    retry = spec.retry
    if not 1 <= retry.max_attempts <= MAX_ATTEMPTS:
        raise InvalidArgument(
            f"{where}retry max_attempts must be 1..{MAX_ATTEMPTS}, got {retry.max_attempts}"
        )
    if not 0 < retry.initial_backoff_s <= retry.max_backoff_s <= MAX_TIMEOUT_S:
        raise InvalidArgument(
            f"{where}retry backoff must have 0 < initial_backoff_s <= max_backoff_s <= "
            f"{MAX_TIMEOUT_S:g}, got {retry.initial_backoff_s:g} and {retry.max_backoff_s:g}"
        )
    if not 1 <= retry.backoff_multiplier <= 100:
        raise InvalidArgument(
            f"{where}retry backoff_multiplier must be 1..100, got {retry.backoff_multiplier:g}"
        )
    for name in ("start_timeout_s", "execution_timeout_s"):
        value = getattr(spec, name)
        if not 0 <= value <= MAX_TIMEOUT_S:
            raise InvalidArgument(
                f"{where}{name} must be 0 (none)..{MAX_TIMEOUT_S:g} seconds, got {value:g}"
            )
    if spec.not_before < 0 or spec.not_before > now + MAX_DELAY_S:
        raise InvalidArgument(f"{where}not_before must be within a year from now")
    for name in ("idempotency_key", "fairness_key"):
        if len(getattr(spec, name)) > MAX_KEY_LENGTH:
            raise InvalidArgument(f"{where}{name} is longer than {MAX_KEY_LENGTH} characters")
    trace = spec.trace_context
    if len(trace) > MAX_TRACE_KEYS or any(
        len(k) > MAX_KEY_LENGTH or len(v) > MAX_TRACE_VALUE for k, v in trace.items()
    ):
        raise InvalidArgument(
            f"{where}trace_context holds at most {MAX_TRACE_KEYS} keys of at most "
            f"{MAX_KEY_LENGTH} characters, with values of at most {MAX_TRACE_VALUE}"
        )


def validate_placement(placement: Placement, where: str) -> None:
    """Check a task's required and preferred labels and its anti-affinity group."""
    labels = [*placement.required_labels.items()]
    labels += [(p.key, p.value) for p in placement.preferred_labels]
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{where}a task names at most {MAX_LABELS} labels")
    for key, value in labels:
        if not key or len(key) > MAX_NAME_LENGTH or len(value) > MAX_NAME_LENGTH:
            raise InvalidArgument(
                f"{where}invalid label {key!r}={value!r}: a key is 1-{MAX_NAME_LENGTH} "
                f"characters, a value at most {MAX_NAME_LENGTH}"
            )
    for preferred in placement.preferred_labels:
        if not 1 <= preferred.weight <= MAX_PREFERENCE_WEIGHT:
            raise InvalidArgument(
                f"{where}preferred label {preferred.key}={preferred.value}: weight must be "
                f"1..{MAX_PREFERENCE_WEIGHT}, got {preferred.weight}"
            )
    if len(placement.anti_affinity_group) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{where}anti_affinity_group is longer than {MAX_NAME_LENGTH} characters"
        )


def validate_worker(spec: WorkerSpec) -> None:
    """Check what a worker registers: capacity, task types, id and labels."""
    if not 1 <= spec.capacity <= MAX_CAPACITY:
        raise InvalidArgument(f"capacity must be 1..{MAX_CAPACITY}, got {spec.capacity}")
    if not spec.task_types:
        raise InvalidArgument("a worker must register at least one task type")
    for task_type in spec.task_types:
        if not task_type.strip() or len(task_type) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"invalid task type {task_type!r}")
    if len(spec.worker_id) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"worker_id is longer than {MAX_NAME_LENGTH} characters")
    if len(spec.labels) > MAX_LABELS:
        raise InvalidArgument(f"a worker has at most {MAX_LABELS} labels")


def validate_capacity(capacity: int) -> None:
    """Check a worker's new capacity (0 pauses it)."""
    if not 0 <= capacity <= MAX_CAPACITY:
        raise InvalidArgument(f"capacity must be 0..{MAX_CAPACITY}, got {capacity}")
