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
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker_sdk import (
    Placement,
    RetryPolicy,
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
        "submitter": task.submitter,
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


def print_json(value: Any) -> None:
    """Print JSON on stdout, unwrapped and uncoloured, for scripts."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def print_json_line(value: Any) -> None:
    """Print one JSON document on one line (JSON Lines), flushed, for a stream of them."""
    typer.echo(json.dumps(value, ensure_ascii=False))


def _console() -> Console:
    # Created per call: the CLI test runner swaps sys.stdout between invocations.
    # Piped output is not wrapped at rich's default 80 columns, so grep sees whole rows;
    # COLUMNS, when set, is the width either way.
    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS", "").strip()
    return Console(highlight=False, width=320 if wide else None)


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
    if task.submitter is not None:
        rows.append(("submitter", task.submitter))
    return rows


def _table(*columns: str, wrap: Iterable[str] = (), title: str | None = None) -> Table:
    """A table whose columns never wrap, except those in `wrap` (free-form text)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=title, title_justify="left")
    wrapped = set(wrap)
    for column in columns:
        table.add_column(column, no_wrap=column not in wrapped, overflow="fold")
    return table


def _narrowed(
    columns: Sequence[str], rows: Sequence[Sequence[Text | str]], keep: Iterable[str] | None
) -> tuple[list[str], list[list[Text | str]]]:
    """Only the columns in `keep` (None: all), in their order, and those cells of each row."""
    if keep is None:
        return list(columns), [list(row) for row in rows]
    kept = set(keep)
    index = [i for i, column in enumerate(columns) if column in kept]
    return [columns[i] for i in index], [[row[i] for i in index] for row in rows]


def _row(table: Table, cells: Iterable[Text | str]) -> None:
    # Text, not str: rich would read "[...]" in a task type or message as markup.
    table.add_row(*(c if isinstance(c, Text) else Text(c) for c in cells))


TASK_COLUMNS = ("ID", "TYPE", "POOL", "PRI", "STATE", "TRIES", "WORKER", "CREATED")
NARROW_TASK_COLUMNS = ("ID", "TYPE", "STATE", "TRIES", "CREATED")


def show_tasks(tasks: Sequence[TaskInfo], output: OutputFormat, *, wide: bool = False) -> None:
    """Print a task listing; all columns if `wide`, else NARROW_TASK_COLUMNS."""
    if output is OutputFormat.JSON:
        print_json([task_dict(t) for t in tasks])
        return
    if not tasks:
        typer.echo("no tasks")
        return
    columns, rows = _narrowed(
        TASK_COLUMNS,
        [_task_cells(t) for t in tasks],
        None if wide else NARROW_TASK_COLUMNS,
    )
    table = _table(*columns, wrap=["TYPE"])
    for row in rows:
        _row(table, row)
    _console().print(table)


def _task_cells(t: TaskInfo) -> list[Text | str]:
    return [
        t.id,
        t.task_type,
        t.pool,
        str(t.priority),
        _task_state(t),
        str(t.attempts),
        t.worker_id or "-",
        _when(t.created_at, short=True),
    ]


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
    """Print the tasks a retry sent back to their queue (every column: a retry lists few)."""
    if output is OutputFormat.TABLE and not tasks:
        typer.echo("no tasks retried")
    else:
        show_tasks(tasks, output, wide=True)


def _with_encoding(text: str, encoding: str) -> str:
    return text if encoding == "utf-8" else f"{text} (base64)"


WORKER_COLUMNS = (
    "WORKER",
    "POOL",
    "IN FLIGHT",
    "LOAD",
    "TYPES",
    "LABELS",
    "CONNECTED",
    "STATE",
    "BREAKER",
)
NARROW_WORKER_COLUMNS = ("WORKER", "POOL", "IN FLIGHT", "LOAD", "STATE", "BREAKER")


def show_workers(
    workers: Sequence[WorkerInfo], output: OutputFormat, *, wide: bool = False
) -> None:
    """Print the connected workers; all columns if `wide`, else NARROW_WORKER_COLUMNS."""
    if output is OutputFormat.JSON:
        print_json([worker_dict(w) for w in workers])
        return
    if not workers:
        typer.echo("no workers connected")
        return
    columns, rows = _narrowed(
        WORKER_COLUMNS,
        [_worker_cells(w) for w in workers],
        None if wide else NARROW_WORKER_COLUMNS,
    )
    table = _table(*columns, wrap=["TYPES", "LABELS"])
    for row in rows:
        _row(table, row)
    _console().print(table)


def _worker_cells(w: WorkerInfo) -> list[Text | str]:
    labels = _labels(w.labels.items()) or "-"
    return [
        w.worker_id,
        w.pool,
        f"{w.in_flight}/{w.capacity}",
        f"{w.load:.2f}",
        ",".join(sorted(w.task_types)),
        labels,
        _when(w.connected_at, short=True),
        _worker_state(w),
        _breaker(w),
    ]


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
