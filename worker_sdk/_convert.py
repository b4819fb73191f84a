"""The SDK's edge: protobuf messages and gRPC errors to SDK types and back.

No other module reads or builds a protobuf message; they pass them through opaquely.
"""

from __future__ import annotations

import json as _json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import grpc

from worker_sdk._errors import RESOURCE_EXHAUSTED, TaskbrokerError, Unavailable, error_for_code
from worker_sdk._messages import (
    Assignment,
    AssignmentsReceived,
    BrokerEvent,
    CancelRequested,
    DrainRequested,
    RegisterAcked,
    SubmitAcked,
    TaskOutcome,
    TasksCompleted,
)
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._types import (
    ArmStats,
    Bulkhead,
    BulkheadStats,
    ConfigChange,
    MetricPoint,
    Placement,
    PoolInfo,
    PoolRecommendation,
    PoolStats,
    PreferredLabel,
    RetryPolicy,
    RuntimeStats,
    Stats,
    TaskErrorInfo,
    TaskInfo,
    TaskRequest,
    TaskState,
    WorkerInfo,
)

# -- errors ------------------------------------------------------------------------------

# The trailer gRPC defines for "wait this long before retrying" (milliseconds).
PUSHBACK_KEY: Final = "grpc-retry-pushback-ms"


def _pushback_s(error: grpc.RpcError) -> float | None:
    """The broker's retry hint in seconds; None without one, or with one gRPC says means
    "do not retry" (negative) or that is not a number."""
    try:
        # Pairs at run time (grpc.aio's Metadata), whatever the stubs say.
        trailers = cast(Iterable[tuple[str, str | bytes]], error.trailing_metadata() or ())
    except AttributeError:  # an error raised without a call behind it
        return None
    for key, value in trailers:
        if key == PUSHBACK_KEY:
            text = value.decode() if isinstance(value, bytes) else str(value)
            try:
                ms = int(text)
            except ValueError:
                return None
            return ms / 1000 if ms >= 0 else None
    return None


def rpc_error(error: grpc.RpcError, address: str) -> TaskbrokerError:
    """The SDK exception for a failed gRPC call to the broker at `address`."""
    code = error.code()
    details = error.details() or code.name
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error_for_code(RESOURCE_EXHAUSTED, details, _pushback_s(error))
    if code is grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"broker at {address} is unavailable: {details}")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return TaskbrokerError(
            f"broker at {address} does not implement this call (older than this SDK?): {details}"
        )
    number = code.value[0]
    if not isinstance(number, int):  # pragma: no cover - grpc always uses (int, str)
        number = -1
    return error_for_code(number, details)


# -- values ------------------------------------------------------------------------------

# The largest count a uint32 field carries.
UINT32_MAX: Final = 2**32 - 1

_STATE_FROM_WIRE: dict[_tasks.TaskState.ValueType, TaskState] = {
    _tasks.TASK_STATE_PENDING: TaskState.PENDING,
    _tasks.TASK_STATE_ASSIGNED: TaskState.ASSIGNED,
    _tasks.TASK_STATE_RUNNING: TaskState.RUNNING,
    _tasks.TASK_STATE_SUCCEEDED: TaskState.SUCCEEDED,
    _tasks.TASK_STATE_FAILED: TaskState.FAILED,
    _tasks.TASK_STATE_CANCELLED: TaskState.CANCELLED,
    _tasks.TASK_STATE_DEAD_LETTER: TaskState.DEAD_LETTER,
}
_STATE_TO_WIRE: dict[TaskState, _tasks.TaskState.ValueType] = {
    state: wire for wire, state in _STATE_FROM_WIRE.items()
}


def _time(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def _epoch_ms(when: datetime, name: str) -> int:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, e.g. datetime.now(UTC)")
    return round(when.timestamp() * 1000)


def _seconds_or_none(value: float) -> float | None:
    return value if value > 0 else None


def _positive_seconds(value: float | None, name: str) -> float:
    """Seconds for a wire field where 0 means "none"; None gives 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} is a number of seconds, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds (None = none)")
    return float(value)


def task_state(wire: _tasks.TaskState.ValueType) -> TaskState:
    """A wire TaskState; UNSPECIFIED (a broker that set nothing) reads as PENDING."""
    return _STATE_FROM_WIRE.get(wire, TaskState.PENDING)


def placement(msg: _tasks.Placement) -> Placement:
    return Placement(
        required_labels=dict(msg.required_labels),
        preferred_labels=tuple(
            PreferredLabel(p.key, p.value, p.weight) for p in msg.preferred_labels
        ),
        anti_affinity_group=msg.anti_affinity_group,
        anti_affinity_soft=msg.anti_affinity_soft,
        sticky_key=msg.sticky_key,
        routing_key=msg.routing_key,
    )


def retry_policy(msg: _tasks.RetryPolicy) -> RetryPolicy:
    """A wire RetryPolicy; zeros read as the defaults the broker applies for them."""
    defaults = RetryPolicy()
    return RetryPolicy(
        max_attempts=msg.max_attempts or defaults.max_attempts,
        initial_backoff_s=msg.initial_backoff_s or defaults.initial_backoff_s,
        max_backoff_s=msg.max_backoff_s or defaults.max_backoff_s,
        backoff_multiplier=msg.backoff_multiplier or defaults.backoff_multiplier,
        retryable_errors=tuple(msg.retryable_errors),
        non_retryable_errors=tuple(msg.non_retryable_errors),
    )


def _set_retry_policy(policy: RetryPolicy, msg: _tasks.RetryPolicy) -> None:
    if not isinstance(policy, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, not {type(policy).__name__}")
    msg.max_attempts = policy.max_attempts
    msg.initial_backoff_s = policy.initial_backoff_s
    msg.max_backoff_s = policy.max_backoff_s
    msg.backoff_multiplier = policy.backoff_multiplier
    msg.retryable_errors.extend(policy.retryable_errors)
    msg.non_retryable_errors.extend(policy.non_retryable_errors)


def task_info(task: _tasks.Task) -> TaskInfo:
    spec = task.spec
    error = None
    if task.HasField("error"):
        error = TaskErrorInfo(task.error.type, task.error.message, task.error.traceback)
    hints = placement(spec.placement) if spec.HasField("placement") else Placement()
    return TaskInfo(
        id=task.id,
        task_type=spec.task_type,
        pool=spec.pool,
        priority=spec.priority,
        payload=spec.payload,
        state=task_state(task.state),
        attempts=task.attempts,
        worker_id=task.worker_id,
        created_at=_time(task.created_at_ms),
        assigned_at=_time(task.assigned_at_ms),
        started_at=_time(task.started_at_ms),
        finished_at=_time(task.finished_at_ms),
        result=task.result,
        error=error,
        placement=hints,
        placement_note=task.placement_note,
        unschedulable=task.unschedulable,
        retry=retry_policy(spec.retry) if spec.HasField("retry") else None,
        not_before=_time(task.not_before_ms or spec.not_before_ms),
        start_timeout=_seconds_or_none(spec.start_timeout_s),
        execution_timeout=_seconds_or_none(spec.execution_timeout_s),
        idempotency_key=spec.idempotency_key or None,
        fairness_key=spec.fairness_key or None,
    )


def task_spec(
    request: TaskRequest,
    *,
    now: float | None = None,
    trace_context: Mapping[str, str] | None = None,
) -> _tasks.TaskSpec:
    """The wire form of a submit; TypeError or ValueError for arguments it cannot hold.

    Called where the task is submitted, so a bad argument fails that call alone and
    never the stream it would have shared with other submits. A `delay` counts from
    `now` (epoch seconds; default: the current time). `trace_context` is the W3C
    context of the client's submit span, stored with the task.
    """
    spec = _tasks.TaskSpec(
        task_type=request.task_type,
        payload=request.payload,
        priority=request.priority,
        pool=request.pool,
    )
    if trace_context:
        spec.trace_context.update(trace_context)
    if request.anti_affinity_soft and not request.anti_affinity:
        raise ValueError("anti_affinity_soft=True needs an anti_affinity group")
    if (
        request.require
        or request.prefer
        or request.anti_affinity
        or request.sticky_key
        or request.routing_key
    ):
        _set_placement(request, spec.placement)
    if request.retry is not None:
        _set_retry_policy(request.retry, spec.retry)
    spec.not_before_ms = _not_before_ms(request, now)
    spec.start_timeout_s = _positive_seconds(request.start_timeout, "start_timeout")
    spec.execution_timeout_s = _positive_seconds(request.execution_timeout, "execution_timeout")
    try:
        spec.idempotency_key = request.idempotency_key or ""
        spec.fairness_key = request.fairness_key or ""
    except TypeError as exc:
        raise TypeError(f"idempotency_key and fairness_key are str ({exc})") from None
    return spec


def _not_before_ms(request: TaskRequest, now: float | None) -> int:
    if request.delay is not None and request.not_before is not None:
        raise ValueError("pass delay or not_before, not both")
    if request.not_before is not None:
        if not isinstance(request.not_before, datetime):
            raise TypeError(f"not_before must be a datetime, not {type(request.not_before)}")
        return _epoch_ms(request.not_before, "not_before")
    if request.delay is None:
        return 0
    delay = request.delay
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise TypeError(f"delay is a number of seconds, not {type(delay).__name__}")
    if not (delay >= 0 and math.isfinite(delay)):
        raise ValueError("delay must be a number of seconds >= 0")
    start = time.time() if now is None else now
    return round((start + delay) * 1000)


def _set_placement(request: TaskRequest, msg: _tasks.Placement) -> None:
    try:
        if request.require:
            msg.required_labels.update(request.require)
        for p in request.prefer:
            msg.preferred_labels.add(key=p.key, value=p.value, weight=p.weight)
        msg.anti_affinity_group = request.anti_affinity or ""
        msg.sticky_key = request.sticky_key or ""
        msg.routing_key = request.routing_key or ""
    except (TypeError, AttributeError) as exc:
        raise TypeError(
            "placement hints: require maps str to str, prefer holds PreferredLabel(key: str, "
            "value: str, weight: int), anti_affinity, sticky_key and routing_key are str "
            f"({exc})"
        ) from None
    msg.anti_affinity_soft = request.anti_affinity_soft


def spec_size(spec: _tasks.TaskSpec) -> int:
    """How many bytes the task adds to a stream message."""
    size: int = spec.ByteSize()
    return size


def bulkhead(msg: _admin.Bulkhead) -> Bulkhead:
    return Bulkhead(
        task_type=msg.task_type,
        max_inflight=msg.max_inflight,
        max_queue=msg.max_queue,
        rate_per_s=msg.rate_per_s,
        rate_burst=msg.rate_burst,
    )


def pool_info(pool: _admin.Pool) -> PoolInfo:
    return PoolInfo(
        name=pool.name,
        strategy=pool.strategy,
        ab_strategy=pool.ab_strategy,
        ab_percent=pool.ab_percent,
        sticky_timeout_s=pool.sticky_timeout_s,
        max_inflight=pool.max_inflight,
        max_queue=pool.max_queue,
        rate_per_s=pool.rate_per_s,
        rate_burst=pool.rate_burst,
        client_rate_per_s=pool.client_rate_per_s,
        client_rate_burst=pool.client_rate_burst,
        rate_mode=pool.rate_mode or "reject",  # the proto's default
        breaker_failures=pool.breaker_failures,
        breaker_failure_rate=pool.breaker_failure_rate,
        breaker_window=pool.breaker_window,
        breaker_cooldown_s=pool.breaker_cooldown_s,
        lease_s=pool.lease_s,
        bulkheads=tuple(bulkhead(b) for b in pool.bulkheads),
        fairness_weights=dict(pool.fairness_weights),
    )


# Pool settings that are one scalar field each, by their name in Pool and in PoolInfo.
POOL_SCALAR_SETTINGS: Final = (
    "strategy",
    "ab_strategy",
    "ab_percent",
    "sticky_timeout_s",
    "max_inflight",
    "max_queue",
    "rate_per_s",
    "rate_burst",
    "client_rate_per_s",
    "client_rate_burst",
    "rate_mode",
    "breaker_failures",
    "breaker_failure_rate",
    "breaker_window",
    "breaker_cooldown_s",
    "lease_s",
)


def _set_pool_settings(pool: _admin.Pool, settings: Mapping[str, object]) -> None:
    """Set the named settings (POOL_SCALAR_SETTINGS, `bulkheads`, `fairness_weights`) on
    `pool`; a list or map setting replaces the old one whole. ValueError or TypeError for a
    value the wire cannot hold (a negative count, a str for a number)."""
    for name, value in settings.items():
        if name == "bulkheads":
            if not isinstance(value, Iterable) or isinstance(value, str | bytes):
                raise TypeError("bulkheads is a sequence of Bulkhead")
            items = list(value)
            if not all(isinstance(b, Bulkhead) for b in items):
                raise TypeError("bulkheads is a sequence of Bulkhead")
            del pool.bulkheads[:]
            for b in items:
                pool.bulkheads.add(
                    task_type=b.task_type,
                    max_inflight=b.max_inflight,
                    max_queue=b.max_queue,
                    rate_per_s=b.rate_per_s,
                    rate_burst=b.rate_burst,
                )
        elif name == "fairness_weights":
            if not isinstance(value, Mapping):
                raise TypeError("fairness_weights maps fairness keys (str) to weights (int)")
            pool.fairness_weights.clear()
            pool.fairness_weights.update(value)
        elif name in POOL_SCALAR_SETTINGS:
            setattr(pool, name, value)
        else:
            raise TypeError(f"unknown pool setting {name!r}")


def worker_info(status: _admin.WorkerStatus) -> WorkerInfo:
    return WorkerInfo(
        worker_id=status.worker_id,
        pool=status.pool,
        labels=dict(status.labels),
        capacity=status.capacity,
        task_types=tuple(status.task_types),
        in_flight=status.in_flight,
        load=status.load,
        connected_at=_time(status.connected_at_ms),
        last_heartbeat=_time(status.last_heartbeat_ms),
        draining=status.draining,
        cordoned=status.cordoned,
        breaker=status.breaker or "closed",  # a broker without breakers has none open
        consecutive_failures=status.consecutive_failures,
    )


def arm_stats(arm: _admin.ArmStats) -> ArmStats:
    return ArmStats(
        strategy=arm.strategy,
        placed=arm.placed,
        finished=arm.finished,
        failed=arm.failed,
        mean_wait_s=arm.mean_wait_s,
        mean_run_s=arm.mean_run_s,
    )


def runtime_stats(runtime: _admin.RuntimeStats) -> RuntimeStats:
    return RuntimeStats(
        task_type=runtime.task_type,
        samples=runtime.samples,
        mean_run_s=runtime.mean_run_s,
        stddev_run_s=runtime.stddev_run_s,
        predictions=runtime.predictions,
        mean_abs_error_s=runtime.mean_abs_error_s,
    )


def bulkhead_stats(b: _admin.BulkheadStats) -> BulkheadStats:
    return BulkheadStats(
        task_type=b.task_type,
        pending=b.pending,
        in_flight=b.in_flight,
        max_queue=b.max_queue,
        max_inflight=b.max_inflight,
    )


def pool_stats(p: _admin.PoolStats) -> PoolStats:
    return PoolStats(
        pool=p.pool,
        strategy=p.strategy,
        pending=p.pending,
        active=p.assigned,
        succeeded=p.succeeded,
        failed=p.failed,
        cancelled=p.cancelled,
        workers=p.workers,
        capacity=p.capacity,
        unschedulable=p.unschedulable,
        arms=tuple(arm_stats(a) for a in p.arms),
        runtimes=tuple(runtime_stats(r) for r in p.runtimes),
        sticky_hits=p.sticky_hits,
        sticky_misses=p.sticky_misses,
        strategy_notes=tuple(p.strategy_notes),
        delayed=p.delayed,
        dead_letter=p.dead_letter,
        rejected=p.rejected,
        rate_limited=p.rate_limited,
        retried=p.retried,
        timed_out=p.timed_out,
        expired=p.expired,
        lease_expired=p.lease_expired,
        reconciled=p.reconciled,
        deduplicated=p.deduplicated,
        max_queue=p.max_queue,
        max_inflight=p.max_inflight,
        bulkheads=tuple(bulkhead_stats(b) for b in p.bulkheads),
        throughput_per_s=p.throughput_per_s,
        wait_p50_s=p.wait_p50_s,
        wait_p99_s=p.wait_p99_s,
        run_p50_s=p.run_p50_s,
        run_p99_s=p.run_p99_s,
        oldest_pending_age_s=p.oldest_pending_age_s,
    )


def stats(response: _admin.StatsResponse) -> Stats:
    return Stats(
        broker_state=response.broker_state,
        pools=tuple(pool_stats(p) for p in response.pools),
    )


def metric_point(msg: _admin.MetricPoint) -> MetricPoint:
    return MetricPoint(
        start=datetime.fromtimestamp(msg.start_ms / 1000, UTC),
        bucket_s=msg.bucket_s,
        pool=msg.pool,
        task_type=msg.task_type,
        worker_id=msg.worker_id,
        submitted=msg.submitted,
        completed=msg.completed,
        failed=msg.failed,
        wait_mean_s=msg.wait_mean_s,
        wait_p50_s=msg.wait_p50_s,
        wait_p99_s=msg.wait_p99_s,
        run_mean_s=msg.run_mean_s,
        run_p50_s=msg.run_p50_s,
        run_p99_s=msg.run_p99_s,
    )


def pool_recommendation(msg: _admin.PoolRecommendation) -> PoolRecommendation:
    return PoolRecommendation(
        pool=msg.pool,
        current_workers=msg.current_workers,
        recommended_workers=msg.recommended_workers,
        arrival_rate_per_s=msg.arrival_rate_per_s,
        mean_run_s=msg.mean_run_s,
        slots_per_worker=msg.slots_per_worker,
        servers=msg.servers,
        utilisation=msg.utilisation,
        expected_wait_s=msg.expected_wait_s,
        probability_of_wait=msg.probability_of_wait,
        method=msg.method,
        reasoning=tuple(msg.reasoning),
    )


def _pool_settings(text: str, pool: str, which: str) -> dict[str, Any] | None:
    """A pool's settings as the broker recorded them (a JSON object); None for ""."""
    if not text:
        return None
    try:
        settings = _json.loads(text)
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise TaskbrokerError(
            f"broker sent a config change of pool {pool!r} whose {which} settings are not "
            "a JSON object"
        )
    return settings


def config_change(msg: _admin.ConfigChange) -> ConfigChange:
    """A wire ConfigChange; TaskbrokerError if its settings are not JSON objects."""
    return ConfigChange(
        at=datetime.fromtimestamp(msg.at_ms / 1000, UTC),
        who=msg.who,
        source=msg.source,
        pool=msg.pool,
        before=_pool_settings(msg.before, msg.pool, "before"),
        after=_pool_settings(msg.after, msg.pool, "after"),
        fields=tuple(msg.fields),
    )


# -- TaskService and AdminService requests -----------------------------------------------


def submit_stream_request(
    batch_id: int, specs: Sequence[_tasks.TaskSpec], watch_task_ids: Sequence[str]
) -> _tasks.SubmitStreamRequest:
    """A stream message of specs from `task_spec`, and the ids to watch."""
    return _tasks.SubmitStreamRequest(
        batch_id=batch_id,
        tasks=specs,
        watch=False,
        watch_task_ids=watch_task_ids,
    )


def submit_stream_event(response: _tasks.SubmitStreamResponse) -> SubmitAcked | TasksCompleted:
    kind = response.WhichOneof("kind")
    if kind == "ack":
        ack = response.ack
        retry_after = ack.retry_after_ms / 1000 if ack.retry_after_ms else None
        return SubmitAcked(
            ack.batch_id, list(ack.task_ids), ack.error_code, ack.error_message, retry_after
        )
    if kind == "completions":
        done = response.completions
        return TasksCompleted([task_info(t) for t in done.tasks], list(done.not_found))
    raise TaskbrokerError(f"broker sent an empty SubmitStreamResponse ({kind!r})")


def submit_batch_request(
    requests: Sequence[TaskRequest], trace_contexts: Sequence[Mapping[str, str]] | None = None
) -> _tasks.SubmitBatchRequest:
    """A batch of submits; `trace_contexts` (one per request) as for `task_spec`."""
    if trace_contexts is None:
        return _tasks.SubmitBatchRequest(tasks=[task_spec(r) for r in requests])
    return _tasks.SubmitBatchRequest(
        tasks=[task_spec(r, trace_context=c) for r, c in zip(requests, trace_contexts, strict=True)]
    )


def submit_batch_ids(response: _tasks.SubmitBatchResponse) -> list[str]:
    return list(response.task_ids)


def get_request(task_id: str) -> _tasks.GetTaskRequest:
    return _tasks.GetTaskRequest(task_id=task_id)


def cancel_request(task_id: str) -> _tasks.CancelRequest:
    return _tasks.CancelRequest(task_id=task_id)


def cancelled_task(response: _tasks.CancelResponse) -> TaskInfo:
    return task_info(response.task)


def retry_request(
    task_ids: Sequence[str], dead_letter_pool: str | None, limit: int | None
) -> _tasks.RetryRequest:
    return _tasks.RetryRequest(
        task_ids=task_ids, dead_letter_pool=dead_letter_pool or "", limit=limit or 0
    )


def retried_tasks(response: _tasks.RetryResponse) -> list[TaskInfo]:
    return [task_info(t) for t in response.tasks]


def list_tasks_request(
    *,
    pool: str | None,
    states: Iterable[TaskState],
    task_type: str | None,
    limit: int,
    before_id: str | None,
) -> _tasks.ListTasksRequest:
    return _tasks.ListTasksRequest(
        pool=pool or "",
        states=[_STATE_TO_WIRE[s] for s in states],
        task_type=task_type or "",
        limit=limit,
        before_id=before_id or "",
    )


def listed_tasks(response: _tasks.ListTasksResponse) -> list[TaskInfo]:
    return [task_info(t) for t in response.tasks]


def list_pools_request() -> _admin.ListPoolsRequest:
    return _admin.ListPoolsRequest()


def listed_pools(response: _admin.ListPoolsResponse) -> list[PoolInfo]:
    return [pool_info(p) for p in response.pools]


def create_pool_request(name: str, settings: Mapping[str, object]) -> _admin.CreatePoolRequest:
    """A new pool with these settings (see `_set_pool_settings`); unnamed ones are 0/empty."""
    pool = _admin.Pool(name=name)
    _set_pool_settings(pool, settings)
    return _admin.CreatePoolRequest(pool=pool)


def update_pool_request(
    listed: _admin.ListPoolsResponse, name: str, changes: Mapping[str, object]
) -> _admin.UpdatePoolRequest | None:
    """The pool `name` as listed, with the given settings changed; None if it is not listed.

    UpdatePool replaces every setting, so the others are sent back as read, and so is any
    setting this SDK does not know yet (protobuf keeps unknown fields).
    """
    current = next((p for p in listed.pools if p.name == name), None)
    if current is None:
        return None
    pool = _admin.Pool()
    pool.CopyFrom(current)
    _set_pool_settings(pool, changes)
    return _admin.UpdatePoolRequest(pool=pool)


def list_workers_request(pool: str | None) -> _admin.ListWorkersRequest:
    return _admin.ListWorkersRequest(pool=pool or "")


def listed_workers(response: _admin.ListWorkersResponse) -> list[WorkerInfo]:
    return [worker_info(w) for w in response.workers]


def drain_worker_request(worker_id: str) -> _admin.DrainWorkerRequest:
    return _admin.DrainWorkerRequest(worker_id=worker_id)


def drained_worker(response: _admin.DrainWorkerResponse) -> WorkerInfo:
    return worker_info(response.worker)


def cordon_worker_request(worker_id: str, cordon: bool) -> _admin.CordonWorkerRequest:
    return _admin.CordonWorkerRequest(worker_id=worker_id, cordon=cordon)


def stats_request() -> _admin.StatsRequest:
    return _admin.StatsRequest()


def _uint32(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} is a whole number, not {type(value).__name__}")
    if not minimum <= value <= UINT32_MAX:
        raise ValueError(f"{name} must be {minimum}..{UINT32_MAX}, got {value}")
    return value


def _filter(value: str | None, name: str) -> str:
    """An optional filter; None and "" both mean "all"."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} is a str, not {type(value).__name__}")
    return value or ""


def metrics_history_request(
    *,
    pool: str | None,
    task_type: str | None,
    worker_id: str | None,
    since: datetime | timedelta | None,
    until: datetime | None,
    bucket_s: int,
    now: datetime | None = None,
) -> _admin.MetricsHistoryRequest:
    """The wire form of a history query. A `since` timedelta counts back from `now`
    (default: the current time); an unset `since` or `until` leaves the broker's default
    (the last hour, up to now). ValueError or TypeError for what the wire cannot say."""
    since_ms = 0
    if isinstance(since, timedelta):
        if since <= timedelta(0):
            raise ValueError("since, as a timedelta, must be positive (that long ago)")
        since_ms = _epoch_ms((now or datetime.now(UTC)) - since, "since")
    elif isinstance(since, datetime):
        since_ms = _epoch_ms(since, "since")
    elif since is not None:
        raise TypeError(f"since is a datetime or a timedelta, not {type(since).__name__}")
    until_ms = 0
    if isinstance(until, datetime):
        until_ms = _epoch_ms(until, "until")
    elif until is not None:
        raise TypeError(f"until is a datetime, not {type(until).__name__}")
    if since_ms and until_ms and since_ms >= until_ms:
        raise ValueError("since must be before until")
    if since_ms < 0 or until_ms < 0:
        raise ValueError("since and until must be after 1970")
    return _admin.MetricsHistoryRequest(
        pool=_filter(pool, "pool"),
        task_type=_filter(task_type, "task_type"),
        worker_id=_filter(worker_id, "worker_id"),
        since_ms=since_ms,
        until_ms=until_ms,
        bucket_s=_uint32(bucket_s, "bucket_s", 0),
    )


def metric_points(response: _admin.MetricsHistoryResponse) -> list[MetricPoint]:
    return [metric_point(p) for p in response.points]


def recommend_request(
    pool: str | None, target_wait_s: float, horizon_s: float
) -> _admin.RecommendRequest:
    return _admin.RecommendRequest(
        pool=_filter(pool, "pool"),
        target_wait_s=_positive_seconds(target_wait_s, "target_wait_s"),
        horizon_s=_positive_seconds(horizon_s, "horizon_s"),
    )


def recommendations(response: _admin.RecommendResponse) -> list[PoolRecommendation]:
    return [pool_recommendation(p) for p in response.pools]


def reload_config_request() -> _admin.ReloadConfigRequest:
    return _admin.ReloadConfigRequest()


def config_history_request(pool: str | None, limit: int) -> _admin.ConfigHistoryRequest:
    return _admin.ConfigHistoryRequest(pool=_filter(pool, "pool"), limit=_uint32(limit, "limit", 1))


def config_changes(
    response: _admin.ReloadConfigResponse | _admin.ConfigHistoryResponse,
) -> list[ConfigChange]:
    return [config_change(c) for c in response.changes]


# -- WorkerService.Connect ---------------------------------------------------------------


def register_message(
    *,
    worker_id: str,
    pool: str,
    labels: Mapping[str, str],
    capacity: int,
    task_types: Iterable[str],
    sdk_version: str,
) -> _worker.WorkerMessage:
    return _worker.WorkerMessage(
        register=_worker.Register(
            worker_id=worker_id,
            pool=pool,
            labels=dict(labels),
            capacity=capacity,
            task_types=list(task_types),
            sdk_version=sdk_version,
        )
    )


def heartbeat_message(
    in_flight: int, load: float, held_task_ids: Iterable[str] = (), assignments_seen: int = 0
) -> _worker.WorkerMessage:
    return _worker.WorkerMessage(
        heartbeat=_worker.Heartbeat(
            in_flight=in_flight,
            load=load,
            held_task_ids=held_task_ids,
            assignments_seen=assignments_seen,
        )
    )


def credit_message(capacity: int) -> _worker.WorkerMessage:
    return _worker.WorkerMessage(credit=_worker.Credit(capacity=capacity))


def _task_result(outcome: TaskOutcome) -> _worker.TaskResult:
    result = _worker.TaskResult(
        task_id=outcome.task_id,
        attempt=outcome.attempt,
        success=outcome.success,
        result=outcome.result,
        started_at_ms=outcome.started_at_ms,
        finished_at_ms=outcome.finished_at_ms,
    )
    if outcome.error is not None:
        result.error.type = outcome.error.type
        result.error.message = outcome.error.message
        result.error.traceback = outcome.error.traceback
    return result


def results_message(
    outcomes: Sequence[TaskOutcome], started_task_ids: Sequence[str]
) -> _worker.WorkerMessage:
    return _worker.WorkerMessage(
        results=_worker.Results(
            results=[_task_result(o) for o in outcomes],
            started_task_ids=started_task_ids,
        )
    )


def broker_event(message: _worker.BrokerMessage) -> BrokerEvent | None:
    """The event a BrokerMessage carries; None for an empty message (ignored)."""
    kind = message.WhichOneof("kind")
    if kind == "assignments":
        return AssignmentsReceived(
            [
                Assignment(
                    a.task_id,
                    a.attempt,
                    a.task_type,
                    a.payload,
                    a.priority,
                    _time(a.deadline_ms),
                    dict(a.trace_context),
                )
                for a in message.assignments.assignments
            ],
            message.assignments.seq,
        )
    if kind == "cancel":
        return CancelRequested(list(message.cancel.task_ids))
    if kind == "drain":
        return DrainRequested(message.drain.reason)
    if kind == "register_ack":
        ack = message.register_ack
        return RegisterAcked(ack.worker_id, ack.heartbeat_interval_s)
    return None
