"""Protobuf messages to broker domain types and back: the only module that knows both."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict
from typing import Any

from broker.config import BrokerConfig
from broker.core.validation import (
    MAX_CAPACITY,
    MAX_TASK_IDS,
    MAX_TASK_STATES,
    check_count,
    check_wait_timeout,
)
from broker.domain import (
    ANYWHERE,
    BROKER_ERROR_TYPES,
    BULKHEAD_LIMITS,
    DEFAULT_POOL,
    NO_RETRY,
    POOL_SCALAR_SETTINGS,
    TERMINAL_STATES,
    BulkheadConfig,
    ConfigChange,
    Placement,
    PoolConfig,
    PoolStats,
    PreferredLabel,
    RetryPolicy,
    Task,
    TaskError,
    TaskFilter,
    TaskId,
    TaskResult,
    TaskSpec,
    TaskState,
    WorkerSpec,
    WorkerStatus,
)
from broker.errors import InvalidArgument
from broker.observability.recommend import Recommendation
from broker.observability.rollups import LiveStats, MetricPoint
from broker.service import BrokerStats, pool_etag
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import worker_pb2 as _worker


def _ms(seconds: float) -> int:
    return round(seconds * 1000) if seconds else 0


def _seconds(ms: int) -> float:
    return ms / 1000.0


def _str_map(field: Mapping[str, str]) -> dict[str, str]:
    """A map field as a dict; `dict(field)` would go through the abstract Mapping's
    methods, which costs an empty map as much as a comprehension costs a full one."""
    return {key: field[key] for key in field} if field else {}


def _fill_map(field: MutableMapping[str, str], items: Mapping[str, str]) -> None:
    """Copy into a map field; a map's `update` goes through the abstract MutableMapping's
    methods, at twice the cost for the one or two entries of a trace context."""
    for key, value in items.items():
        field[key] = value


_TASK_ID = re.compile(r"[1-9][0-9]{0,18}")


def task_id_from_pb(text: str, field: str = "task_id") -> TaskId:
    """Task ids travel as decimal strings of a positive integer, written one way only:
    ASCII digits, no sign, no leading zero ("013" is not task 13)."""
    if _TASK_ID.fullmatch(text) is None:
        raise InvalidArgument(f"{text[:40]!r} is not a task id", field=field)
    return int(text)


def task_ids_from_pb(texts: Sequence[str], field: str = "task_ids") -> list[TaskId]:
    return [task_id_from_pb(t, field) for t in texts]


def wait_timeout_from_pb(timeout_s: float) -> float:
    """A Wait's timeout: 0 is the broker's longest wait (inf here, capped by max_wait_s);
    negative, NaN or infinite ones are refused."""
    check_wait_timeout(timeout_s)
    return timeout_s or float("inf")


def placement_from_pb(msg: _tasks.Placement) -> Placement:
    if not (
        msg.required_labels
        or msg.preferred_labels
        or msg.anti_affinity_group
        or msg.sticky_key
        or msg.routing_key
    ):
        return ANYWHERE
    return Placement(
        required_labels=_str_map(msg.required_labels),
        preferred_labels=tuple(
            PreferredLabel(p.key, p.value, p.weight) for p in msg.preferred_labels
        ),
        anti_affinity_group=msg.anti_affinity_group,
        anti_affinity_soft=msg.anti_affinity_soft,
        sticky_key=msg.sticky_key,
        routing_key=msg.routing_key,
    )


def retry_from_pb(msg: _tasks.RetryPolicy) -> RetryPolicy:
    """A retry policy from the wire; unset (0) numbers take the defaults."""
    if msg.max_attempts <= 1 and not msg.retryable_errors and not msg.non_retryable_errors:
        return NO_RETRY
    return RetryPolicy(
        max_attempts=max(1, msg.max_attempts),
        initial_backoff_s=msg.initial_backoff_s or NO_RETRY.initial_backoff_s,
        max_backoff_s=msg.max_backoff_s or NO_RETRY.max_backoff_s,
        backoff_multiplier=msg.backoff_multiplier or NO_RETRY.backoff_multiplier,
        retryable_errors=frozenset(msg.retryable_errors),
        non_retryable_errors=frozenset(msg.non_retryable_errors),
    )


def spec_from_pb(msg: _tasks.TaskSpec, submitter: str = "") -> TaskSpec:
    """The spec of a task to submit; `submitter` is the caller's authenticated identity."""
    return TaskSpec(
        task_type=msg.task_type,
        payload=msg.payload,
        priority=msg.priority,
        pool=msg.pool or DEFAULT_POOL,
        placement=placement_from_pb(msg.placement) if msg.HasField("placement") else ANYWHERE,
        retry=retry_from_pb(msg.retry) if msg.HasField("retry") else NO_RETRY,
        not_before=_seconds(msg.not_before_ms),
        start_timeout_s=msg.start_timeout_s,
        execution_timeout_s=msg.execution_timeout_s,
        idempotency_key=msg.idempotency_key,
        fairness_key=msg.fairness_key,
        trace_context=_str_map(msg.trace_context),
        payload_content_type=msg.payload_content_type,
        submitter=submitter,
    )


def _fill_spec(spec: TaskSpec, msg: _tasks.TaskSpec, *, with_payload: bool = True) -> None:
    """Write `spec` into an empty TaskSpec message; fields left at their defaults are not
    set, which is the same message and costs less."""
    msg.task_type = spec.task_type
    if with_payload and spec.payload:
        msg.payload = spec.payload
    if spec.priority:
        msg.priority = spec.priority
    msg.pool = spec.pool
    if spec.not_before:
        msg.not_before_ms = _ms(spec.not_before)
    if spec.start_timeout_s:
        msg.start_timeout_s = spec.start_timeout_s
    if spec.execution_timeout_s:
        msg.execution_timeout_s = spec.execution_timeout_s
    if spec.idempotency_key:
        msg.idempotency_key = spec.idempotency_key
    if spec.fairness_key:
        msg.fairness_key = spec.fairness_key
    if spec.payload_content_type:
        msg.payload_content_type = spec.payload_content_type
    if spec.trace_context:
        _fill_map(msg.trace_context, spec.trace_context)
    if spec.placement is not ANYWHERE:
        _placement_to_pb(spec.placement, msg.placement)
    if spec.has_retry:
        retry = spec.retry
        msg.retry.CopyFrom(
            _tasks.RetryPolicy(
                max_attempts=retry.max_attempts,
                initial_backoff_s=retry.initial_backoff_s,
                max_backoff_s=retry.max_backoff_s,
                backoff_multiplier=retry.backoff_multiplier,
                retryable_errors=sorted(retry.retryable_errors),
                non_retryable_errors=sorted(retry.non_retryable_errors),
            )
        )


def _placement_to_pb(placement: Placement, msg: _tasks.Placement) -> None:
    msg.required_labels.update(placement.required_labels)
    for p in placement.preferred_labels:
        msg.preferred_labels.add(key=p.key, value=p.value, weight=p.weight)
    msg.anti_affinity_group = placement.anti_affinity_group
    msg.anti_affinity_soft = placement.anti_affinity_soft
    msg.sticky_key = placement.sticky_key
    msg.routing_key = placement.routing_key


def specs_from_pb(msgs: Sequence[_tasks.TaskSpec], submitter: str = "") -> list[TaskSpec]:
    return [spec_from_pb(m, submitter) for m in msgs]


# Each of the broker's error types as TaskError.BrokerType: "WorkerLost" is
# BROKER_TYPE_WORKER_LOST, and so on.
_BROKER_ERROR_TYPES: dict[str, _tasks.TaskError.BrokerType.ValueType] = {
    name: _tasks.TaskError.BrokerType.Value(
        "BROKER_TYPE_" + "".join(f"_{c}" if c.isupper() else c.upper() for c in name).lstrip("_")
    )
    for name in BROKER_ERROR_TYPES
}


def _error_to_pb(error: TaskError, msg: _tasks.TaskError) -> None:
    msg.type = error.type
    msg.message = error.message
    msg.traceback = error.traceback
    msg.broker_type = _BROKER_ERROR_TYPES.get(error.type, _tasks.TaskError.BROKER_TYPE_UNSPECIFIED)


FULL = _tasks.TASK_VIEW_FULL
BASIC = _tasks.TASK_VIEW_BASIC


def task_to_pb(
    task: Task,
    view: _tasks.TaskView.ValueType = FULL,
    new: Callable[..., _tasks.Task] = _tasks.Task,
) -> _tasks.Task:
    """The task on the wire; in the BASIC view without its payload and result. `new`
    makes the message: a repeated field's `add` builds it in place, where appending a
    built message would copy it."""
    full = view != BASIC
    msg = new(
        id=str(task.id),
        state=int(task.state),
        attempts=task.attempts,
        worker_id=task.worker_id,
        created_at_ms=_ms(task.created_at),
        assigned_at_ms=_ms(task.assigned_at),
        started_at_ms=_ms(task.started_at),
        finished_at_ms=_ms(task.finished_at),
        result=task.result if full else b"",
        placement_note=task.placement_note,
        unschedulable=task.unschedulable,
        not_before_ms=_ms(task.not_before),
        result_content_type=task.result_content_type,
        view=FULL if full else BASIC,
        terminal=task.state in TERMINAL_STATES,
        submitter=task.spec.submitter,
    )
    _fill_spec(task.spec, msg.spec, with_payload=full)
    if task.error is not None:
        _error_to_pb(task.error, msg.error)
    return msg


def assignments_to_pb(
    assigned: Sequence[tuple[Task, int]], seq: int, results_seen: int = 0
) -> _worker.BrokerMessage:
    """The `seq`th message of assignments: each task with the attempt it was assigned as;
    with the seq of the last Results message taken from the worker."""
    msg = _worker.BrokerMessage()
    msg.assignments.seq = seq
    msg.assignments.results_seen = results_seen
    add = msg.assignments.assignments.add
    for task, attempt in assigned:
        spec = task.spec
        timeout = spec.execution_timeout_s
        assignment = add(
            task_id=str(task.id),
            attempt=attempt,
            task_type=spec.task_type,
            payload=spec.payload,
            priority=spec.priority,
            deadline_ms=_ms(task.assigned_at + timeout) if timeout else 0,
            payload_content_type=spec.payload_content_type,
        )
        if spec.trace_context:  # as in _fill_spec: only a map with something in it
            _fill_map(assignment.trace_context, spec.trace_context)
    return msg


def cancel_to_pb(cancelled: Sequence[tuple[TaskId, int]]) -> _worker.BrokerMessage:
    """Cancel these attempts (attempt 0: not known); each id in task_ids too, for older
    workers."""
    msg = _worker.BrokerMessage()
    msg.cancel.task_ids.extend(str(task_id) for task_id, _ in cancelled)
    add = msg.cancel.tasks.add
    for task_id, attempt in cancelled:
        add(task_id=str(task_id), attempt=attempt)
    return msg


def drain_to_pb(reason: str, deadline: float, stopping: bool) -> _worker.BrokerMessage:
    kind = _worker.DRAIN_REASON_BROKER_STOPPING if stopping else _worker.DRAIN_REASON_OPERATOR
    return _worker.BrokerMessage(
        drain=_worker.Drain(reason=reason, deadline_ms=_ms(deadline) if deadline else 0, kind=kind)
    )


_DROP_REASONS: dict[str, tuple[_worker.DropReason.ValueType, str]] = {
    "unknown": (
        _worker.DROP_REASON_UNKNOWN_TASK,
        "no such task is in flight (it never existed, or it has ended)",
    ),
    "wrong_attempt": (_worker.DROP_REASON_WRONG_ATTEMPT, "the task is on another attempt now"),
    "not_held": (_worker.DROP_REASON_NOT_HELD, "the task is not held by this worker"),
    "cancelled": (_worker.DROP_REASON_CANCELLED, "the broker cancelled this attempt"),
}


def dropped_to_pb(dropped: Sequence[tuple[TaskResult, str]]) -> _worker.BrokerMessage:
    """Results the broker did not take, with why (a TaskLifecycle DROP_ reason, or
    "cancelled")."""
    msg = _worker.BrokerMessage()
    add = msg.results_dropped.results.add
    for result, why in dropped:
        reason, message = _DROP_REASONS.get(why, (_worker.DROP_REASON_UNSPECIFIED, why))
        add(task_id=str(result.task_id), attempt=result.attempt, reason=reason, message=message)
    return msg


def register_ack_to_pb(
    worker_id: str,
    heartbeat_interval_s: float,
    lease_s: float,
    heartbeat_timeout_s: float,
    *,
    config: BrokerConfig | None = None,
    message_limit: int = 0,
    resume_token: str = "",
    resume_window_s: float = 0.0,
    resumed: bool = False,
    results_seen: int = 0,
    idle_heartbeat: tuple[float, float] = (0.0, 0.0),
) -> _worker.BrokerMessage:
    """The answer to a registration: the worker's id, and with `config` every limit
    and rule the worker must honour."""
    ack = _worker.RegisterAck(
        worker_id=worker_id,
        heartbeat_interval_s=heartbeat_interval_s,
        lease_s=lease_s,
        heartbeat_timeout_s=heartbeat_timeout_s,
        resume_token=resume_token,
        resume_window_s=resume_window_s,
        resumed=resumed,
        results_seen=results_seen,
        idle_heartbeat_interval_s=idle_heartbeat[0],
        idle_heartbeat_timeout_s=idle_heartbeat[1],
    )
    if config is not None:
        ack.results_renew_liveness = True
        ack.acks_results = True
        ack.max_result_bytes = config.max_result_bytes
        ack.max_message_bytes = message_limit
        ack.max_task_ids = MAX_TASK_IDS
        ack.max_batch_size = config.max_batch_size
        ack.max_wait_ids = config.max_batch_size
        ack.max_traceback_chars = config.max_traceback_chars
        ack.max_capacity = MAX_CAPACITY
    return _worker.BrokerMessage(register_ack=ack)


def worker_spec_from_pb(msg: _worker.Register) -> WorkerSpec:
    return WorkerSpec(
        worker_id=msg.worker_id,
        pool=msg.pool or DEFAULT_POOL,
        capacity=msg.capacity,
        task_types=frozenset(msg.task_types),
        labels=_str_map(msg.labels),
        sdk_version=msg.sdk_version,
    )


def results_from_pb(msg: _worker.Results) -> tuple[list[TaskId], list[TaskResult]]:
    started = task_ids_from_pb(msg.started_task_ids)
    results = []
    for r in msg.results:
        error = None
        if not r.success:
            error = TaskError(
                type=r.error.type,
                message=r.error.message,
                traceback=r.error.traceback,
                retryable=r.error.retryable if r.error.HasField("retryable") else None,
                task_fault=r.error.task_fault,
            )
        results.append(
            TaskResult(
                task_id=task_id_from_pb(r.task_id),
                attempt=r.attempt,
                success=r.success,
                result=r.result,
                error=error,
                started_at=_seconds(r.started_at_ms),
                finished_at=_seconds(r.finished_at_ms),
                result_content_type=r.result_content_type,
            )
        )
    return started, results


def filter_from_pb(msg: _tasks.ListTasksRequest) -> TaskFilter:
    check_count(msg.states, "states", MAX_TASK_STATES)
    states = states_from_pb(msg.states)
    return TaskFilter(
        pool=msg.pool,
        states=frozenset(states),
        task_type=msg.task_type,
        limit=msg.limit or 100,
        before_id=task_id_from_pb(msg.before_id, "before_id") if msg.before_id else None,
    )


def states_from_pb(values: Sequence[int]) -> frozenset[TaskState]:
    """Task states from the wire; InvalidArgument for an unknown one."""
    states = set()
    for value in values:
        try:
            states.add(TaskState(value))
        except ValueError:
            raise InvalidArgument(f"unknown task state {value}") from None
    return frozenset(states)


def purge_states_from_pb(values: Sequence[int]) -> frozenset[TaskState]:
    """A purge's states from the wire: at most one of each finished state."""
    if len(values) > len(TaskState):
        raise InvalidArgument(f"at most {len(TaskState)} states, got {len(values)}")
    return states_from_pb(values)


def pool_name_from_pb(name: str) -> str:
    """A pool name from the wire ("" = every pool); InvalidArgument if over 64 characters."""
    if len(name) > MAX_POOL_NAME:
        raise InvalidArgument(f"a pool name is at most {MAX_POOL_NAME} characters")
    return name


MAX_POOL_NAME = 64


def _enum_value(enum: Any, prefix: str, name: str) -> Any:
    """The value of `PREFIX_NAME` in a generated enum, 0 (unspecified) if it has none."""
    return enum.values_by_name.get(
        f"{prefix}_{name.upper()}", enum.values_by_name[f"{prefix}_UNSPECIFIED"]
    ).number


def _enum_name(enum: Any, prefix: str, number: int) -> str:
    """The lower-case name after `PREFIX_` of an enum value; "" for unspecified or unknown."""
    value = enum.values_by_number.get(number)
    if value is None or number == 0:
        return ""
    return str(value.name).removeprefix(f"{prefix}_").lower()


_STRATEGY = _admin.DESCRIPTOR.enum_types_by_name["Strategy"]
_RATE_MODE = _admin.DESCRIPTOR.enum_types_by_name["RateMode"]
_BREAKER = _admin.DESCRIPTOR.enum_types_by_name["BreakerState"]
_BROKER_STATE = _admin.DESCRIPTOR.enum_types_by_name["BrokerState"]


def pool_to_pb(pool: PoolConfig) -> _admin.Pool:
    return _admin.Pool(
        name=pool.name,
        **{name: getattr(pool, name) for name in POOL_SCALAR_SETTINGS},
        bulkheads=[_admin.Bulkhead(**asdict(b)) for b in pool.bulkheads],
        fairness_weights=dict(pool.fairness_weights),
        etag=pool_etag(pool),
        strategy_kind=_enum_value(_STRATEGY, "STRATEGY", pool.strategy),
        rate_mode_kind=_enum_value(_RATE_MODE, "RATE_MODE", pool.rate_mode),
    )


_POOL_DEFAULTS = PoolConfig(name=DEFAULT_POOL)
_POOL_PRESENCE = frozenset(
    f.name for f in _admin.Pool.DESCRIPTOR.fields if f.has_presence and not f.message_type
)


def _pool_setting(msg: _admin.Pool, name: str, default: object) -> Any:
    if name in _POOL_PRESENCE:
        has_field: Any = msg.HasField  # typed for the literal names only
        return getattr(msg, name) if has_field(name) else default
    return getattr(msg, name) or default


def pool_from_pb(msg: _admin.Pool, *, update: bool = False) -> PoolConfig:
    """A pool from the wire; unset (0 or empty) settings take the broker's default. A
    setting with presence on the wire (`optional`, like retention_s, where 0 means
    something) takes the broker's default only when it is not sent. In an update (the
    pool as read, changed), breaker_failures 0 turns the breaker off."""
    settings: dict[str, Any] = {
        name: _pool_setting(msg, name, getattr(_POOL_DEFAULTS, name))
        for name in POOL_SCALAR_SETTINGS
    }
    if update:
        settings["breaker_failures"] = msg.breaker_failures
    if not msg.strategy and msg.strategy_kind:
        settings["strategy"] = _enum_name(_STRATEGY, "STRATEGY", msg.strategy_kind) or "?"
    if not msg.rate_mode and msg.rate_mode_kind:
        settings["rate_mode"] = _enum_name(_RATE_MODE, "RATE_MODE", msg.rate_mode_kind) or "?"
    return PoolConfig(
        name=msg.name,
        **settings,
        bulkheads=tuple(
            BulkheadConfig(task_type=b.task_type, **{n: getattr(b, n) for n in BULKHEAD_LIMITS})
            for b in msg.bulkheads
        ),
        fairness_weights=dict(msg.fairness_weights),
    )


# Pool fields that are not settings: what names the pool and what describes its settings.
_NOT_SETTINGS = frozenset({"name", "etag"})
# Enum twins of string settings: setting one sets the other.
_TWINS = {"strategy_kind": "strategy", "rate_mode_kind": "rate_mode"}
POOL_MASK_PATHS = frozenset(f.name for f in _admin.Pool.DESCRIPTOR.fields) - _NOT_SETTINGS
MAX_MASK_PATHS = 64


def _sets(msg: _admin.Pool, field: Any) -> bool:
    """Whether a request sets a Pool field, as AIP-134 reads an update without a mask: a
    list or map that is not empty, an `optional` field that is present, a scalar that is
    not 0 or ""."""
    if field.is_repeated:
        return len(getattr(msg, field.name)) > 0
    if field.has_presence:
        has_field: Any = msg.HasField
        return bool(has_field(field.name))
    return bool(getattr(msg, field.name))


def pool_update_from_pb(
    request: _admin.UpdatePoolRequest,
) -> tuple[str, dict[str, Any], str]:
    """An UpdatePool request as (pool name, the settings it changes, etag).

    With an update mask, the settings it names take the request's values (0 or empty
    included, read as in `pool_from_pb` for an update); without one, the settings the
    request sets (see `_sets`), so a client that does not know a field never resets it.
    """
    msg = request.pool
    if request.HasField("update_mask"):
        paths = list(request.update_mask.paths)
        check_count(paths, "update_mask.paths", MAX_MASK_PATHS)
        if paths == ["*"]:
            chosen = set(POOL_MASK_PATHS)
        else:
            unknown = [p for p in paths if p not in POOL_MASK_PATHS]
            if unknown:
                raise InvalidArgument(
                    f"update_mask names {unknown[0][:100]!r}, which is not a pool setting "
                    f"(one of {', '.join(sorted(POOL_MASK_PATHS))}, or *)",
                    field="update_mask",
                )
            chosen = set(paths)
    else:
        chosen = {
            f.name for f in msg.DESCRIPTOR.fields if f.name not in _NOT_SETTINGS and _sets(msg, f)
        }
    chosen = {_TWINS.get(name, name) for name in chosen}
    if not msg.name:
        raise InvalidArgument("pool.name must name the pool to update", field="pool.name")
    full = pool_from_pb(msg, update=True)
    return msg.name, {name: getattr(full, name) for name in sorted(chosen)}, request.etag


def worker_status_to_pb(status: WorkerStatus) -> _admin.WorkerStatus:
    spec = status.spec
    return _admin.WorkerStatus(
        worker_id=spec.worker_id,
        pool=spec.pool,
        labels=dict(spec.labels),
        capacity=status.capacity,
        task_types=sorted(spec.task_types),
        in_flight=status.in_flight,
        load=status.load,
        connected_at_ms=_ms(status.connected_at),
        last_heartbeat_ms=_ms(status.last_heartbeat),
        draining=status.draining,
        cordoned=status.cordoned,
        breaker=status.breaker,
        consecutive_failures=status.consecutive_failures,
        breaker_state=_enum_value(_BREAKER, "BREAKER_STATE", status.breaker),
    )


def stats_to_pb(stats: BrokerStats) -> _admin.StatsResponse:
    return _admin.StatsResponse(
        broker_state=stats.broker_state.value,
        state=_enum_value(_BROKER_STATE, "BROKER_STATE", stats.broker_state.value),
        pools=[_pool_stats_to_pb(p.stats, p.live, p.oldest_pending_age_s) for p in stats.pools],
    )


def _pool_stats_to_pb(
    s: PoolStats, live: LiveStats, oldest_pending_age_s: float
) -> _admin.PoolStats:
    return _admin.PoolStats(
        pool=s.pool,
        strategy=s.strategy,
        pending=s.pending,
        assigned=s.active,
        succeeded=s.succeeded,
        failed=s.failed,
        cancelled=s.cancelled,
        workers=s.workers,
        capacity=s.capacity,
        unschedulable=s.unschedulable,
        arms=[
            _admin.ArmStats(
                strategy=a.strategy,
                placed=a.placed,
                finished=a.finished,
                failed=a.failed,
                mean_wait_s=a.mean_wait_s,
                mean_run_s=a.mean_run_s,
            )
            for a in s.arms
        ],
        runtimes=[
            _admin.RuntimeStats(
                task_type=r.task_type,
                samples=r.samples,
                mean_run_s=r.mean_run_s,
                stddev_run_s=r.stddev_run_s,
                predictions=r.predictions,
                mean_abs_error_s=r.mean_abs_error_s,
            )
            for r in s.runtimes
        ],
        sticky_hits=s.sticky_hits,
        sticky_misses=s.sticky_misses,
        strategy_notes=s.strategy_notes,
        delayed=s.delayed,
        dead_letter=s.dead_letter,
        rejected=s.rejected,
        rate_limited=s.rate_limited,
        retried=s.retried,
        timed_out=s.timed_out,
        expired=s.expired,
        lease_expired=s.lease_expired,
        reconciled=s.reconciled,
        deduplicated=s.deduplicated,
        max_queue=s.max_queue,
        max_inflight=s.max_inflight,
        bulkheads=[
            _admin.BulkheadStats(
                task_type=b.task_type,
                pending=b.pending,
                in_flight=b.in_flight,
                max_queue=b.max_queue,
                max_inflight=b.max_inflight,
            )
            for b in s.bulkheads
        ],
        # The pool's live figures (last minute).
        throughput_per_s=live.throughput_per_s,
        wait_p50_s=live.wait_p50_s,
        wait_p99_s=live.wait_p99_s,
        run_p50_s=live.run_p50_s,
        run_p99_s=live.run_p99_s,
        oldest_pending_age_s=oldest_pending_age_s,
    )


def config_change_to_pb(change: ConfigChange) -> _admin.ConfigChange:
    return _admin.ConfigChange(
        at_ms=_ms(change.at),
        who=change.who,
        source=change.source,
        pool=change.pool,
        before=change.before,
        after=change.after,
        fields=change.fields,
    )


def metric_point_to_pb(point: MetricPoint) -> _admin.MetricPoint:
    return _admin.MetricPoint(
        start_ms=_ms(point.start),
        bucket_s=point.bucket_s,
        pool=point.pool,
        task_type=point.task_type,
        worker_id=point.worker_id,
        submitted=point.submitted,
        completed=point.completed,
        failed=point.failed,
        wait_mean_s=point.wait_mean_s,
        wait_p50_s=point.wait_p50_s,
        wait_p99_s=point.wait_p99_s,
        run_mean_s=point.run_mean_s,
        run_p50_s=point.run_p50_s,
        run_p99_s=point.run_p99_s,
    )


def recommendation_to_pb(rec: Recommendation) -> _admin.PoolRecommendation:
    return _admin.PoolRecommendation(
        pool=rec.pool,
        current_workers=rec.current_workers,
        recommended_workers=rec.recommended_workers,
        arrival_rate_per_s=rec.arrival_rate_per_s,
        mean_run_s=rec.mean_run_s,
        slots_per_worker=rec.slots_per_worker,
        servers=rec.servers,
        utilisation=rec.utilisation,
        expected_wait_s=rec.expected_wait_s,
        probability_of_wait=rec.probability_of_wait,
        method=rec.method,
        reasoning=rec.reasoning,
    )
