"""Tasks between the SDK's types and the TaskService's messages: specs, tasks, submits."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType

from worker_sdk._convert._common import (
    epoch_ms,
    positive_seconds,
    seconds_or_none,
    str_map,
    wire_time,
)
from worker_sdk._errors import TaskbrokerError
from worker_sdk._messages import SubmitAcked, TasksCompleted
from worker_sdk._payload import OCTET_STREAM
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._types import (
    Placement,
    PreferredLabel,
    RetryPolicy,
    TaskErrorInfo,
    TaskInfo,
    TaskRequest,
    TaskState,
)

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


# The hints of a task submitted without any, shared by every TaskInfo of one (its labels
# read-only, so no caller can change another's).
_NO_HINTS = Placement(required_labels=MappingProxyType({}))


def task_state(wire: _tasks.TaskState.ValueType) -> TaskState:
    """A wire TaskState; UNSPECIFIED (a broker that set nothing) reads as PENDING."""
    return _STATE_FROM_WIRE.get(wire, TaskState.PENDING)


def placement(msg: _tasks.Placement) -> Placement:
    return Placement(
        required_labels=str_map(msg.required_labels),
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
    hints = placement(spec.placement) if spec.HasField("placement") else _NO_HINTS
    return TaskInfo(
        id=task.id,
        task_type=spec.task_type,
        pool=spec.pool,
        priority=spec.priority,
        payload=spec.payload,
        state=task_state(task.state),
        attempts=task.attempts,
        worker_id=task.worker_id,
        created_at=wire_time(task.created_at_ms),
        assigned_at=wire_time(task.assigned_at_ms),
        started_at=wire_time(task.started_at_ms),
        finished_at=wire_time(task.finished_at_ms),
        result=task.result,
        error=error,
        placement=hints,
        placement_note=task.placement_note,
        unschedulable=task.unschedulable,
        retry=retry_policy(spec.retry) if spec.HasField("retry") else None,
        not_before=wire_time(task.not_before_ms or spec.not_before_ms),
        start_timeout=seconds_or_none(spec.start_timeout_s),
        execution_timeout=seconds_or_none(spec.execution_timeout_s),
        idempotency_key=spec.idempotency_key or None,
        fairness_key=spec.fairness_key or None,
        submitter=task.submitter or None,
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
    if request.content_type is not None:
        spec.payload_content_type = request.content_type
    elif request.payload:
        spec.payload_content_type = OCTET_STREAM
    if trace_context:  # item by item: a map field's update() costs twice as much
        carrier = spec.trace_context
        for key, value in trace_context.items():
            carrier[key] = value
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
    spec.start_timeout_s = positive_seconds(request.start_timeout, "start_timeout")
    spec.execution_timeout_s = positive_seconds(request.execution_timeout, "execution_timeout")
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
        return epoch_ms(request.not_before, "not_before")
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


# -- TaskService requests and responses ------------------------------------------------


def submit_stream_request(
    batch_id: int,
    specs: Sequence[_tasks.TaskSpec],
    watch_task_ids: Sequence[str],
    *,
    watch: bool = False,
) -> _tasks.SubmitStreamRequest:
    """A stream message of specs from `task_spec`, and the ids to watch; with `watch`, the
    broker also sends completion notices of the specs' tasks."""
    return _tasks.SubmitStreamRequest(
        batch_id=batch_id,
        tasks=specs,
        watch=watch,
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
    payloads: bool = True,
    page_token: str = "",
) -> _tasks.ListTasksRequest:
    """A page of a listing; without `payloads`, in the basic view (no payload or result)."""
    return _tasks.ListTasksRequest(
        pool=pool or "",
        states=[_STATE_TO_WIRE[s] for s in states],
        task_type=task_type or "",
        limit=limit,
        before_id=before_id or "",
        page_token=page_token,
        view=_tasks.TASK_VIEW_FULL if payloads else _tasks.TASK_VIEW_BASIC,
    )


def listed_tasks(response: _tasks.ListTasksResponse) -> list[TaskInfo]:
    return [task_info(t) for t in response.tasks]
