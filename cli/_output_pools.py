"""Rendering pools and their statistics as rich tables or as JSON (see cli._output for
the JSON rules). A pool's JSON has every setting of the SDK's table of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli._output import (
    OutputFormat,
    _age,
    _console,
    _narrowed,
    _per_second,
    _percentiles,
    _row,
    _seconds,
    _table,
    _timeout,
    print_json,
)
from cli._parse import bulkhead_text, number
from worker_sdk import ArmStats, Bulkhead, BulkheadStats, PoolInfo, PoolStats, RuntimeStats, Stats
from worker_sdk._pool_settings import DEFAULT_RETENTION_S, POOL_SETTINGS

# -- JSON --------------------------------------------------------------------------------


def bulkhead_dict(bulkhead: Bulkhead) -> dict[str, Any]:
    """A pool's limits for one task type as a JSON-able dict."""
    return dataclasses.asdict(bulkhead)


def pool_dict(pool: PoolInfo) -> dict[str, Any]:
    """A pool as a JSON-able dict: every setting, 0 being the broker's default or no limit."""
    return {
        "name": pool.name,
        **{s.name: getattr(pool, s.name) for s in POOL_SETTINGS},
        "ab_strategy": pool.ab_strategy or None,
        "bulkheads": [bulkhead_dict(b) for b in pool.bulkheads],
        "fairness_weights": dict(pool.fairness_weights),
    }


def arm_dict(arm: ArmStats) -> dict[str, Any]:
    """One strategy's share of a pool's placements as a JSON-able dict."""
    return {
        "strategy": arm.strategy,
        "placed": arm.placed,
        "finished": arm.finished,
        "failed": arm.failed,
        "mean_wait_s": arm.mean_wait_s,
        "mean_run_s": arm.mean_run_s,
    }


def runtime_dict(runtime: RuntimeStats) -> dict[str, Any]:
    """A task type's learned run time as a JSON-able dict."""
    return {
        "task_type": runtime.task_type,
        "samples": runtime.samples,
        "mean_run_s": runtime.mean_run_s,
        "stddev_run_s": runtime.stddev_run_s,
        "predictions": runtime.predictions,
        "mean_abs_error_s": runtime.mean_abs_error_s,
    }


def bulkhead_stats_dict(b: BulkheadStats) -> dict[str, Any]:
    """One task type's bulkhead in a pool, now, as a JSON-able dict."""
    return {
        "task_type": b.task_type,
        "pending": b.pending,
        "in_flight": b.in_flight,
        "max_queue": b.max_queue,
        "max_inflight": b.max_inflight,
    }


def pool_stats_dict(p: PoolStats) -> dict[str, Any]:
    """One pool's statistics as a JSON-able dict; `sticky_hit_rate` is null with no sticky
    task yet."""
    return {
        "pool": p.pool,
        "strategy": p.strategy,
        "pending": p.pending,
        "unschedulable": p.unschedulable,
        "delayed": p.delayed,
        "active": p.active,
        "succeeded": p.succeeded,
        "failed": p.failed,
        "cancelled": p.cancelled,
        "dead_letter": p.dead_letter,
        "workers": p.workers,
        "capacity": p.capacity,
        "sticky_hits": p.sticky_hits,
        "sticky_misses": p.sticky_misses,
        "sticky_hit_rate": p.sticky_hit_rate,
        "max_queue": p.max_queue,
        "max_inflight": p.max_inflight,
        "rejected": p.rejected,
        "rate_limited": p.rate_limited,
        "deduplicated": p.deduplicated,
        "retried": p.retried,
        "timed_out": p.timed_out,
        "expired": p.expired,
        "lease_expired": p.lease_expired,
        "reconciled": p.reconciled,
        "bulkheads": [bulkhead_stats_dict(b) for b in p.bulkheads],
        "arms": [arm_dict(a) for a in p.arms],
        "runtimes": [runtime_dict(r) for r in p.runtimes],
        "strategy_notes": list(p.strategy_notes),
        "throughput_per_s": p.throughput_per_s,
        "wait_p50_s": p.wait_p50_s,
        "wait_p99_s": p.wait_p99_s,
        "run_p50_s": p.run_p50_s,
        "run_p99_s": p.run_p99_s,
        "oldest_pending_age_s": p.oldest_pending_age_s,
    }


def stats_dict(stats: Stats) -> dict[str, Any]:
    """Broker statistics as a JSON-able dict."""
    return {
        "broker_state": stats.broker_state,
        "pools": [pool_stats_dict(p) for p in stats.pools],
    }


# -- tables ------------------------------------------------------------------------------


def _ab_split(pool: PoolInfo) -> str:
    """The split as "20% adaptive", or "-" without one."""
    if not pool.ab_strategy:
        return "-"
    return f"{pool.ab_percent}% {pool.ab_strategy}"


def _count(n: int, zero: str = "-") -> str:
    return str(n) if n else zero


def _pool_rate(pool: PoolInfo) -> str:
    """50/s burst 100 (reject); "-" without a limit."""
    if not pool.rate_per_s:
        return "-"
    burst = f" burst {pool.rate_burst}" if pool.rate_burst else ""
    return f"{number(pool.rate_per_s)}/s{burst} ({pool.rate_mode})"


def _client_rate(pool: PoolInfo) -> str:
    """5/s burst 10 (queue); "-" without a limit."""
    if not pool.client_rate_per_s:
        return "-"
    burst = f" burst {pool.client_rate_burst}" if pool.client_rate_burst else ""
    return f"{number(pool.client_rate_per_s)}/s{burst} ({pool.rate_mode})"


def _pool_breaker(pool: PoolInfo) -> str:
    """When a worker's breaker opens and for how long: 5 in a row or 50% of 10, 30 s
    cooldown."""
    if not pool.breaker_failures:
        return "-"
    text = f"{pool.breaker_failures} in a row"
    if pool.breaker_failure_rate:
        text += f" or {pool.breaker_failure_rate:.0%} of {pool.breaker_window}"
    if pool.breaker_cooldown_s:
        text += f", {_timeout(pool.breaker_cooldown_s)} cooldown"
    return text


def _bulkheads(pool: PoolInfo) -> str:
    """As --bulkhead takes them: render:max_inflight=4,rate=20 thumb:max_queue=10."""
    return " ".join(bulkhead_text(b) for b in pool.bulkheads) or "-"


def _fairness(pool: PoolInfo) -> str:
    """As --fairness-weight takes them: tenant-a=3,tenant-b=1."""
    return ",".join(f"{k}={v}" for k, v in sorted(pool.fairness_weights.items())) or "-"


POOL_COLUMNS = (
    "POOL",
    "STRATEGY",
    "A/B",
    "STICKY TIMEOUT",
    "MAX IN FLIGHT",
    "MAX QUEUE",
    "RATE",
    "CLIENT RATE",
    "BREAKER",
    "LEASE",
    "BULKHEADS",
    "FAIRNESS",
)
NARROW_POOL_COLUMNS = ("POOL", "STRATEGY", "A/B", "MAX IN FLIGHT", "MAX QUEUE")


def show_pools(pools: Sequence[PoolInfo], output: OutputFormat, *, wide: bool = False) -> None:
    """Print the pools; a limit of 0 shows as "-" (none), max queue's as "default". All
    columns if `wide`, else NARROW_POOL_COLUMNS."""
    if output is OutputFormat.JSON:
        print_json([pool_dict(p) for p in pools])
        return
    columns, rows = _narrowed(
        POOL_COLUMNS, [_pool_cells(p) for p in pools], None if wide else NARROW_POOL_COLUMNS
    )
    table = _table(*columns, wrap=["BULKHEADS", "FAIRNESS"])
    for row in rows:
        _row(table, row)
    _console().print(table)


def _pool_cells(p: PoolInfo) -> list[Text | str]:
    return [
        p.name,
        p.strategy,
        _ab_split(p),
        _timeout(p.sticky_timeout_s),
        _count(p.max_inflight),
        _count(p.max_queue, "default"),
        _pool_rate(p),
        _client_rate(p),
        _pool_breaker(p),
        _timeout(p.lease_s) if p.lease_s else "-",
        _bulkheads(p),
        _fairness(p),
    ]


def _pool_summary(pool: PoolInfo) -> str:
    """The settings in a line: least_loaded, 20% adaptive, sticky timeout 5 s, then the
    limits that are set."""
    parts = [pool.strategy]
    if pool.ab_strategy:
        parts.append(_ab_split(pool))
    parts.append(f"sticky timeout {_timeout(pool.sticky_timeout_s)}")
    if pool.max_inflight:
        parts.append(f"max in flight {pool.max_inflight}")
    if pool.max_queue:
        parts.append(f"max queue {pool.max_queue}")
    if pool.rate_per_s:
        parts.append(f"rate {_pool_rate(pool)}")
    if pool.client_rate_per_s:
        parts.append(f"client rate {_client_rate(pool)}")
    if pool.breaker_failures:
        parts.append(f"breaker {_pool_breaker(pool)}")
    if pool.lease_s:
        parts.append(f"lease {_timeout(pool.lease_s)}")
    if not pool.retention_s:
        parts.append("finished tasks kept forever")
    elif pool.retention_s != DEFAULT_RETENTION_S:
        parts.append(f"retention {_timeout(pool.retention_s)}")
    if pool.bulkheads:
        parts.append(f"bulkheads {_bulkheads(pool)}")
    if pool.fairness_weights:
        parts.append(f"fairness {_fairness(pool)}")
    if "adaptive" in (pool.strategy, pool.ab_strategy) and pool.adaptive_window:
        parts.append(
            f"adaptive window {pool.adaptive_window}, {pool.adaptive_explore_percent}% exploring"
        )
    return ", ".join(parts)


def show_pool_created(pool: PoolInfo, output: OutputFormat) -> None:
    """Confirm a new pool."""
    if output is OutputFormat.JSON:
        print_json(pool_dict(pool))
    else:
        typer.echo(f"pool {pool.name} created ({_pool_summary(pool)})")


def show_pool_updated(pool: PoolInfo, output: OutputFormat) -> None:
    """Confirm a pool's new settings."""
    if output is OutputFormat.JSON:
        print_json(pool_dict(pool))
    else:
        typer.echo(f"pool {pool.name} updated ({_pool_summary(pool)})")


def _sticky_hit_rate(p: PoolStats) -> str:
    """Hits of all sticky tasks, as "75% (3/4)"; "-" before the first."""
    rate = p.sticky_hit_rate
    if rate is None:
        return "-"
    return f"{rate:.0%} ({p.sticky_hits}/{p.sticky_hits + p.sticky_misses})"


def _flow_table(pools: Sequence[PoolStats]) -> Table | None:
    if not pools:
        return None
    table = _table(
        "POOL",
        "MAX QUEUE",
        "MAX IN FLIGHT",
        "REJECTED",
        "RATE LIMITED",
        "DEDUPLICATED",
        "RETRIED",
        "TIMED OUT",
        "EXPIRED",
        "LEASE EXPIRED",
        "RECONCILED",
        title="limits and flow control",
    )
    for p in pools:
        counts = (
            p.rejected,
            p.rate_limited,
            p.deduplicated,
            p.retried,
            p.timed_out,
            p.expired,
            p.lease_expired,
            p.reconciled,
        )
        _row(
            table,
            [p.pool, _count(p.max_queue), _count(p.max_inflight), *(str(n) for n in counts)],
        )
    return table


def _bulkheads_table(pools: Sequence[PoolStats]) -> Table | None:
    if not any(p.bulkheads for p in pools):
        return None
    table = _table(
        "POOL",
        "TASK TYPE",
        "PENDING",
        "IN FLIGHT",
        "MAX QUEUE",
        "MAX IN FLIGHT",
        wrap=["TASK TYPE"],
        title="bulkheads",
    )
    for p in pools:
        for b in p.bulkheads:
            _row(
                table,
                [
                    p.pool,
                    b.task_type,
                    str(b.pending),
                    str(b.in_flight),
                    _count(b.max_queue, "pool's"),
                    _count(b.max_inflight),
                ],
            )
    return table


def _arms_table(pools: Sequence[PoolStats]) -> Table | None:
    if not any(p.arms for p in pools):
        return None
    table = _table(
        "POOL",
        "STRATEGY",
        "PLACED",
        "FINISHED",
        "FAILED",
        "MEAN WAIT",
        "MEAN RUN",
        title="strategy arms",
    )
    for p in pools:
        for arm in p.arms:
            finished = bool(arm.finished)
            _row(
                table,
                [
                    p.pool,
                    arm.strategy,
                    str(arm.placed),
                    str(arm.finished),
                    str(arm.failed),
                    _seconds(arm.mean_wait_s) if finished else "-",
                    _seconds(arm.mean_run_s) if finished else "-",
                ],
            )
    return table


def _runtimes_table(pools: Sequence[PoolStats]) -> Table | None:
    if not any(p.runtimes for p in pools):
        return None
    table = _table(
        "POOL",
        "TASK TYPE",
        "SAMPLES",
        "MEAN",
        "STDDEV",
        "PREDICTIONS",
        "MEAN ABS ERROR",
        wrap=["TASK TYPE"],
        title="learned run times",
    )
    for p in pools:
        for r in p.runtimes:
            sampled, scored = bool(r.samples), bool(r.predictions)
            _row(
                table,
                [
                    p.pool,
                    r.task_type,
                    str(r.samples),
                    _seconds(r.mean_run_s) if sampled else "-",
                    _seconds(r.stddev_run_s) if sampled else "-",
                    str(r.predictions),
                    _seconds(r.mean_abs_error_s) if scored else "-",
                ],
            )
    return table


def show_stats(stats: Stats, output: OutputFormat, *, wide: bool = False) -> None:
    """Print per-pool counts, live figures and the broker's state, the pools' limits and
    flow-control counters, then their bulkheads, strategy arms and learned run times if
    there are any."""
    if output is OutputFormat.JSON:
        print_json(stats_dict(stats))
        return
    _console().print(stats_view(stats, wide=wide))


STATS_COLUMNS = (
    "POOL",
    "STRATEGY",
    "PENDING",
    "UNSCHEDULABLE",
    "DELAYED",
    "ACTIVE",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "DEAD LETTER",
    "WORKERS",
    "CAPACITY",
    "THROUGHPUT",
    "WAIT P50 / P99",
    "RUN P50 / P99",
    "OLDEST PENDING",
    "STICKY HITS",
)
NARROW_STATS_COLUMNS = (
    "POOL",
    "PENDING",
    "ACTIVE",
    "SUCCEEDED",
    "FAILED",
    "THROUGHPUT",
    "WAIT P99",
)
WIDE_HINT = "--wide: every column; limits, flow control, bulkheads, arms, run times"


def stats_view(stats: Stats, heading: str | None = None, *, wide: bool = False) -> Group:
    """What `stats` shows as a table, under `heading` (default: the broker's state): all
    columns and the tables of limits, bulkheads, arms and run times if `wide`, else
    NARROW_STATS_COLUMNS and the strategies' notes."""
    columns, rows = _narrowed(
        (*STATS_COLUMNS, "WAIT P99"),  # the last: the narrow table's, p99 alone
        [_stats_cells(p) for p in stats.pools],
        STATS_COLUMNS if wide else NARROW_STATS_COLUMNS,
    )
    table = _table(*columns)
    for row in rows:
        _row(table, row)
    parts: list[RenderableType] = [
        Text(heading if heading is not None else f"broker: {stats.broker_state}"),
        table,
    ]
    extras = (
        (
            _flow_table(stats.pools),
            _bulkheads_table(stats.pools),
            _arms_table(stats.pools),
            _runtimes_table(stats.pools),
        )
        if wide
        else ()
    )
    parts.extend(extra for extra in extras if extra is not None)
    parts.extend(
        Text(f"{pool.pool}: {note}") for pool in stats.pools for note in pool.strategy_notes
    )
    if not wide and stats.pools:
        parts.append(Text(f"({WIDE_HINT})", style="dim"))
    return Group(*parts)


def _stats_cells(p: PoolStats) -> list[Text | str]:
    return [
        p.pool,
        p.strategy,
        *(
            str(n)
            for n in (
                p.pending,
                p.unschedulable,
                p.delayed,
                p.active,
                p.succeeded,
                p.failed,
                p.cancelled,
                p.dead_letter,
                p.workers,
                p.capacity,
            )
        ),
        _per_second(p.throughput_per_s),
        _percentiles(p.wait_p50_s, p.wait_p99_s),
        _percentiles(p.run_p50_s, p.run_p99_s),
        _age(p.oldest_pending_age_s),
        _sticky_hit_rate(p),
        _seconds(p.wait_p99_s) if p.wait_p99_s else "-",
    ]
