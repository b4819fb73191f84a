"""Three ways to size a worker pool, compared on the same day of arrivals.

A discrete-event simulation (virtual time: a day runs in seconds) of one pool whose
arrivals follow a daily season (quiet nights, a morning and an afternoon peak), with
exponential run times, under three scaling rules:

- `fixed`: as many workers all day as the peak needs (the queueing model at the peak
  rate, for the target wait);
- `reactive`: KEDA's plain queue scaler, replicas = ceil(queue length / target), the queue
  length counting the tasks workers hold (RabbitMQ's `messages`), the target a worker's
  capacity;
- `predictive`: the broker's external scaler: the recommendation of
  broker.observability.recommend over the pool's history (the days before included, so
  Holt-Winters sees the season) and broker.observability.scaling's activity rule.

Both KEDA rules go through the same HPA and KEDA behaviour: a poll every 15 s, scale-up at
most doubling (or +4) per poll, a 10% tolerance, a 300 s scale-down stabilisation window,
scale to zero after 300 s inactive, and a new worker taking tasks 60 s after it is asked
for (a pod scheduled, its image started, connected). A worker asked to go finishes what
it holds first. Worker-hours count from the moment a worker is asked for to the moment it
exits, within the measured day. The predictive rule runs twice: at the default target
wait (a mean of 1 s) and at a tight one (0.1 s), to show what the target trades.

`python -m broker.sim.autoscale` prints the table the README shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.observability import scaling
from broker.observability.recommend import DAY, Recommendation, recommend, servers_for
from broker.observability.rollups import MINUTE, MetricPoint

RULES: Final = ("fixed", "reactive", "predictive")
POOL: Final = "jobs"
_HOUR: Final = 3600.0
_COMPACT_AFTER_S: Final = 7 * 3600.0  # the forecast's per-minute window is 6 h


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """The pool, the trace and the autoscaler's settings."""

    seed: int = 1
    history_days: int = 2  # days of arrivals before the measured one, in the history
    load: float = 1.0  # multiplies the arrival rates of `arrival_rate`
    mean_run_s: float = 6.0
    capacity: int = 4  # slots per worker
    startup_s: float = 60.0  # from a scale-up to the new worker taking tasks (pod start)
    poll_s: float = 15.0  # KEDA's polling interval (and the HPA's sync)
    stabilization_s: float = 300.0  # the HPA's scale-down window
    cooldown_s: float = 300.0  # KEDA: inactive this long, then zero replicas
    tolerance: float = 0.1  # the HPA's
    queue_target: int = 4  # reactive: queue length per replica
    target_wait_s: float = 1.0  # predictive and fixed: the mean queue wait aimed for
    horizon_s: float = 900.0
    predict_every_s: float = 300.0  # how often the predictive rule's forecast is refitted
    max_workers: int = 200


def arrival_rate(hour: float) -> float:
    """Tasks per second at `hour` (0..24) of a day, at load 1: 0.2/s at night; office
    hours that start at 08:00 sharp (a step to 2/s) and rise to about 3/s by late morning;
    a lunch dip; a second step at 13:00; a fall at 17:00 to an evening tail."""
    night = 0.2
    if hour < 8 or hour >= 22:
        return night
    if hour < 12:
        return 2.0 + 1.0 * math.sin(math.pi * (hour - 8) / 8)
    if hour < 13:
        return 1.2
    if hour < 17:
        return 2.6 + 0.4 * math.sin(math.pi * (hour - 13) / 4)
    return night + 0.6 * math.exp(-(hour - 17))


_PEAK_RATE: Final = max(arrival_rate(h / 60) for h in range(24 * 60))


@dataclass(frozen=True, slots=True)
class Trace:
    """The measured day's arrivals and run times, and the history of the days before."""

    start: float  # the measured day's midnight
    arrivals: tuple[float, ...]
    runs: tuple[float, ...]
    history: tuple[MetricPoint, ...]  # one point a minute of the days before
    peak_rate: float  # the highest rate of the measured day, tasks per second


def make_trace(setup: Setup) -> Trace:
    """Poisson arrivals at `arrival_rate` (by thinning), each day scaled by a factor drawn
    in 0.9..1.1, over `history_days` + 1 days; the same seed gives the same trace."""
    rng = random.Random(setup.seed)
    history: list[MetricPoint] = []
    arrivals: list[float] = []
    runs: list[float] = []
    peak = 0.0
    for day in range(setup.history_days + 1):
        factor = rng.uniform(0.9, 1.1) * setup.load
        top = _PEAK_RATE * factor
        midnight = day * DAY
        measured = day == setup.history_days
        per_minute: dict[int, list[float]] = {}
        at = 0.0
        while True:
            at += rng.expovariate(top)
            if at >= DAY:
                break
            if rng.random() * top <= arrival_rate(at / _HOUR) * factor:
                run = rng.expovariate(1 / setup.mean_run_s)
                if measured:
                    arrivals.append(midnight + at)
                    runs.append(run)
                else:
                    per_minute.setdefault(int(at // MINUTE), []).append(run)
        if measured:
            peak = top
        for minute, minute_runs in sorted(per_minute.items()):
            start = midnight + minute * MINUTE
            count = len(minute_runs)
            history.append(_point(start, count, count, sum(minute_runs) / count))
    return Trace(setup.history_days * DAY, tuple(arrivals), tuple(runs), tuple(history), peak)


def _point(
    start: float, submitted: int, completed: int, mean: float, bucket_s: float = MINUTE
) -> MetricPoint:
    return MetricPoint(
        start=start,
        bucket_s=int(bucket_s),
        pool=POOL,
        task_type="",
        worker_id="",
        submitted=submitted,
        completed=completed,
        failed=0,
        wait_mean_s=0.0,
        wait_p50_s=0.0,
        wait_p99_s=0.0,
        run_mean_s=mean,
        run_p50_s=mean,
        run_p99_s=mean,
    )


def fixed_workers(setup: Setup, peak_rate: float) -> int:
    """The workers the queueing model asks for at the peak rate."""
    slots = servers_for(setup.target_wait_s, peak_rate, 1 / setup.mean_run_s)
    return math.ceil(slots / setup.capacity)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How one rule did over the measured day."""

    rule: str
    target_wait_s: float  # the predictive rule's
    worker_hours: float
    wait_p50_s: float
    wait_p99_s: float
    wait_mean_s: float
    peak_workers: int
    tasks: int


@dataclass(slots=True)
class _Worker:
    created: float
    ready_at: float
    busy: int = 0
    draining: bool = False
    ended: float | None = None


@dataclass(slots=True)
class _Run:
    """One rule's simulation state."""

    setup: Setup
    trace: Trace
    rule: str
    workers: list[_Worker] = field(default_factory=list)
    queue: deque[int] = field(default_factory=deque)
    events: list[tuple[float, int, int, int]] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    seq: int = 0
    in_flight: int = 0
    last_active: float = 0.0
    desired_window: deque[tuple[float, int]] = field(default_factory=deque)
    # the predictive rule's history: complete minutes, and the tallies of the others
    points: list[MetricPoint] = field(default_factory=list)
    submitted: dict[int, int] = field(default_factory=dict)
    completed: dict[int, list[float]] = field(default_factory=dict)
    flushed_until: int = 0
    recommendation: Recommendation | None = None
    refitted_at: float = -math.inf
    hourly: list[MetricPoint] = field(default_factory=list)

    def push(self, at: float, kind: int, item: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, item))


_ARRIVE, _DONE, _READY, _POLL = 0, 1, 2, 3


def simulate(setup: Setup, trace: Trace, rule: str) -> Outcome:
    """Run `rule` over the trace's measured day (and until its last task is done)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    run = _Run(setup, trace, rule)
    start, end = trace.start, trace.start + DAY
    initial = fixed_workers(setup, trace.peak_rate) if rule == "fixed" else 1
    run.workers = [_Worker(created=start, ready_at=start) for _ in range(initial)]
    run.points = list(trace.history)
    _compact(run, start)
    run.flushed_until = int(start // MINUTE)
    run.last_active = start
    for index, at in enumerate(trace.arrivals):
        run.push(at, _ARRIVE, index)
    if rule != "fixed":
        run.push(start, _POLL, 0)
    peak = initial
    remaining = len(trace.arrivals)
    while run.events and remaining:
        now, _seq, kind, item = heapq.heappop(run.events)
        if kind == _ARRIVE:
            run.queue.append(item)
            minute = int(now // MINUTE)
            run.submitted[minute] = run.submitted.get(minute, 0) + 1
        elif kind == _DONE:
            worker = run.workers[item >> 32]
            worker.busy -= 1
            run.in_flight -= 1
            remaining -= 1
            task = item & 0xFFFFFFFF
            run.completed.setdefault(int(now // MINUTE), []).append(trace.runs[task])
            if worker.draining and worker.busy == 0:
                worker.ended = now
        elif kind == _POLL:
            _poll(run, now)
            if now < end:
                run.push(now + setup.poll_s, _POLL, 0)
            peak = max(peak, sum(1 for w in run.workers if w.ended is None and not w.draining))
        _dispatch(run, now)
    hours = sum(
        max(0.0, min(w.ended if w.ended is not None else end, end) - max(w.created, start))
        for w in run.workers
    )
    waits = sorted(run.waits)
    return Outcome(
        rule=rule,
        target_wait_s=setup.target_wait_s,
        worker_hours=hours / _HOUR,
        wait_p50_s=_quantile(waits, 0.5),
        wait_p99_s=_quantile(waits, 0.99),
        wait_mean_s=sum(waits) / len(waits) if waits else 0.0,
        peak_workers=peak,
        tasks=len(waits),
    )


def _dispatch(run: _Run, now: float) -> None:
    """Hand waiting tasks, oldest first, to ready workers with a free slot."""
    if not run.queue:
        return
    capacity = run.setup.capacity
    for number, worker in enumerate(run.workers):
        if worker.ended is not None or worker.draining or worker.ready_at > now:
            continue
        while worker.busy < capacity and run.queue:
            task = run.queue.popleft()
            worker.busy += 1
            run.in_flight += 1
            run.waits.append(now - run.trace.arrivals[task])
            run.push(now + run.trace.runs[task], _DONE, (number << 32) | task)
        if not run.queue:
            return


def _poll(run: _Run, now: float) -> None:
    """KEDA's poll and the HPA's sync: the rule's metric and activity, then the replicas."""
    setup = run.setup
    pending, in_flight = len(run.queue), run.in_flight
    if run.rule == "reactive":
        length = pending + in_flight
        active = length > 0
        wanted = math.ceil(length / setup.queue_target)
    else:
        decision = _predict(run, now, pending, in_flight)
        active, wanted = decision.active, decision.desired_workers
    current = [w for w in run.workers if w.ended is None and not w.draining]
    count = len(current)
    if active:
        run.last_active = now
    if count == 0:
        target = max(1, wanted) if active else 0  # KEDA activates, the HPA takes over
    elif not active and now - run.last_active >= setup.cooldown_s:
        target = 0
    else:
        wanted = max(wanted, 1)
        if abs(wanted / count - 1) <= setup.tolerance:
            wanted = count
        run.desired_window.append((now, wanted))
        while run.desired_window[0][0] < now - setup.stabilization_s:
            run.desired_window.popleft()
        if wanted < count:  # scale down only to the highest wish of the window
            wanted = min(count, max(d for _t, d in run.desired_window))
        target = min(wanted, max(2 * count, count + 4))
    _scale(run, now, min(target, setup.max_workers), current)


def _predict(run: _Run, now: float, pending: int, in_flight: int) -> scaling.ScalingDecision:
    setup = run.setup
    minute_now = int(now // MINUTE)
    for minute in range(run.flushed_until, minute_now):
        submitted = run.submitted.pop(minute, 0)
        runs = run.completed.pop(minute, [])
        if submitted or runs:
            mean = sum(runs) / len(runs) if runs else 0.0
            run.points.append(_point(minute * MINUTE, submitted, len(runs), mean))
    run.flushed_until = max(run.flushed_until, minute_now)
    if run.recommendation is None or now - run.refitted_at >= setup.predict_every_s:
        _compact(run, now)
        workers = [w for w in run.workers if w.ended is None and not w.draining]
        run.recommendation = recommend(
            POOL,
            run.hourly + run.points,
            now=now,
            current_workers=len(workers),
            slots_per_worker=setup.capacity,
            target_wait_s=setup.target_wait_s,
            horizon_s=setup.horizon_s,
            backlog=pending,
        )
        run.refitted_at = now
    return scaling.decide(
        run.recommendation, pending=pending, in_flight=in_flight, horizon_s=setup.horizon_s
    )


def _compact(run: _Run, now: float) -> None:
    """Minutes older than the forecast's per-minute window (and a margin) become hourly
    points, as the broker's history compacts old minutes: the same rates, fewer points."""
    cutoff = math.floor((now - _COMPACT_AFTER_S) / _HOUR) * _HOUR
    old = [p for p in run.points if p.start < cutoff]
    if not old:
        return
    run.points = [p for p in run.points if p.start >= cutoff]
    by_hour: dict[float, list[MetricPoint]] = {}
    for point in old:
        by_hour.setdefault(math.floor(point.start / _HOUR) * _HOUR, []).append(point)
    for start, points in sorted(by_hour.items()):
        completed = sum(p.completed for p in points)
        run_sum = sum(p.run_mean_s * p.completed for p in points)
        mean = run_sum / completed if completed else 0.0
        submitted = sum(p.submitted for p in points)
        run.hourly.append(_point(start, submitted, completed, mean, _HOUR))


def _scale(run: _Run, now: float, target: int, current: list[_Worker]) -> None:
    if target > len(current):
        for _ in range(target - len(current)):
            run.workers.append(_Worker(created=now, ready_at=now + run.setup.startup_s))
        return
    # Fewer: those still starting first, then the least busy; each finishes what it holds.
    for worker in sorted(current, key=lambda w: (w.ready_at <= now, w.busy))[
        : len(current) - target
    ]:
        worker.draining = True
        if worker.busy == 0:
            worker.ended = now


def _quantile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


TIGHT_WAIT_S: Final = 0.1


def compare(setup: Setup) -> tuple[Trace, list[Outcome]]:
    """Every rule on the same trace (the predictive one at the setup's target wait and at
    TIGHT_WAIT_S)."""
    trace = make_trace(setup)
    tight = dataclasses.replace(setup, target_wait_s=TIGHT_WAIT_S)
    outcomes = [simulate(setup, trace, rule) for rule in RULES]
    outcomes.append(
        dataclasses.replace(simulate(tight, trace, "predictive"), target_wait_s=TIGHT_WAIT_S)
    )
    return trace, outcomes


def table(setup: Setup, trace: Trace, outcomes: Sequence[Outcome]) -> str:
    """The outcomes as a Markdown table."""
    fixed = fixed_workers(setup, trace.peak_rate)
    names = {
        "fixed": f"fixed pool ({fixed} workers, sized for the peak)",
        "reactive": f"reactive: queue length / {setup.queue_target} per replica",
    }
    lines = [
        "| scaling rule | worker-hours | queue wait p50 | p99 | mean | peak workers |",
        "|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        lines.append(
            f"| {_name(outcome, names)} | {outcome.worker_hours:.1f}"
            f" | {outcome.wait_p50_s:.2f} s | {outcome.wait_p99_s:.2f} s"
            f" | {outcome.wait_mean_s:.2f} s | {outcome.peak_workers} |"
        )
    return "\n".join(lines)


def _name(outcome: Outcome, names: dict[str, str]) -> str:
    if outcome.rule == "predictive":
        return f"predictive: the broker's recommendation, target wait {outcome.target_wait_s:g} s"
    return names[outcome.rule]


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Setup()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--load", type=float, default=defaults.load, help="the arrival rates times this"
    )
    parser.add_argument("--startup-s", type=float, default=defaults.startup_s)
    args = parser.parse_args(argv)
    setup = Setup(seed=args.seed, load=args.load, startup_s=args.startup_s)
    began = time.perf_counter()
    trace, outcomes = compare(setup)
    print(
        f"{len(trace.arrivals)} tasks over one day (peak {trace.peak_rate:.2f}/s, mean run"
        f" {setup.mean_run_s:g} s, {setup.capacity} slots per worker, {setup.history_days}"
        f" days of history), seed {setup.seed}:\n"
    )
    print(table(setup, trace, outcomes))
    print(f"\n(simulated in {time.perf_counter() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
