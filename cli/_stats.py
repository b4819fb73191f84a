"""`stats`, `metrics history` and `config reload|history`: what the broker reports of
itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from cli import _parse
from cli._common import BrokerOption, OutputOption, WideOption, connect
from cli._output import OutputFormat
from cli._output_pools import show_stats
from worker_sdk import DEFAULT_ADDRESS

metrics_app = typer.Typer(help="The broker's metrics history.", no_args_is_help=True)
config_app = typer.Typer(
    help="Reload the broker's config file; the audit trail of pool settings.",
    no_args_is_help=True,
)


# How often `stats --watch` refreshes unless told, and how often at most.
DEFAULT_WATCH_INTERVAL_S = 2.0
MIN_WATCH_INTERVAL_S = 0.1


def stats(
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Refresh until Ctrl-C; with --output json, print one JSON document (one "
            "line, with its time in 'at') per refresh.",
        ),
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            metavar="SECONDS",
            parser=_parse.parse_seconds,
            help=f"With --watch: time between refreshes, e.g. 5 or 500ms (default "
            f"{DEFAULT_WATCH_INTERVAL_S:g}).",
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            metavar="N",
            callback=_parse.count_from_one,
            help="With --watch: stop after N refreshes.",
        ),
    ] = None,
    wide: WideOption = False,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show task counts and live figures per pool.

    \b
    The columns (those marked * with --wide only):
      POOL, STRATEGY*     the pool and the strategy placing its tasks
      PENDING             tasks waiting: UNSCHEDULABLE* (no connected worker can take
                          them) and DELAYED* (held back until a time) included
      ACTIVE              tasks a worker holds (assigned or running)
      SUCCEEDED, FAILED   finished tasks; CANCELLED* and DEAD LETTER* too
      WORKERS, CAPACITY*  connected workers, and the tasks they can hold at once
      THROUGHPUT          tasks finished per second over the last minute
      WAIT P50 / P99      queue wait over the last minute; RUN P50 / P99* the run time
      OLDEST PENDING*     how long the oldest waiting task has waited
      STICKY HITS*        the share of sticky tasks placed on their worker

    With --wide, then the pools' limits and flow-control counters, their bulkheads, each
    strategy's placements and the learned run times."""
    for flag, value in (("--interval", interval), ("--count", count)):
        if value is not None and not watch:
            raise typer.BadParameter("needs --watch", param_hint=f"'{flag}'")
    if interval is not None and interval < MIN_WATCH_INTERVAL_S:
        raise typer.BadParameter(
            f"must be at least {MIN_WATCH_INTERVAL_S:g} seconds", param_hint="'--interval'"
        )
    with connect(broker) as client:
        if watch:
            from cli._watch import watch_stats

            watch_stats(
                client.stats,
                output,
                wide=wide,
                interval=DEFAULT_WATCH_INTERVAL_S if interval is None else interval,
                count=count,
            )
            return
        result = client.stats()
    show_stats(result, output, wide=wide)


@metrics_app.command("history")
def metrics_history(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    task_type: Annotated[
        str | None,
        typer.Option(
            "--type", metavar="TYPE", help="Only this task type (else summed over the types)."
        ),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker", metavar="ID", help="Only this worker (else summed over the workers)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN",
            help="From this long ago (30m, 1h, 2d) or this ISO 8601 time (default 1h).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN",
            help="Up to this long ago (10m) or this ISO 8601 time (default now).",
        ),
    ] = None,
    bucket: Annotated[
        int | None,
        typer.Option(
            "--bucket",
            metavar="DURATION",
            parser=_parse.parse_bucket,
            help="Merge the rows into buckets this wide, e.g. 5m or 1h (default: as stored, "
            "1m, or 1h once compacted).",
        ),
    ] = None,
    chart: Annotated[
        bool,
        typer.Option(
            "--chart/--no-chart",
            help="Below the table, chart the completed tasks and the run time p99 per bucket.",
        ),
    ] = True,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show the metrics history, oldest first.

    Per bucket: the tasks submitted, completed and failed, and the queue wait and run
    time (mean, p50, p99) of those completed."""
    from cli._observe import show_metrics_history

    start = None if since is None else _parse.time_or_duration(since, "--since")
    end = None if until is None else _parse.time_or_duration(until, "--until")
    now = datetime.now(UTC)
    end_time = now - end if isinstance(end, timedelta) else end
    if start is not None and end_time is not None:
        start_time = now - start if isinstance(start, timedelta) else start
        if start_time >= end_time:
            raise typer.BadParameter("must be before --until", param_hint="'--since'")
    with connect(broker) as client:
        points = client.metrics_history(
            pool=pool,
            task_type=task_type,
            worker_id=worker,
            since=start,
            until=end_time,
            bucket_s=bucket or 0,
        )
    show_metrics_history(points, output, chart=chart)


@config_app.command("reload")
def config_reload(
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Re-read the broker's config file and apply what changed in its pools.

    The same as SIGHUP; prints the changes, or "no changes"."""
    from cli._observe import show_config_reload

    with connect(broker) as client:
        changes = client.reload_config()
    show_config_reload(changes, output)


@config_app.command("history")
def config_history(
    pool: Annotated[str | None, typer.Option(help="Only this pool.")] = None,
    limit: Annotated[
        int,
        typer.Option(callback=_parse.count_from_one, metavar="N", help="At most this many."),
    ] = 100,
    broker: BrokerOption = DEFAULT_ADDRESS,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show the audited changes of pool settings, newest first.

    When, who asked, through what (create_pool, update_pool, reload), and what changed;
    JSON has the settings before and after."""
    from cli._observe import show_config_changes

    with connect(broker) as client:
        changes = client.config_history(pool=pool, limit=limit)
    show_config_changes(changes, output)
