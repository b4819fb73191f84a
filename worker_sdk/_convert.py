"""The SDK's edge: protobuf messages and gRPC errors to SDK types and back.

No other module reads or builds a protobuf message; they pass them through opaquely.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import grpc

from worker_sdk._errors import TaskbrokerError, Unavailable, error_for_code
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
    Placement,
    PoolInfo,
    PoolStats,
    PreferredLabel,
    RuntimeStats,
    Stats,
    TaskErrorInfo,
    TaskInfo,
    TaskRequest,
    TaskState,
    WorkerInfo,
)

# -- errors ------------------------------------------------------------------------------


def rpc_error(error: grpc.RpcError, address: str) -> TaskbrokerError:
    """The SDK exception for a failed gRPC call to the broker at `address`."""
    code = error.code()
    details = error.details() or code.name
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

_STATE_FROM_WIRE: dict[_tasks.TaskState.ValueType, TaskState] = {
    _tasks.TASK_STATE_PENDING: TaskState.PENDING,
    _tasks.TASK_STATE_ASSIGNED: TaskState.ASSIGNED,
    _tasks.TASK_STATE_RUNNING: TaskState.RUNNING,
    _tasks.TASK_STATE_SUCCEEDED: TaskState.SUCCEEDED,
    _tasks.TASK_STATE_FAILED: TaskState.FAILED,
    _tasks.TASK_STATE_CANCELLED: TaskState.CANCELLED,
}
_STATE_TO_WIRE: dict[TaskState, _tasks.TaskState.ValueType] = {
    state: wire for wire, state in _STATE_FROM_WIRE.items()
}


def _time(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


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
    )


def task_spec(request: TaskRequest) -> _tasks.TaskSpec:
    """The wire form of a submit; TypeError or ValueError for arguments it cannot hold.

    Called where the task is submitted, so a bad argument fails that call alone and
    never the stream it would have shared with other submits.
    """
    spec = _tasks.TaskSpec(
        task_type=request.task_type,
        payload=request.payload,
        priority=request.priority,
        pool=request.pool,
    )
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
    return spec


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


def pool_info(pool: _admin.Pool) -> PoolInfo:
    return PoolInfo(
        name=pool.name,
        strategy=pool.strategy,
        ab_strategy=pool.ab_strategy,
        ab_percent=pool.ab_percent,
        sticky_timeout_s=pool.sticky_timeout_s,
    )


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
    )


def stats(response: _admin.StatsResponse) -> Stats:
    return Stats(
        broker_state=response.broker_state,
        pools=tuple(pool_stats(p) for p in response.pools),
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
        return SubmitAcked(ack.batch_id, list(ack.task_ids), ack.error_code, ack.error_message)
    if kind == "completions":
        done = response.completions
        return TasksCompleted([task_info(t) for t in done.tasks], list(done.not_found))
    raise TaskbrokerError(f"broker sent an empty SubmitStreamResponse ({kind!r})")


def submit_batch_request(requests: Iterable[TaskRequest]) -> _tasks.SubmitBatchRequest:
    return _tasks.SubmitBatchRequest(tasks=[task_spec(r) for r in requests])


def submit_batch_ids(response: _tasks.SubmitBatchResponse) -> list[str]:
    return list(response.task_ids)


def get_request(task_id: str) -> _tasks.GetTaskRequest:
    return _tasks.GetTaskRequest(task_id=task_id)


def cancel_request(task_id: str) -> _tasks.CancelRequest:
    return _tasks.CancelRequest(task_id=task_id)


def cancelled_task(response: _tasks.CancelResponse) -> TaskInfo:
    return task_info(response.task)


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


def create_pool_request(
    name: str, strategy: str, *, ab_strategy: str, ab_percent: int, sticky_timeout_s: float
) -> _admin.CreatePoolRequest:
    return _admin.CreatePoolRequest(
        pool=_admin.Pool(
            name=name,
            strategy=strategy,
            ab_strategy=ab_strategy,
            ab_percent=ab_percent,
            sticky_timeout_s=sticky_timeout_s,
        )
    )


def update_pool_request(
    listed: _admin.ListPoolsResponse,
    name: str,
    *,
    strategy: str | None,
    ab_strategy: str | None,
    ab_percent: int | None,
    sticky_timeout_s: float | None,
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
    if strategy is not None:
        pool.strategy = strategy
    if ab_strategy is not None:
        pool.ab_strategy = ab_strategy
    if ab_percent is not None:
        pool.ab_percent = ab_percent
    if sticky_timeout_s is not None:
        pool.sticky_timeout_s = sticky_timeout_s
    return _admin.UpdatePoolRequest(pool=pool)


def list_workers_request(pool: str | None) -> _admin.ListWorkersRequest:
    return _admin.ListWorkersRequest(pool=pool or "")


def listed_workers(response: _admin.ListWorkersResponse) -> list[WorkerInfo]:
    return [worker_info(w) for w in response.workers]


def drain_worker_request(worker_id: str) -> _admin.DrainWorkerRequest:
    return _admin.DrainWorkerRequest(worker_id=worker_id)


def drained_worker(response: _admin.DrainWorkerResponse) -> WorkerInfo:
    return worker_info(response.worker)


def stats_request() -> _admin.StatsRequest:
    return _admin.StatsRequest()


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


def heartbeat_message(in_flight: int, load: float) -> _worker.WorkerMessage:
    return _worker.WorkerMessage(heartbeat=_worker.Heartbeat(in_flight=in_flight, load=load))


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
                Assignment(a.task_id, a.attempt, a.task_type, a.payload, a.priority)
                for a in message.assignments.assignments
            ]
        )
    if kind == "cancel":
        return CancelRequested(list(message.cancel.task_ids))
    if kind == "drain":
        return DrainRequested(message.drain.reason)
    if kind == "register_ack":
        ack = message.register_ack
        return RegisterAcked(ack.worker_id, ack.heartbeat_interval_s)
    return None
