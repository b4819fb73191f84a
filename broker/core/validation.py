"""What a task, a worker or a caller may ask for: the limits, checked once at the door.

Every string and list that comes in on the wire has its limit here (the README's
"Limits" table lists them). Each check raises the broker's error for the caller
(InvalidArgument, OverLimit, NotFound) with a message that names the field and
the limit; `where` prefixes it with the task's place in a batch ("task 3: "). Pure:
time is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Container, Iterable, Sequence

from broker.domain import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    NO_RETRY,
    Placement,
    PoolConfig,
    RetryPolicy,
    TaskResult,
    TaskSpec,
    WorkerSpec,
)
from broker.errors import InvalidArgument, NotFound, OverLimit

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
MAX_TASK_TYPES = 256  # task types one worker registers
MAX_ERROR_NAMES = 64  # error types in each list of a retry policy
MAX_TASK_IDS = 10_000  # task ids in one request or worker message
MAX_TASK_STATES = 16  # states in a task list filter
MAX_BULKHEADS = 256  # bulkheads of one pool
MAX_FAIRNESS_WEIGHTS = 1000  # fairness weights of one pool
MAX_STICKY_KEYS = 100_000  # sticky keys a pool remembers; the least recently used go


def check_length(
    value: str, field: str, limit: int = MAX_NAME_LENGTH, where: str = "", path: str = ""
) -> None:
    """InvalidArgument unless `value` has at most `limit` characters; `path` is the
    request field at fault (BadRequest), `field` by default."""
    if len(value) > limit:
        raise InvalidArgument(
            f"{where}{field} is longer than {limit} characters (got {len(value)})",
            field=path or field,
        )


def check_count(
    items: Collection[object], field: str, limit: int, where: str = "", path: str = ""
) -> None:
    """InvalidArgument unless `items` holds at most `limit` entries."""
    if len(items) > limit:
        raise InvalidArgument(
            f"{where}{field} holds more than {limit} entries (got {len(items)})",
            field=path or field,
        )


def check_names(
    names: Collection[str],
    field: str,
    count: int,
    length: int = MAX_NAME_LENGTH,
    where: str = "",
    path: str = "",
) -> None:
    """At most `count` names, each of at most `length` characters."""
    check_count(names, field, count, where, path)
    for name in names:
        check_length(name, f"each of {field}", length, where, path or field)


def check_wait_timeout(timeout_s: float) -> None:
    """A Wait's timeout: a finite number of seconds, 0 or more (0 asks for the broker's
    longest wait, max_wait_s, which also caps longer ones)."""
    if not (math.isfinite(timeout_s) and timeout_s >= 0):
        raise InvalidArgument(
            f"timeout_s must be a finite number of seconds, 0 (the longest wait) or more, "
            f"got {timeout_s}",
            field="timeout_s",
        )


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
        raise InvalidArgument("a batch needs at least one task", field="tasks")
    if len(specs) > max_batch_size:
        raise InvalidArgument(
            f"a batch holds at most {max_batch_size} tasks, got {len(specs)}", field="tasks"
        )
    several = len(specs) > 1
    for index, spec in enumerate(specs):
        validate_spec(
            spec,
            f"task {index}: " if several else "",
            pools=pools,
            max_payload_bytes=max_payload_bytes,
            now=now,
            path=f"tasks[{index}]." if several else "",
        )


def validate_spec(
    spec: TaskSpec,
    where: str,
    *,
    pools: Container[str],
    max_payload_bytes: int,
    now: float,
    path: str = "",
) -> None:
    """Check one task's type, priority, pool, placement, options and payload size. Each
    error names the TaskSpec field at fault (BadRequest), after `path` (in a batch,
    "tasks[3].")."""
    if not spec.task_type or not spec.task_type.strip():
        raise InvalidArgument(f"{where}task_type must not be empty", field=f"{path}task_type")
    check_length(spec.task_type, "task_type", MAX_NAME_LENGTH, where, f"{path}task_type")
    if not MIN_PRIORITY <= spec.priority <= MAX_PRIORITY:
        raise InvalidArgument(
            f"{where}priority must be {MIN_PRIORITY}..{MAX_PRIORITY}, got {spec.priority}",
            field=f"{path}priority",
        )
    check_length(spec.pool, "pool", MAX_NAME_LENGTH, where, f"{path}pool")
    if spec.pool not in pools:
        raise NotFound(
            f"{where}pool {spec.pool!r} does not exist "
            "(declare it in the config or create it with `taskbroker pools create`)",
            field=f"{path}pool",
        )
    if not spec.placement.free:
        validate_placement(spec.placement, where, f"{path}placement.")
    check_length(
        spec.placement.routing_key,
        "routing_key",
        MAX_KEY_LENGTH,
        where,
        f"{path}placement.routing_key",
    )
    if spec.has_options:
        validate_options(spec, where, now, path)
    if len(spec.payload) > max_payload_bytes:
        raise OverLimit(
            f"{where}payload is {len(spec.payload)} bytes, over the limit of "
            f"{max_payload_bytes} (max_payload_bytes)",
            field=f"{path}payload",
        )


def validate_options(spec: TaskSpec, where: str, now: float, path: str = "") -> None:
    """Check the retry policy, delay, deadlines, keys and trace context."""
    if spec.retry is not NO_RETRY:
        validate_retry(spec.retry, where, path)
    for name in ("start_timeout_s", "execution_timeout_s"):
        value = getattr(spec, name)
        if not 0 <= value <= MAX_TIMEOUT_S:
            raise InvalidArgument(
                f"{where}{name} must be 0 (none)..{MAX_TIMEOUT_S:g} seconds, got {value:g}",
                field=f"{path}{name}",
            )
    if spec.not_before < 0 or spec.not_before > now + MAX_DELAY_S:
        raise InvalidArgument(
            f"{where}not_before must be within a year from now", field=f"{path}not_before_ms"
        )
    for name in ("idempotency_key", "fairness_key"):
        if len(value := getattr(spec, name)) > MAX_KEY_LENGTH:  # its field path built only then
            check_length(value, name, MAX_KEY_LENGTH, where, f"{path}{name}")
    trace = spec.trace_context
    if len(trace) > MAX_TRACE_KEYS or any(
        len(k) > MAX_KEY_LENGTH or len(v) > MAX_TRACE_VALUE for k, v in trace.items()
    ):
        raise InvalidArgument(
            f"{where}trace_context holds at most {MAX_TRACE_KEYS} keys of at most "
            f"{MAX_KEY_LENGTH} characters, with values of at most {MAX_TRACE_VALUE}",
            field=f"{path}trace_context",
        )


def validate_retry(retry: RetryPolicy, where: str, path: str = "") -> None:
    """Check a task's retry policy (the default one needs no check)."""
    check_names(
        retry.retryable_errors,
        "retry retryable_errors",
        MAX_ERROR_NAMES,
        where=where,
        path=f"{path}retry.retryable_errors",
    )
    check_names(
        retry.non_retryable_errors,
        "retry non_retryable_errors",
        MAX_ERROR_NAMES,
        where=where,
        path=f"{path}retry.non_retryable_errors",
    )
    if not 1 <= retry.max_attempts <= MAX_ATTEMPTS:
        raise InvalidArgument(
            f"{where}retry max_attempts must be 1..{MAX_ATTEMPTS}, got {retry.max_attempts}",
            field=f"{path}retry.max_attempts",
        )
    if not 0 < retry.initial_backoff_s <= retry.max_backoff_s <= MAX_TIMEOUT_S:
        raise InvalidArgument(
            f"{where}retry backoff must have 0 < initial_backoff_s <= max_backoff_s <= "
            f"{MAX_TIMEOUT_S:g}, got {retry.initial_backoff_s:g} and {retry.max_backoff_s:g}",
            field=f"{path}retry.initial_backoff_s",
        )
    if not 1 <= retry.backoff_multiplier <= 100:
        raise InvalidArgument(
            f"{where}retry backoff_multiplier must be 1..100, got {retry.backoff_multiplier:g}",
            field=f"{path}retry.backoff_multiplier",
        )


def validate_placement(placement: Placement, where: str, path: str = "placement.") -> None:
    """Check a task's labels, its anti-affinity group and its sticky key."""
    check_length(placement.sticky_key, "sticky_key", MAX_KEY_LENGTH, where, f"{path}sticky_key")
    labels = [*placement.required_labels.items()]
    labels += [(p.key, p.value) for p in placement.preferred_labels]
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            f"{where}a task names at most {MAX_LABELS} labels", field=f"{path}required_labels"
        )
    for key, value in labels:
        if not key or len(key) > MAX_NAME_LENGTH or len(value) > MAX_NAME_LENGTH:
            raise InvalidArgument(
                f"{where}invalid label {key!r}={value!r}: a key is 1-{MAX_NAME_LENGTH} "
                f"characters, a value at most {MAX_NAME_LENGTH}",
                field=f"{path}required_labels"
                if key in placement.required_labels
                else f"{path}preferred_labels",
            )
    for preferred in placement.preferred_labels:
        if not 1 <= preferred.weight <= MAX_PREFERENCE_WEIGHT:
            raise InvalidArgument(
                f"{where}preferred label {preferred.key}={preferred.value}: weight must be "
                f"1..{MAX_PREFERENCE_WEIGHT}, got {preferred.weight}",
                field=f"{path}preferred_labels",
            )
    check_length(
        placement.anti_affinity_group,
        "anti_affinity_group",
        MAX_NAME_LENGTH,
        where,
        f"{path}anti_affinity_group",
    )


def validate_worker(spec: WorkerSpec) -> None:
    """Check what a worker registers: capacity, task types, id, pool, labels, version."""
    if not 0 <= spec.capacity <= MAX_CAPACITY:
        raise InvalidArgument(f"capacity must be 0 (paused)..{MAX_CAPACITY}, got {spec.capacity}")
    if not spec.task_types:
        raise InvalidArgument("a worker must register at least one task type")
    check_names(spec.task_types, "task_types", MAX_TASK_TYPES)
    for task_type in spec.task_types:
        if not task_type.strip():
            raise InvalidArgument(f"invalid task type {task_type!r}")
    check_length(spec.worker_id, "worker_id")
    check_length(spec.pool, "pool")
    check_length(spec.sdk_version, "sdk_version")
    if len(spec.labels) > MAX_LABELS:
        raise InvalidArgument(f"labels: a worker has at most {MAX_LABELS} labels")
    for key, value in spec.labels.items():
        check_length(key, "label key")
        check_length(value, "label value")


def validate_report(started: Collection[object], results: Sequence[TaskResult]) -> None:
    """Check a worker's results message: how many, and each error's type. (Messages and
    tracebacks are cut to max_traceback_chars later; results over max_result_bytes fail
    their task.)"""
    check_count(started, "started_task_ids", MAX_TASK_IDS)
    check_count(results, "results", MAX_TASK_IDS)
    for result in results:
        if result.error is not None:
            check_length(result.error.type, "error type")


def validate_heartbeat(load: float, held: Collection[object] | None) -> None:
    """Check a heartbeat: a finite load, and at most MAX_TASK_IDS held ids."""
    if not math.isfinite(load):
        raise InvalidArgument(f"load must be a finite number, got {load}")
    if held is not None:
        check_count(held, "held_task_ids", MAX_TASK_IDS)


def validate_pool_request(pool: PoolConfig) -> None:
    """Check the strings and lists of a pool from a caller, before its settings are checked
    (broker.config.validate_pool): name, strategy names, bulkheads, fairness weights."""
    check_length(pool.name, "pool name")
    for name in ("strategy", "ab_strategy", "rate_mode"):
        check_length(getattr(pool, name), name)
    check_count(pool.bulkheads, "bulkheads", MAX_BULKHEADS)
    for bulkhead in pool.bulkheads:
        check_length(bulkhead.task_type, "bulkhead task_type")
    check_names(pool.fairness_weights, "fairness_weights", MAX_FAIRNESS_WEIGHTS, MAX_KEY_LENGTH)


def validate_names(**names: str) -> None:
    """Check names a query or command takes (pools, task types, worker ids)."""
    for field, value in names.items():
        check_length(value, field)


def validate_ids(field: str, ids: Iterable[object]) -> None:
    """Check the count of task ids in one request."""
    check_count(list(ids), field, MAX_TASK_IDS)


def validate_capacity(capacity: int) -> None:
    """Check a worker's new capacity (0 pauses it)."""
    if not 0 <= capacity <= MAX_CAPACITY:
        raise InvalidArgument(f"capacity must be 0..{MAX_CAPACITY}, got {capacity}")
