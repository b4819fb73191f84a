"""`stats --watch`: the broker's statistics again every interval, until Ctrl-C or a count.

On a terminal the table view is redrawn in place (rich Live); piped, each refresh is printed
below the last. With JSON, each refresh is one JSON document on one line (JSON Lines).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from rich.live import Live

from cli._output import OutputFormat, _console, _when, print_json_line
from cli._output_pools import stats_dict, stats_view
from worker_sdk import Stats

# Replaced by tests, so that they do not wait for real.
sleep: Callable[[float], None] = time.sleep


def watch_stats(
    fetch: Callable[[], Stats],
    output: OutputFormat,
    *,
    interval: float,
    count: int | None,
    wide: bool = False,
) -> None:
    """Show `fetch()` every `interval` seconds, `count` times (None = until Ctrl-C, which
    ends the watch as a normal exit). An error from `fetch` ends it too, and propagates."""
    refreshes: Iterable[int] = itertools.count() if count is None else range(count)
    console = _console()
    live = (
        Live(console=console, auto_refresh=False, redirect_stdout=False)
        if output is OutputFormat.TABLE and console.is_terminal
        else None
    )
    try:
        with live if live is not None else contextlib.nullcontext():
            for refresh in refreshes:
                if refresh:
                    sleep(interval)
                stats = fetch()
                at = datetime.now(UTC)
                if output is OutputFormat.JSON:
                    print_json_line({"at": at.isoformat(), **stats_dict(stats)})
                    continue
                heading = f"broker: {stats.broker_state}, at {_when(at)}, every {interval:g} s"
                if live is not None:
                    heading += " (Ctrl-C to stop)"
                view = stats_view(stats, heading, wide=wide)
                if live is not None:
                    live.update(view, refresh=True)
                else:
                    if refresh:
                        console.print()
                    console.print(view)
    except KeyboardInterrupt:
        pass  # how a watch is meant to end
