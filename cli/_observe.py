"""Rendering the broker's observability: metrics history (a table and charts), worker
recommendations and audited config changes, as rich tables or as JSON for scripts.

The JSON rules are `cli._output`'s: ISO 8601 times, seconds in keys ending ``_s``, null for
an empty string the broker uses for "none" (a task type or worker summed over).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from cli._chart import bar_chart
from cli._output import (
    OutputFormat,
    _console,
    _per_second,
    _row,
    _seconds,
    _table,
    _when,
    print_json,
)
from cli._parse import number
from worker_sdk import ConfigChange, MetricPoint, PoolRecommendation

# The most buckets a chart fills in before gaps are no longer drawn as empty columns.
_MAX_TIMELINE = 10_000


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _span(seconds: float) -> str:
    """A bucket width as one would type it: 30s, 5m, 1h, 1d, 90s."""
    whole = int(seconds)
    if whole != seconds or whole <= 0:
        return f"{number(seconds)}s"
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


# -- metrics history ---------------------------------------------------------------------


def metric_point_dict(point: MetricPoint) -> dict[str, Any]:
    """One bucket of the metrics history as a JSON-able dict."""
    return {
        "start": _iso(point.start),
        "bucket_s": point.bucket_s,
        "pool": point.pool,
        "task_type": point.task_type or None,
        "worker_id": point.worker_id or None,
        "submitted": point.submitted,
        "completed": point.completed,
        "failed": point.failed,
        "wait_mean_s": point.wait_mean_s,
        "wait_p50_s": point.wait_p50_s,
        "wait_p99_s": point.wait_p99_s,
        "run_mean_s": point.run_mean_s,
        "run_p50_s": point.run_p50_s,
        "run_p99_s": point.run_p99_s,
    }


_SeriesKey = tuple[str, str, str]  # pool, task type, worker


def _series(points: Sequence[MetricPoint]) -> dict[_SeriesKey, list[MetricPoint]]:
    """The points per pool, task type and worker, each oldest first, in order of first
    appearance."""
    series: dict[_SeriesKey, list[MetricPoint]] = {}
    for point in points:
        series.setdefault((point.pool, point.task_type, point.worker_id), []).append(point)
    for run in series.values():
        run.sort(key=lambda p: p.start)
    return series


def timeline(points: Sequence[MetricPoint]) -> list[MetricPoint | None]:
    """One series' points on a regular time axis, None for a bucket without a row (nothing
    happened), when they share one bucket width and line up on it; else as they are."""
    if not points:
        return []
    width = points[0].bucket_s
    if width <= 0 or any(p.bucket_s != width for p in points):
        return list(points)
    first = points[0].start
    slots: dict[int, MetricPoint] = {}
    for point in points:
        offset = (point.start - first) / timedelta(seconds=width)
        if not offset.is_integer():
            return list(points)
        slots[int(offset)] = point
    length = max(slots) + 1
    if length > _MAX_TIMELINE:
        return list(points)
    return [slots.get(i) for i in range(length)]


def _time_label(moment: datetime, long: bool) -> str:
    return moment.astimezone().strftime("%m-%d %H:%M" if long else "%H:%M")


def _series_title(key: _SeriesKey) -> str:
    pool, task_type, worker_id = key
    parts = [f"pool {pool}"]
    if task_type:
        parts.append(f"type {task_type}")
    if worker_id:
        parts.append(f"worker {worker_id}")
    return ", ".join(parts)


def _charts(key: _SeriesKey, points: Sequence[MetricPoint], width: int, titled: bool) -> Text:
    """Completed tasks and run p99 per bucket of one series."""
    slots = timeline(points)
    first, last = points[0].start, points[-1].start
    long = first.astimezone().date() != last.astimezone().date()
    first_label, last_label = _time_label(first, long), _time_label(last, long)
    widths = {p.bucket_s for p in points}
    per = f" per {_span(widths.pop())}" if len(widths) == 1 else ""
    text = Text()
    if titled:
        text.append(_series_title(key) + "\n", style="bold underline")
    text.append_text(
        bar_chart(
            f"completed{per}",
            [float(p.completed) if p else 0.0 for p in slots],
            label=lambda v: str(int(v)),
            width=width,
            style="green",
            first=first_label,
            last=last_label,
        )
    )
    text.append("\n\n")
    text.append_text(
        bar_chart(
            f"run p99{per}",
            [p.run_p99_s if p and p.completed else 0.0 for p in slots],
            label=_seconds,
            width=width,
            style="yellow",
            first=first_label,
            last=last_label,
        )
    )
    return text


def _figure(seconds: float, measured: bool) -> str:
    return _seconds(seconds) if measured else "-"


def show_metrics_history(
    points: Sequence[MetricPoint], output: OutputFormat, *, chart: bool = True
) -> None:
    """Print the metrics history: a table of its buckets, oldest first, and with `chart`
    a bar chart of completed tasks and one of run p99 per pool, task type and worker."""
    if output is OutputFormat.JSON:
        print_json([metric_point_dict(p) for p in points])
        return
    if not points:
        typer.echo("no metrics in that window")
        return
    series = _series(points)
    pools = {p.pool for p in points}
    show_type = any(p.task_type for p in points)
    show_worker = any(p.worker_id for p in points)
    widths = {p.bucket_s for p in points}
    show_bucket = len(widths) > 1
    columns = [
        "TIME",
        *(["BUCKET"] if show_bucket else []),
        *(["POOL"] if len(pools) > 1 else []),
        *(["TYPE"] if show_type else []),
        *(["WORKER"] if show_worker else []),
        "SUBMITTED",
        "COMPLETED",
        "FAILED",
        "WAIT MEAN",
        "WAIT P50",
        "WAIT P99",
        "RUN MEAN",
        "RUN P50",
        "RUN P99",
    ]
    title = None if show_bucket else f"per {_span(next(iter(widths)))}"
    table = _table(*columns, wrap=["TYPE", "WORKER"], title=title)
    for point in sorted(points, key=lambda p: (p.start, p.pool, p.task_type, p.worker_id)):
        measured = bool(point.completed)
        _row(
            table,
            [
                point.start.astimezone().strftime("%m-%d %H:%M"),
                *([_span(point.bucket_s)] if show_bucket else []),
                *([point.pool] if len(pools) > 1 else []),
                *([point.task_type or "-"] if show_type else []),
                *([point.worker_id or "-"] if show_worker else []),
                str(point.submitted),
                str(point.completed),
                str(point.failed),
                *(
                    _figure(seconds, measured)
                    for seconds in (
                        point.wait_mean_s,
                        point.wait_p50_s,
                        point.wait_p99_s,
                        point.run_mean_s,
                        point.run_p50_s,
                        point.run_p99_s,
                    )
                ),
            ],
        )
    console = _console()
    console.print(table)
    if chart:
        width = min(console.width, 160)
        for key, run in series.items():
            console.print()
            console.print(_charts(key, run, width, titled=len(series) > 1))


# -- recommendations ---------------------------------------------------------------------


def recommendation_dict(rec: PoolRecommendation) -> dict[str, Any]:
    """A pool's worker recommendation as a JSON-able dict."""
    return {
        "pool": rec.pool,
        "current_workers": rec.current_workers,
        "recommended_workers": rec.recommended_workers,
        "arrival_rate_per_s": rec.arrival_rate_per_s,
        "mean_run_s": rec.mean_run_s,
        "slots_per_worker": rec.slots_per_worker,
        "servers": rec.servers,
        "utilisation": rec.utilisation,
        "expected_wait_s": rec.expected_wait_s,
        "probability_of_wait": rec.probability_of_wait,
        "method": rec.method,
        "reasoning": list(rec.reasoning),
    }


def _recommended(rec: PoolRecommendation) -> Text:
    """6 (+2) in yellow when the pool needs more workers, 2 (-1) when fewer, else 4."""
    change = rec.recommended_workers - rec.current_workers
    if change > 0:
        return Text(f"{rec.recommended_workers} (+{change})", style="yellow")
    if change < 0:
        return Text(f"{rec.recommended_workers} ({change})", style="cyan")
    return Text(str(rec.recommended_workers))


def show_recommendations(recs: Sequence[PoolRecommendation], output: OutputFormat) -> None:
    """Print a row per pool, then each pool's reasoning."""
    if output is OutputFormat.JSON:
        print_json([recommendation_dict(r) for r in recs])
        return
    if not recs:
        typer.echo("no pools")
        return
    table = _table(
        "POOL",
        "WORKERS",
        "RECOMMENDED",
        "ARRIVALS",
        "MEAN RUN",
        "UTILISATION",
        "EXPECTED WAIT",
        "P(WAIT)",
        "METHOD",
        wrap=["METHOD"],
    )
    for rec in recs:
        _row(
            table,
            [
                rec.pool,
                str(rec.current_workers),
                _recommended(rec),
                _per_second(rec.arrival_rate_per_s),
                _seconds(rec.mean_run_s),
                f"{rec.utilisation:.0%}",
                _seconds(rec.expected_wait_s),
                f"{rec.probability_of_wait:.1%}",
                rec.method,
            ],
        )
    console = _console()
    console.print(table)
    for rec in recs:
        if rec.reasoning:
            console.print(Text(f"{rec.pool}:", style="bold"))
            for line in rec.reasoning:
                console.print(Text(f"  {line}"))


# -- config changes ----------------------------------------------------------------------


def config_change_dict(change: ConfigChange) -> dict[str, Any]:
    """An audited change of a pool's settings as a JSON-able dict; `before` is null for a
    new pool."""
    return {
        "at": _iso(change.at),
        "who": change.who,
        "source": change.source,
        "pool": change.pool,
        "fields": list(change.fields),
        "before": None if change.before is None else dict(change.before),
        "after": None if change.after is None else dict(change.after),
    }


_MISSING = object()


def _setting(value: object) -> str:
    """A setting's value as typed: round_robin, 5, 2.5, [] ({...} for a list or map)."""
    if value is _MISSING or value is None:
        return "-"
    if isinstance(value, str):
        return value or "''"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return number(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def change_text(change: ConfigChange) -> str:
    """What changed: "new pool", "removed", or "strategy round_robin → least_loaded; ..."."""
    if change.before is None:
        return "new pool"
    if change.after is None:
        return "removed"
    parts = []
    for name in change.fields:
        before = change.before.get(name, _MISSING)
        after = change.after.get(name, _MISSING)
        parts.append(f"{name} {_setting(before)} → {_setting(after)}")
    return "; ".join(parts) or "-"


def _changes_table(changes: Sequence[ConfigChange]) -> Table:
    table = _table("TIME", "WHO", "SOURCE", "POOL", "CHANGES", wrap=["WHO", "CHANGES"])
    for change in changes:
        _row(
            table,
            [_when(change.at), change.who, change.source, change.pool, change_text(change)],
        )
    return table


def show_config_changes(changes: Sequence[ConfigChange], output: OutputFormat) -> None:
    """Print audited config changes, as the broker ordered them (history: newest first)."""
    if output is OutputFormat.JSON:
        print_json([config_change_dict(c) for c in changes])
        return
    if not changes:
        typer.echo("no config changes")
        return
    _console().print(_changes_table(changes))


def show_config_reload(changes: Sequence[ConfigChange], output: OutputFormat) -> None:
    """Print what a reload changed, or "no changes"."""
    if output is OutputFormat.TABLE and not changes:
        typer.echo("no changes")
        return
    show_config_changes(changes, output)
