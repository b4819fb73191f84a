"""What the broker reports about its pools: counts, backlogs, learned run times.

Read-only views over the lifecycle's state (broker.core.lifecycle) and the durable
terminal counts the watchers keep.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from broker.core.lifecycle import TaskLifecycle
from broker.core.runtimes import RunStats, RuntimeKey, RuntimeModel
from broker.domain import (
    ArmSummary,
    Backlog,
    BulkheadStats,
    PoolStats,
    RuntimeSummary,
    TaskState,
)


def pool_stats(
    core: TaskLifecycle, finished: Counter[tuple[str, TaskState]], default_max_queue: int
) -> list[PoolStats]:
    """Counts for every pool, for `taskbroker stats`; `finished` counts durable ends."""
    counts = finished
    events = core.events
    delayed = core.waiting.delayed_by_pool
    backlog_by_type = core.admission.backlog_by_type
    result = []
    for name, pool in core.pools.items():
        workers = pool.workers.values()
        result.append(
            PoolStats(
                pool=name,
                strategy=pool.strategy_name,
                pending=pool.pending + delayed[name],
                active=sum(len(w.held) for w in workers),
                succeeded=counts.get((name, TaskState.SUCCEEDED), 0),
                failed=counts.get((name, TaskState.FAILED), 0),
                cancelled=counts.get((name, TaskState.CANCELLED), 0),
                workers=len(pool.workers),
                capacity=sum(w.capacity for w in workers),
                unschedulable=sum(t.unschedulable for t in pool.parked()),
                arms=tuple(
                    ArmSummary(
                        strategy=a.strategy,
                        placed=a.placed,
                        finished=a.finished,
                        failed=a.failed,
                        mean_wait_s=a.mean_wait_s,
                        mean_run_s=a.mean_run_s,
                    )
                    for a in pool.arm_stats()
                ),
                runtimes=tuple(runtime_summaries(pool.runtimes)),
                sticky_hits=pool.sticky_hits,
                sticky_misses=pool.sticky_misses,
                strategy_notes=tuple(pool.strategy_notes()),
                delayed=delayed[name],
                dead_letter=counts.get((name, TaskState.DEAD_LETTER), 0),
                rejected=events[(name, "rejected")],
                rate_limited=events[(name, "rate_limited")],
                retried=events[(name, "retried")],
                timed_out=events[(name, "timed_out")],
                expired=events[(name, "expired")],
                lease_expired=events[(name, "lease_expired")],
                reconciled=events[(name, "reconciled")],
                deduplicated=events[(name, "deduplicated")],
                max_queue=pool.config.max_queue or default_max_queue,
                max_inflight=pool.config.max_inflight,
                bulkheads=tuple(
                    BulkheadStats(
                        task_type=task_type,
                        pending=backlog_by_type[(name, task_type)],
                        in_flight=pool.inflight_by_type[task_type],
                        max_queue=bulkhead.max_queue if bulkhead else 0,
                        max_inflight=bulkhead.max_inflight if bulkhead else 0,
                    )
                    for task_type in sorted(
                        {b.task_type for b in pool.config.bulkheads}
                        | {t for (p, t), n in backlog_by_type.items() if p == name and n}
                        | {t for t, n in pool.inflight_by_type.items() if n}
                    )
                    for bulkhead in [pool.config.bulkhead(task_type)]
                ),
            )
        )
    return result


def backlog(core: TaskLifecycle, now: float) -> list[Backlog]:
    """Waiting and running work per pool (task_type "") and per task type."""
    waiting = core.waiting
    queued_at = waiting.queued_at
    backlog_by_type = core.admission.backlog_by_type
    delayed_by_type: Counter[tuple[str, str]] = Counter(
        (t.spec.pool, t.spec.task_type) for t in waiting.delayed.values()
    )
    result = []
    for name, pool in core.pools.items():
        since_by_type: dict[str, list[float]] = defaultdict(list)  # parked: a scan
        for task in pool.parked():
            since_by_type[task.spec.task_type].append(queued_at.get(task.id, task.created_at))
        oldest_by_type: dict[str, float] = {}
        for task_type in {*pool.queue.types_waiting(), *since_by_type}:
            since = since_by_type.get(task_type, [])
            oldest = pool.queue.oldest(task_type)
            if oldest is not None:
                since.append(queued_at.get(oldest.id, oldest.created_at))
            oldest_by_type[task_type] = max(0.0, now - min(since)) if since else 0.0
        types = sorted(
            {t for (p, t) in backlog_by_type if p == name}
            | {t for t, n in pool.inflight_by_type.items() if n}
        )
        for task_type in types:
            result.append(
                Backlog(
                    pool=name,
                    task_type=task_type,
                    pending=backlog_by_type.get((name, task_type), 0),
                    delayed=delayed_by_type[(name, task_type)],
                    in_flight=pool.inflight_by_type[task_type],
                    oldest_age_s=oldest_by_type.get(task_type, 0.0),
                )
            )
        result.append(
            Backlog(
                pool=name,
                task_type="",
                pending=core.admission.backlog[name],
                delayed=waiting.delayed_by_pool[name],
                in_flight=pool.inflight,
                oldest_age_s=max(oldest_by_type.values(), default=0.0),
            )
        )
    return result


def learn_run_times(core: TaskLifecycle, history: dict[tuple[str, str], RunStats]) -> int:
    """Start the pools' run-time models from the metrics history, for the task types
    they have not learned anything of yet. Returns how many types were seeded."""
    seeded = 0
    for (pool_name, task_type), stats in history.items():
        pool = core.pools.get(pool_name)
        if pool is None or not stats.count:
            continue
        key = RuntimeKey(pool_name, task_type, "*")
        if key not in pool.runtimes.stats:
            pool.runtimes.stats[key] = stats
            seeded += 1
    return seeded


def runtime_summaries(model: RuntimeModel) -> list[RuntimeSummary]:
    summaries = []
    for task_type, stats in sorted(model.by_type().items()):
        predictions, error = model.prediction_error(task_type)
        summaries.append(
            RuntimeSummary(
                task_type=task_type,
                samples=stats.count,
                mean_run_s=stats.mean_s,
                stddev_run_s=stats.variance**0.5,
                predictions=predictions,
                mean_abs_error_s=error,
            )
        )
    return summaries
