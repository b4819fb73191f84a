"""What one simulation run measured: the row of the comparison table, and more."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The keys of `SimResult.as_row()`, in table order.
ROW_KEYS = (
    "scenario",
    "strategy",
    "seed",
    "tasks",
    "completed",
    "failed",
    "requeued",
    "unfinished",
    "throughput_per_s",
    "makespan_s",
    "wait_p50_s",
    "wait_p95_s",
    "wait_p99_s",
    "run_mean_s",
    "response_mean_s",
    "response_p99_s",
    "utilisation",
    "violations",
    "sticky_placements",
    "sticky_hit_rate",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimResult:
    """What one strategy did with one workload. Times in simulated seconds."""

    scenario: str
    strategy: str
    seed: int
    tasks: int
    completed: int  # ended: succeeded, failed or dead-lettered
    failed: int  # failed or dead-lettered
    requeued: int  # attempts lost with their worker (or their lease) and queued again
    unfinished: int  # never completed (e.g. no worker could take them)
    throughput_per_s: float
    makespan_s: float  # the last completion
    wait_p50_s: float  # queue wait: arrival (or requeue, or retry) to placement
    wait_p95_s: float
    wait_p99_s: float
    run_mean_s: float
    response_mean_s: float  # queue wait + run, per finished attempt
    response_p99_s: float
    utilisation: float  # busy slot-seconds / connected slot-seconds, up to the makespan
    violations: int
    sticky_placements: int  # placements of a task whose sticky key had run before
    sticky_hit_rate: float | None  # ... that went to the worker that last ran the key
    violation_examples: tuple[str, ...] = ()
    # What the lifecycle did beyond placing (not in the table's row):
    retried: int = 0  # failed attempts sent back to wait, by a retry policy
    dead_lettered: int = 0  # tasks whose retries ran out
    timed_out: int = 0  # attempts cancelled past their execution timeout
    breaker_trips: int = 0  # times a worker's circuit breaker opened
    placed_on: Mapping[str, int] = field(default_factory=dict)  # placements per worker
    strategy_notes: tuple[str, ...] = ()  # what the strategy said of itself (adaptive)
    # Adaptive: after how many of its tasks it switched, and the strategy it ended on.
    switched_at: tuple[int, ...] = ()
    active: str = ""

    def as_row(self) -> dict[str, Any]:
        """The result as a JSON-ready dict with the keys of `ROW_KEYS`."""
        row: dict[str, Any] = {}
        for key in ROW_KEYS:
            value = getattr(self, key)
            row[key] = round(value, 6) if isinstance(value, float) else value
        return row


def percentile(ordered: Sequence[float], pct: float) -> float:
    """The pct-th percentile of sorted values, interpolated between ranks; 0 if empty."""
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
