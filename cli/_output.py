"""Rendering SDK objects as rich tables or as JSON for scripts.

JSON rules: datetimes are ISO 8601 strings (null when not yet); a bytes field
(payload, result) is its UTF-8 text when it decodes, else base64, and a sibling
``<field>_encoding`` says which ("utf-8" or "base64"); an empty string the broker
uses for "none" (worker id, placement note, anti-affinity group, sticky and routing
keys, A/B strategy) is null, and so is an unset submit option (retry policy, timeouts,
idempotency and fairness keys). Durations are seconds, as floats, in keys ending ``_s``.
Pool limits are as the broker reports them, 0 meaning its default or no limit.
"""

from __future__ import annotations

import base64
import enum
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli._parse import bulkhead_text, number
from worker_sdk import (
    ArmStats,
    Bulkhead,
    BulkheadStats,
    Placement,
    PoolInfo,
    PoolStats,
    RetryPolicy,
    RuntimeStats,
    Stats,
    TaskInfo,
    TaskState,
    WorkerInfo,
)


class OutputFormat(enum.StrEnum):
    """What list and show commands print."""

    TABLE = "table"
    JSON = "json"


def decode_bytes(data: bytes) -> tuple[str, str]:
    """The text to show for bytes and its encoding: ("utf-8" text) or ("base64")."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _state_name(state: TaskState) -> str:
    return str(state.value)


def placement_dict(placement: Placement) -> dict[str, Any]:
    """A task's placement hints as a JSON-able dict (the same keys when it has none)."""
    return {
        "required_labels": dict(placement.required_labels),
        "preferred_labels": [
            {"key": p.key, "value": p.value, "weight": p.weight} for p in placement.preferred_labels
        ],
        "anti_affinity_group": placement.anti_affinity_group or None,
        "anti_affinity_soft": placement.anti_affinity_soft,
        "sticky_key": placement.sticky_key or None,
        "routing_key": placement.routing_key or None,
    }


def retry_dict(retry: RetryPolicy | None) -> dict[str, Any] | None:
    """A task's retry policy as a JSON-able dict; None when it was submitted without one."""
    if retry is None:
        return None
    return {
        "max_attempts": retry.max_attempts,
        "initial_backoff_s": retry.initial_backoff_s,
        "max_backoff_s": retry.max_backoff_s,
        "backoff_multiplier": retry.backoff_multiplier,
        "retryable_errors": list(retry.retryable_errors),
        "non_retryable_errors": list(retry.non_retryable_errors),
    }


def task_dict(task: TaskInfo) -> dict[str, Any]:
    """A task as a JSON-able dict."""
    payload, payload_encoding = decode_bytes(task.payload)
    result, result_encoding = decode_bytes(task.result)
    error = task.error
    return {
        "id": task.id,
        "task_type": task.task_type,
        "pool": task.pool,
        "priority": task.priority,
        "state": _state_name(task.state),
        "attempts": task.attempts,
        "worker_id": task.worker_id or None,
        "placement": placement_dict(task.placement),
        "placement_note": task.placement_note or None,
        "unschedulable": task.unschedulable,
        "retry": retry_dict(task.retry),
        "not_before": _iso(task.not_before),
        "start_timeout_s": task.start_timeout,
        "execution_timeout_s": task.execution_timeout,
        "idempotency_key": task.idempotency_key,
        "fairness_key": task.fairness_key,
        "created_at": _iso(task.created_at),
        "assigned_at": _iso(task.assigned_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
        "payload": payload,
        "payload_encoding": payload_encoding,
        "result": result,
        "result_encoding": result_encoding,
        "error": None
        if error is None
        else {"type": error.type, "message": error.message, "traceback": error.traceback},
    }


def worker_dict(worker: WorkerInfo) -> dict[str, Any]:
    """A connected worker as a JSON-able dict."""
    return {
        "worker_id": worker.worker_id,
        "pool": worker.pool,
        "labels": dict(worker.labels),
        "capacity": worker.capacity,
        "task_types": sorted(worker.task_types),
        "in_flight": worker.in_flight,
        "load": worker.load,
        "connected_at": _iso(worker.connected_at),
        "last_heartbeat": _iso(worker.last_heartbeat),
        "draining": worker.draining,
        "cordoned": worker.cordoned,
        "breaker": worker.breaker,
        "consecutive_failures": worker.consecutive_failures,
    }


def bulkhead_dict(bulkhead: Bulkhead) -> dict[str, Any]:
    """A pool's limits for one task type as a JSON-able dict."""
    return {
        "task_type": bulkhead.task_type,
        "max_inflight": bulkhead.max_inflight,
        "max_queue": bulkhead.max_queue,
        "rate_per_s": bulkhead.rate_per_s,
        "rate_burst": bulkhead.rate_burst,
    }


def pool_dict(pool: PoolInfo) -> dict[str, Any]:
    """A pool as a JSON-able dict: every setting, 0 being the broker's default or no limit."""
    return {
        "name": pool.name,
        "strategy": pool.strategy,
        "ab_strategy": pool.ab_strategy or None,
        "ab_percent": pool.ab_percent,
        "sticky_timeout_s": pool.sticky_timeout_s,
        "max_inflight": pool.max_inflight,
        "max_queue": pool.max_queue,
        "rate_per_s": pool.rate_per_s,
        "rate_burst": pool.rate_burst,
        "client_rate_per_s": pool.client_rate_per_s,
        "client_rate_burst": pool.client_rate_burst,
        "rate_mode": pool.rate_mode,
        "breaker_failures": pool.breaker_failures,
        "breaker_failure_rate": pool.breaker_failure_rate,
        "breaker_window": pool.breaker_window,
        "breaker_cooldown_s": pool.breaker_cooldown_s,
        "lease_s": pool.lease_s,
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


def print_json(value: Any) -> None:
    """Print JSON on stdout, unwrapped and uncoloured, for scripts."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_json_line(value: Any) -> None:
    """Print one JSON document on one line (JSON Lines), flushed, for a stream of them."""
    typer.echo(json.dumps(value, ensure_ascii=False))


def _console() -> Console:
    # Created per call: the CLI test runner swaps sys.stdout between invocations.
    # Piped output is not wrapped at rich's default 80 columns, so grep sees whole rows.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 320)


def _when(moment: datetime | None, *, short: bool = False) -> str:
    """Local time; `short` drops the year, for tables."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return _seconds((end - start).total_seconds())


def _seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _percentiles(p50: float, p99: float) -> str:
    """A median and a 99th percentile as "12 ms / 80 ms"; "-" with nothing measured."""
    if not (p50 or p99):
        return "-"
    return f"{_seconds(p50)} / {_seconds(p99)}"


def _per_second(rate: float) -> str:
    """3.25/s, 120/s; 0/s."""
    if not rate:
        return "0/s"
    return f"{rate:.2f}/s" if rate < 10 else f"{rate:.0f}/s"


def _age(seconds: float) -> str:
    """How long ago, readably: 800 ms, 42.0 s, 12m 5s, 3h 4m, 2d 3h; "-" for 0."""
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return _seconds(seconds)
    whole = int(seconds)
    for unit, size, subunit, subsize in (("d", 86_400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            return f"{whole // size}{unit} {whole % size // subsize}{subunit}"
    return f"{whole // 60}m {whole % 60}s"


def _timeout(seconds: float) -> str:
    """A configured duration, as given: 5 s, 0.25 s."""
    return f"{seconds:g} s"


_STATE_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "dead_letter": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "assigned": "cyan",
    "pending": "",
}


def _state(state: TaskState) -> Text:
    name = _state_name(state)
    return Text(name, style=_STATE_STYLES.get(name, ""))


def _task_state(task: TaskInfo) -> Text:
    """The state, marked when no connected worker can take the task, or when it waits
    for a time (a delay, a retry's backoff or a rate limit)."""
    if task.unschedulable:
        return Text(f"{_state_name(task.state)} (unschedulable)", style="red")
    if _delayed(task):
        return Text(f"{_state_name(task.state)} (delayed)")
    return _state(task.state)


def _delayed(task: TaskInfo) -> bool:
    return (
        task.state is TaskState.PENDING
        and task.not_before is not None
        and task.not_before > datetime.now(UTC)
    )


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels))


def _placement_rows(task: TaskInfo) -> list[tuple[str, Text | str]]:
    """The hints that are set, then the broker's note on them."""
    hints = task.placement
    rows: list[tuple[str, Text | str]] = []
    if hints.required_labels:
        rows.append(("requires", _labels(hints.required_labels.items())))
    if hints.preferred_labels:
        prefers = (f"{p.key}={p.value}:{p.weight}" for p in hints.preferred_labels)
        rows.append(("prefers", ",".join(prefers)))
    if hints.anti_affinity_group:
        soft = " (soft)" if hints.anti_affinity_soft else ""
        rows.append(("anti-affinity", hints.anti_affinity_group + soft))
    if hints.sticky_key:
        rows.append(("sticky key", hints.sticky_key))
    if hints.routing_key:
        rows.append(("routing key", hints.routing_key))
    if task.placement_note:
        style = "red" if task.unschedulable else ""
        rows.append(("placement", Text(task.placement_note, style=style)))
    return rows


def _retry_text(retry: RetryPolicy) -> str:
    """3 attempts, backoff 1 s x2 up to 300 s, on TimeoutError,OSError, not on ValueError."""
    plural = "" if retry.max_attempts == 1 else "s"
    parts = [
        f"{retry.max_attempts} attempt{plural}",
        f"backoff {_timeout(retry.initial_backoff_s)} x{retry.backoff_multiplier:g} "
        f"up to {_timeout(retry.max_backoff_s)}",
    ]
    if retry.retryable_errors:
        parts.append(f"on {','.join(retry.retryable_errors)}")
    if retry.non_retryable_errors:
        parts.append(f"not on {','.join(retry.non_retryable_errors)}")
    return ", ".join(parts)


def _option_rows(task: TaskInfo) -> list[tuple[str, Text | str]]:
    """The submit options that are set: retry policy, delay, timeouts, keys."""
    rows: list[tuple[str, Text | str]] = []
    if task.retry is not None:
        rows.append(("retry", _retry_text(task.retry)))
    if task.not_before is not None:
        rows.append(("delayed until", _when(task.not_before)))
    if task.start_timeout is not None:
        rows.append(("start timeout", _timeout(task.start_timeout)))
    if task.execution_timeout is not None:
        rows.append(("execution timeout", _timeout(task.execution_timeout)))
    if task.idempotency_key is not None:
        rows.append(("idempotency key", task.idempotency_key))
    if task.fairness_key is not None:
        rows.append(("fairness key", task.fairness_key))
    return rows


def _table(*columns: str, wrap: Iterable[str] = (), title: str | None = None) -> Table:
    """A table whose columns never wrap, except those in `wrap` (free-form text)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=title, title_justify="left")
    wrapped = set(wrap)
    for column in columns:
        table.add_column(column, no_wrap=column not in wrapped, overflow="fold")
    return table


def _row(table: Table, cells: Iterable[Text | str]) -> None:
    # Text, not str: rich would read "[...]" in a task type or message as markup.
    table.add_row(*(c if isinstance(c, Text) else Text(c) for c in cells))


def show_tasks(tasks: Sequence[TaskInfo], output: OutputFormat) -> None:
    """Print a task listing."""
    if output is OutputFormat.JSON:
        print_json([task_dict(t) for t in tasks])
        return
    if not tasks:
        typer.echo("no tasks")
        return
    table = _table(
        "ID", "TYPE", "POOL", "PRI", "STATE", "TRIES", "WORKER", "CREATED", wrap=["TYPE"]
    )
    for t in tasks:
        _row(
            table,
            [
                t.id,
                t.task_type,
                t.pool,
                str(t.priority),
                _task_state(t),
                str(t.attempts),
                t.worker_id or "-",
                _when(t.created_at, short=True),
            ],
        )
    _console().print(table)


def show_task(task: TaskInfo, output: OutputFormat) -> None:
    """Print one task in full."""
    if output is OutputFormat.JSON:
        print_json(task_dict(task))
        return
    payload, payload_encoding = decode_bytes(task.payload)
    result, result_encoding = decode_bytes(task.result)
    rows: list[tuple[str, Text | str]] = [
        ("id", task.id),
        ("type", task.task_type),
        ("pool", task.pool),
        ("priority", str(task.priority)),
        ("state", _task_state(task)),
        ("attempts", str(task.attempts)),
        ("worker", task.worker_id or "-"),
        *_placement_rows(task),
        *_option_rows(task),
        ("created", _when(task.created_at)),
        ("assigned", _when(task.assigned_at)),
        ("started", _when(task.started_at)),
        ("finished", _when(task.finished_at)),
        ("ran for", _duration(task.started_at, task.finished_at)),
        ("payload", _with_encoding(payload, payload_encoding)),
    ]
    if task.result:
        rows.append(("result", _with_encoding(result, result_encoding)))
    if task.error is not None:
        rows.append(("error", Text(f"{task.error.type}: {task.error.message}", style="red")))
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        _row(table, [name, value])
    console = _console()
    console.print(table)
    if task.error is not None and task.error.traceback:
        # Below the table, unwrapped, so that it reads (and copies) like any traceback.
        console.print(Text(task.error.traceback.rstrip()), soft_wrap=True)


def show_retried(tasks: Sequence[TaskInfo], output: OutputFormat) -> None:
    """Print the tasks a retry sent back to their queue."""
    if output is OutputFormat.TABLE and not tasks:
        typer.echo("no tasks retried")
    else:
        show_tasks(tasks, output)


def _with_encoding(text: str, encoding: str) -> str:
    return text if encoding == "utf-8" else f"{text} (base64)"


def show_workers(workers: Sequence[WorkerInfo], output: OutputFormat) -> None:
    """Print the connected workers."""
    if output is OutputFormat.JSON:
        print_json([worker_dict(w) for w in workers])
        return
    if not workers:
        typer.echo("no workers connected")
        return
    table = _table(
        "WORKER",
        "POOL",
        "IN FLIGHT",
        "LOAD",
        "TYPES",
        "LABELS",
        "CONNECTED",
        "STATE",
        "BREAKER",
        wrap=["TYPES", "LABELS"],
    )
    for w in workers:
        labels = _labels(w.labels.items()) or "-"
        _row(
            table,
            [
                w.worker_id,
                w.pool,
                f"{w.in_flight}/{w.capacity}",
                f"{w.load:.2f}",
                ",".join(sorted(w.task_types)),
                labels,
                _when(w.connected_at, short=True),
                _worker_state(w),
                _breaker(w),
            ],
        )
    _console().print(table)


def _worker_state(worker: WorkerInfo) -> Text:
    """active, draining, cordoned, or "draining, cordoned"."""
    states = [
        name for name, on in (("draining", worker.draining), ("cordoned", worker.cordoned)) if on
    ]
    return Text(", ".join(states), style="yellow") if states else Text("active")


_BREAKER_STYLES = {"open": "red", "half_open": "yellow"}


def _breaker(worker: WorkerInfo) -> Text:
    """The circuit breaker's state, with the failures in a row when there are any."""
    text = worker.breaker
    if worker.consecutive_failures:
        text += f" ({worker.consecutive_failures} failed in a row)"
    return Text(text, style=_BREAKER_STYLES.get(worker.breaker, ""))


def show_worker(worker: WorkerInfo, output: OutputFormat) -> None:
    """Print one worker."""
    if output is OutputFormat.JSON:
        print_json(worker_dict(worker))
    else:
        show_workers([worker], output)


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


def show_pools(pools: Sequence[PoolInfo], output: OutputFormat) -> None:
    """Print the pools; a limit of 0 shows as "-" (none), max queue's as "default"."""
    if output is OutputFormat.JSON:
        print_json([pool_dict(p) for p in pools])
        return
    table = _table(
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
        wrap=["BULKHEADS", "FAIRNESS"],
    )
    for p in pools:
        _row(
            table,
            [
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
            ],
        )
    _console().print(table)


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
    if pool.bulkheads:
        parts.append(f"bulkheads {_bulkheads(pool)}")
    if pool.fairness_weights:
        parts.append(f"fairness {_fairness(pool)}")
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


def show_stats(stats: Stats, output: OutputFormat) -> None:
    """Print per-pool counts, live figures and the broker's state, the pools' limits and
    flow-control counters, then their bulkheads, strategy arms and learned run times if
    there are any."""
    if output is OutputFormat.JSON:
        print_json(stats_dict(stats))
        return
    _console().print(stats_view(stats))


def stats_view(stats: Stats, heading: str | None = None) -> Group:
    """What `stats` shows as a table, under `heading` (default: the broker's state)."""
    table = _table(
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
    for p in stats.pools:
        _row(
            table,
            [
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
            ],
        )
    parts: list[RenderableType] = [
        Text(heading if heading is not None else f"broker: {stats.broker_state}"),
        table,
    ]
    extras = (
        _flow_table(stats.pools),
        _bulkheads_table(stats.pools),
        _arms_table(stats.pools),
        _runtimes_table(stats.pools),
    )
    parts.extend(extra for extra in extras if extra is not None)
    parts.extend(
        Text(f"{pool.pool}: {note}") for pool in stats.pools for note in pool.strategy_notes
    )
    return Group(*parts)
