"""Administration between the SDK's types and the AdminService's messages: pools (derived
from the table in worker_sdk._pool_settings), workers, statistics, history, config changes."""

from __future__ import annotations

import json as _json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf.field_mask_pb2 import FieldMask

from worker_sdk._convert._common import (
    epoch_ms,
    optional_filter,
    positive_seconds,
    uint32,
    wire_time,
)
from worker_sdk._convert._tasks import _STATE_TO_WIRE as STATE_TO_WIRE
from worker_sdk._errors import TaskbrokerError
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pool_settings import BULKHEAD_SETTINGS, BY_NAME, POOL_SETTINGS, PoolSetting
from worker_sdk._types import (
    ArmStats,
    Bulkhead,
    BulkheadStats,
    ConfigChange,
    MetricPoint,
    PoolInfo,
    PoolRecommendation,
    PoolStats,
    RuntimeStats,
    Stats,
    TaskState,
    WorkerInfo,
)

# -- pools -------------------------------------------------------------------------------


def bulkhead(msg: _admin.Bulkhead) -> Bulkhead:
    return Bulkhead(msg.task_type, **{s.name: getattr(msg, s.name) for s in BULKHEAD_SETTINGS})


def _setting(pool: _admin.Pool, setting: PoolSetting) -> Any:
    value = getattr(pool, setting.name)
    if setting.choices and not value:
        return setting.default  # "" is no choice: a broker that sends none means the default
    if setting.name in _PRESENCE and not _has_field(pool, setting.name):
        return setting.default  # not sent (a broker older than the field): the default
    return value


# The settings whose 0 means something other than the default: `optional` on the wire.
_PRESENCE: Final = frozenset(
    f.name for f in _admin.Pool.DESCRIPTOR.fields if f.has_presence and not f.message_type
)


def _has_field(pool: _admin.Pool, name: str) -> bool:
    has_field: Any = pool.HasField  # typed for the literal names only
    return bool(has_field(name))


def pool_info(pool: _admin.Pool) -> PoolInfo:
    return PoolInfo(
        name=pool.name,
        **{s.name: _setting(pool, s) for s in POOL_SETTINGS},
        bulkheads=tuple(bulkhead(b) for b in pool.bulkheads),
        fairness_weights=dict(pool.fairness_weights),
    )


def _set_pool_settings(pool: _admin.Pool, settings: Mapping[str, object]) -> None:
    """Set the named settings (those of POOL_SETTINGS, `bulkheads`, `fairness_weights`) on
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
                    **{s.name: getattr(b, s.name) for s in BULKHEAD_SETTINGS},
                )
        elif name == "fairness_weights":
            if not isinstance(value, Mapping):
                raise TypeError("fairness_weights maps fairness keys (str) to weights (int)")
            pool.fairness_weights.clear()
            pool.fairness_weights.update(value)
        elif name in BY_NAME:
            setattr(pool, name, value)
        else:
            raise TypeError(f"unknown pool setting {name!r}")


# -- workers, statistics, history, recommendations, config changes -----------------------


def worker_info(status: _admin.WorkerStatus) -> WorkerInfo:
    return WorkerInfo(
        worker_id=status.worker_id,
        pool=status.pool,
        labels=dict(status.labels),
        capacity=status.capacity,
        task_types=tuple(status.task_types),
        in_flight=status.in_flight,
        load=status.load,
        connected_at=wire_time(status.connected_at_ms),
        last_heartbeat=wire_time(status.last_heartbeat_ms),
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


# -- AdminService requests and responses -----------------------------------------------


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
    """The pool `name` as listed, with the given settings changed and named in the update
    mask; None if it is not listed.

    The broker changes only the settings the mask names (0 or empty included). The others
    are sent back as read too, and so is any setting this SDK does not know yet (protobuf
    keeps unknown fields), for a broker older than update masks, which replaces them all.
    """
    current = next((p for p in listed.pools if p.name == name), None)
    if current is None:
        return None
    pool = _admin.Pool()
    pool.CopyFrom(current)
    pool.ClearField("etag")
    _set_pool_settings(pool, changes)
    return _admin.UpdatePoolRequest(pool=pool, update_mask=FieldMask(paths=sorted(changes)))


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
        since_ms = epoch_ms((now or datetime.now(UTC)) - since, "since")
    elif isinstance(since, datetime):
        since_ms = epoch_ms(since, "since")
    elif since is not None:
        raise TypeError(f"since is a datetime or a timedelta, not {type(since).__name__}")
    until_ms = 0
    if isinstance(until, datetime):
        until_ms = epoch_ms(until, "until")
    elif until is not None:
        raise TypeError(f"until is a datetime, not {type(until).__name__}")
    if since_ms and until_ms and since_ms >= until_ms:
        raise ValueError("since must be before until")
    if since_ms < 0 or until_ms < 0:
        raise ValueError("since and until must be after 1970")
    return _admin.MetricsHistoryRequest(
        pool=optional_filter(pool, "pool"),
        task_type=optional_filter(task_type, "task_type"),
        worker_id=optional_filter(worker_id, "worker_id"),
        since_ms=since_ms,
        until_ms=until_ms,
        bucket_s=uint32(bucket_s, "bucket_s", 0),
    )


def metric_points(response: _admin.MetricsHistoryResponse) -> list[MetricPoint]:
    return [metric_point(p) for p in response.points]


def recommend_request(
    pool: str | None, target_wait_s: float, horizon_s: float
) -> _admin.RecommendRequest:
    return _admin.RecommendRequest(
        pool=optional_filter(pool, "pool"),
        target_wait_s=positive_seconds(target_wait_s, "target_wait_s"),
        horizon_s=positive_seconds(horizon_s, "horizon_s"),
    )


def recommendations(response: _admin.RecommendResponse) -> list[PoolRecommendation]:
    return [pool_recommendation(p) for p in response.pools]


def reload_config_request() -> _admin.ReloadConfigRequest:
    return _admin.ReloadConfigRequest()


def config_history_request(pool: str | None, limit: int) -> _admin.ConfigHistoryRequest:
    return _admin.ConfigHistoryRequest(
        pool=optional_filter(pool, "pool"), limit=uint32(limit, "limit", 1)
    )


def purge_tasks_request(
    pool: str | None, older_than_s: float, states: Iterable[TaskState]
) -> _admin.PurgeTasksRequest:
    if not 0 <= older_than_s < float("inf"):
        raise ValueError(f"older_than must be 0 or more, got {older_than_s}")
    return _admin.PurgeTasksRequest(
        pool=optional_filter(pool, "pool"),
        older_than_s=older_than_s,
        states=sorted({STATE_TO_WIRE[s] for s in states}),
    )


def purged(response: _admin.PurgeTasksResponse) -> int:
    return response.deleted


def config_changes(
    response: _admin.ReloadConfigResponse | _admin.ConfigHistoryResponse,
) -> list[ConfigChange]:
    return [config_change(c) for c in response.changes]
