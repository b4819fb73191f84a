"""Rendering SDK objects as rich tables or as JSON for scripts.

JSON rules: datetimes are ISO 8601 strings (null when not yet); a bytes field
(payload, result) is its UTF-8 text when it decodes, else base64, and a sibling
``<field>_encoding`` says which ("utf-8" or "base64"); an empty string the broker
uses for "none" (worker id, placement note, anti-affinity group, sticky and routing
keys, A/B strategy) is null. Durations are seconds, as floats, in keys ending ``_s``.
"""

from __future__ import annotations

import base64
import enum
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker_sdk import (
    ArmStats,
    Placement,
    PoolInfo,
    PoolStats,
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
    }


def pool_dict(pool: PoolInfo) -> dict[str, Any]:
    """A pool as a JSON-able dict."""
    return {
        "name": pool.name,
        "strategy": pool.strategy,
        "ab_strategy": pool.ab_strategy or None,
        "ab_percent": pool.ab_percent,
        "sticky_timeout_s": pool.sticky_timeout_s,
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


def pool_stats_dict(p: PoolStats) -> dict[str, Any]:
    """One pool's statistics as a JSON-able dict; `sticky_hit_rate` is null with no sticky
    task yet."""
    return {
        "pool": p.pool,
        "strategy": p.strategy,
        "pending": p.pending,
        "unschedulable": p.unschedulable,
        "active": p.active,
        "succeeded": p.succeeded,
        "failed": p.failed,
        "cancelled": p.cancelled,
        "workers": p.workers,
        "capacity": p.capacity,
        "sticky_hits": p.sticky_hits,
        "sticky_misses": p.sticky_misses,
        "sticky_hit_rate": p.sticky_hit_rate,
        "arms": [arm_dict(a) for a in p.arms],
        "runtimes": [runtime_dict(r) for r in p.runtimes],
        "strategy_notes": list(p.strategy_notes),
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


def _console() -> Console:
    # Created per call: the CLI test runner swaps sys.stdout between invocations.
    # Piped output is not wrapped at rich's default 80 columns, so grep sees whole rows.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 250)


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


def _timeout(seconds: float) -> str:
    """A configured duration, as given: 5 s, 0.25 s."""
    return f"{seconds:g} s"


_STATE_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "assigned": "cyan",
    "pending": "",
}


def _state(state: TaskState) -> Text:
    name = _state_name(state)
    return Text(name, style=_STATE_STYLES.get(name, ""))


def _task_state(task: TaskInfo) -> Text:
    """The state, marked when no connected worker can take the task."""
    if task.unschedulable:
        return Text(f"{_state_name(task.state)} (unschedulable)", style="red")
    return _state(task.state)


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
                Text("draining", style="yellow") if w.draining else "active",
            ],
        )
    _console().print(table)


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


def show_pools(pools: Sequence[PoolInfo], output: OutputFormat) -> None:
    """Print the pools."""
    if output is OutputFormat.JSON:
        print_json([pool_dict(p) for p in pools])
        return
    table = _table("POOL", "STRATEGY", "A/B", "STICKY TIMEOUT")
    for p in pools:
        _row(table, [p.name, p.strategy, _ab_split(p), _timeout(p.sticky_timeout_s)])
    _console().print(table)


def _pool_summary(pool: PoolInfo) -> str:
    """The settings in a line: least_loaded, 20% adaptive, sticky timeout 5 s."""
    parts = [pool.strategy]
    if pool.ab_strategy:
        parts.append(_ab_split(pool))
    parts.append(f"sticky timeout {_timeout(pool.sticky_timeout_s)}")
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
    """Print per-pool counts and the broker's state, then the pools' strategy arms and
    learned run times if there are any."""
    if output is OutputFormat.JSON:
        print_json(stats_dict(stats))
        return
    table = _table(
        "POOL",
        "STRATEGY",
        "PENDING",
        "UNSCHEDULABLE",
        "ACTIVE",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "WORKERS",
        "CAPACITY",
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
                        p.active,
                        p.succeeded,
                        p.failed,
                        p.cancelled,
                        p.workers,
                        p.capacity,
                    )
                ),
                _sticky_hit_rate(p),
            ],
        )
    console = _console()
    console.print(Text(f"broker: {stats.broker_state}"))
    console.print(table)
    for extra in (_arms_table(stats.pools), _runtimes_table(stats.pools)):
        if extra is not None:
            console.print(extra)
    for pool in stats.pools:
        for note in pool.strategy_notes:
            console.print(Text(f"{pool.pool}: {note}"))
