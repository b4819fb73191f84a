"""The WorkerService stream: a worker's messages to the broker, and the broker's to SDK events."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from worker_sdk._convert._common import str_map, wire_time
from worker_sdk._messages import (
    Assignment,
    AssignmentsReceived,
    BrokerEvent,
    CancelRequested,
    DrainRequested,
    RegisterAcked,
    ResultsDropped,
    TaskOutcome,
)
from worker_sdk._pb import worker_pb2 as _worker


def register_message(
    *,
    worker_id: str,
    pool: str,
    labels: Mapping[str, str],
    capacity: int,
    task_types: Iterable[str],
    sdk_version: str,
    resume_token: str = "",
) -> _worker.WorkerMessage:
    return _worker.WorkerMessage(
        register=_worker.Register(
            worker_id=worker_id,
            pool=pool,
            labels=dict(labels),
            capacity=capacity,
            task_types=list(task_types),
            sdk_version=sdk_version,
            resume_token=resume_token,
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


def leave_message() -> _worker.WorkerMessage:
    """The worker goes away for good: the broker requeues what it still holds at once."""
    return _worker.WorkerMessage(leave=_worker.Leave())


def _add_result(outcome: TaskOutcome, add: Callable[..., _worker.TaskResult]) -> None:
    result = add(
        task_id=outcome.task_id,
        attempt=outcome.attempt,
        success=outcome.success,
        result=outcome.result,
        started_at_ms=outcome.started_at_ms,
        finished_at_ms=outcome.finished_at_ms,
        result_content_type=outcome.content_type,
    )
    if outcome.error is not None:
        error = outcome.error
        result.error.type = error.type
        result.error.message = error.message
        result.error.traceback = error.traceback
        if error.retryable is not None:
            result.error.retryable = error.retryable
        result.error.task_fault = error.task_fault


def results_message(
    outcomes: Sequence[TaskOutcome], started_task_ids: Sequence[str], seq: int = 0
) -> _worker.WorkerMessage:
    """Results built in place: a message given to a constructor is copied into it."""
    message = _worker.WorkerMessage()
    results = message.results
    results.SetInParent()
    results.seq = seq
    results.started_task_ids.extend(started_task_ids)
    add = results.results.add
    for outcome in outcomes:
        _add_result(outcome, add)
    return message


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
                    wire_time(a.deadline_ms),
                    str_map(a.trace_context),
                    a.payload_content_type,
                )
                for a in message.assignments.assignments
            ],
            message.assignments.seq,
            message.assignments.results_seen,
        )
    if kind == "cancel":
        cancel = message.cancel
        attempts = {t.task_id: t.attempt for t in cancel.tasks if t.attempt}
        task_ids = list(dict.fromkeys([*cancel.task_ids, *(t.task_id for t in cancel.tasks)]))
        return CancelRequested(task_ids, attempts)
    if kind == "drain":
        drain = message.drain
        return DrainRequested(
            drain.reason,
            wire_time(drain.deadline_ms),
            drain.kind == _worker.DRAIN_REASON_BROKER_STOPPING,
        )
    if kind == "results_dropped":
        return ResultsDropped(
            [
                (r.task_id, r.attempt, r.message or _worker.DropReason.Name(r.reason))
                for r in message.results_dropped.results
            ]
        )
    if kind == "register_ack":
        ack = message.register_ack
        return RegisterAcked(
            ack.worker_id,
            ack.heartbeat_interval_s,
            ack.lease_s,
            ack.heartbeat_timeout_s,
            ack.resume_token,
            ack.resume_window_s,
            ack.resumed,
            ack.results_seen,
            ack.acks_results,
            ack.idle_heartbeat_interval_s,
            ack.idle_heartbeat_timeout_s,
        )
    return None
