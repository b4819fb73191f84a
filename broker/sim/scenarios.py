"""Built-in workloads for the placement simulator (`taskbroker simulate --list`).

Each scenario builds a `Workload` from a task count and a seed, so one seed gives
one workload. Loads are stated as a share of the pool's capacity in tasks per
second (the sum over workers of capacity / mean run time).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from broker.domain import Placement
from broker.sim.simulator import (
    ANY_CLASS,
    SimTask,
    SimulationError,
    SimWorker,
    WorkerChange,
    WorkerEvent,
    Workload,
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named workload generator."""

    name: str
    description: str
    default_tasks: int
    build: Callable[[int, random.Random], Workload]  # (tasks, rng) -> workload


def build_scenario(name: str, *, tasks: int | None = None, seed: int = 0) -> Workload:
    """The scenario's workload; SimulationError for an unknown name."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise SimulationError(f"unknown scenario {name!r}; choose from: {', '.join(SCENARIOS)}")
    count = scenario.default_tasks if tasks is None else tasks
    if count < 1:
        raise SimulationError(f"a scenario needs at least 1 task, got {count}")
    return scenario.build(count, random.Random(seed))


def _poisson(rng: random.Random, rate_per_s: float, start_s: float = 0.0) -> Iterator[float]:
    """Arrival times of a Poisson process."""
    now = start_s
    while True:
        now += rng.expovariate(rate_per_s)
        yield now


def _workers(
    prefix: str, count: int, capacity: int, types: frozenset[str], **labels: str
) -> list[SimWorker]:
    return [
        SimWorker(
            worker_id=f"{prefix}-{i}",
            capacity=capacity,
            task_types=types,
            labels=labels,
            worker_class=labels.get("class", prefix),
        )
        for i in range(1, count + 1)
    ]


def _rate(workers: list[SimWorker], mean_s: dict[str, float], share: float) -> float:
    """Arrivals per second that load the workers to `share` of their capacity."""
    capacity = sum(
        w.capacity / mean_s.get(w.worker_class, mean_s.get(ANY_CLASS, 1.0)) for w in workers
    )
    return share * capacity


WORK = frozenset({"work"})


def heterogeneous(tasks: int, rng: random.Random) -> Workload:
    means = {"fast": 0.1, "slow": 1.0}
    workers = _workers("fast", 4, 2, WORK, **{"class": "fast"}) + _workers(
        "slow", 4, 2, WORK, **{"class": "slow"}
    )
    arrivals = _poisson(rng, _rate(workers, means, 0.7))
    steady = [next(arrivals) for _ in range(max(0, tasks - FINAL_BATCH))]
    # The day ends with a batch, once the pool is idle, that the fast workers alone can
    # hold: where it goes decides when the last task finishes.
    batch_at = (steady[-1] if steady else 0.0) + 5.0
    times = steady + [batch_at] * min(tasks, FINAL_BATCH)
    return Workload(
        name="heterogeneous",
        workers=tuple(workers),
        tasks=tuple(SimTask(arrival_s=t, task_type="work", duration_s=means) for t in times),
        jitter_sigma=0.5,
    )


FINAL_BATCH = 8


def same_labels(tasks: int, rng: random.Random) -> Workload:
    means = {"quick": 0.1, "sluggish": 1.0}
    # No labels: placement cannot tell them apart but by what it measures.
    workers = [
        SimWorker(worker_id=f"{name}-1", capacity=2, task_types=WORK, worker_class=name)
        for name in means
    ]
    arrivals = _poisson(rng, _rate(workers, means, 0.6))
    return Workload(
        name="same-labels",
        workers=tuple(workers),
        tasks=tuple(
            SimTask(arrival_s=next(arrivals), task_type="work", duration_s=means)
            for _ in range(tasks)
        ),
        jitter_sigma=0.5,
    )


def one_better(tasks: int, rng: random.Random) -> Workload:
    means = {"fast": 0.1, "slow": 0.18}
    workers = _workers("fast", 4, 1, WORK, **{"class": "fast"}) + _workers(
        "slow", 4, 1, WORK, **{"class": "slow"}
    )
    arrivals = _poisson(rng, _rate(workers, means, 0.3))
    return Workload(
        name="one-better",
        workers=tuple(workers),
        tasks=tuple(
            SimTask(arrival_s=next(arrivals), task_type="work", duration_s=means)
            for _ in range(tasks)
        ),
        jitter_sigma=0.3,
    )


def steady(tasks: int, rng: random.Random) -> Workload:
    means = {ANY_CLASS: 0.2}
    workers = _workers("steady", 8, 2, WORK)
    arrivals = _poisson(rng, _rate(workers, means, 0.6))
    return Workload(
        name="steady",
        workers=tuple(workers),
        tasks=tuple(
            SimTask(arrival_s=next(arrivals), task_type="work", duration_s=means)
            for _ in range(tasks)
        ),
        jitter_sigma=0.5,
    )


def _zipf(keys: int, exponent: float) -> list[float]:
    """Cumulative weights of a Zipf-like law over ranks 1..keys."""
    return list(itertools.accumulate(1 / rank**exponent for rank in range(1, keys + 1)))


def hot_keys(tasks: int, rng: random.Random) -> Workload:
    means = {ANY_CLASS: 0.2}
    workers = _workers("cache", 8, 4, WORK)
    arrivals = _poisson(rng, _rate(workers, means, 0.6))
    names = [f"key-{k}" for k in range(300)]
    keys = rng.choices(names, cum_weights=_zipf(len(names), 1.1), k=tasks)
    # Every task routes by its key; a third also insist on it (sticky).
    sticky = [rng.random() < 1 / 3 for _ in range(tasks)]
    return Workload(
        name="hot-keys",
        workers=tuple(workers),
        tasks=tuple(
            SimTask(
                arrival_s=next(arrivals),
                task_type="work",
                duration_s=means,
                placement=Placement(sticky_key=key if stick else "", routing_key=key),
            )
            for key, stick in zip(keys, sticky, strict=True)
        ),
        jitter_sigma=0.3,
        sticky_timeout_s=0.5,
        key_cache=16,
        warm_factor=0.25,
    )


def failing_worker(tasks: int, rng: random.Random) -> Workload:
    means = {ANY_CLASS: 0.3}
    steady = _workers("steady", 4, 2, WORK)
    rate = _rate([*steady, *steady[:2]], means, 0.6)  # about six workers connected at a time
    horizon = tasks / rate
    workers = [
        *steady,
        # Fails half its tasks, fast: a "black hole" that looks idle to load-based strategies.
        SimWorker(
            worker_id="flaky", capacity=2, task_types=WORK, fail_rate=0.5, fail_time_factor=0.1
        ),
        SimWorker(worker_id="crashy", capacity=2, task_types=WORK),
        SimWorker(worker_id="leaver", capacity=2, task_types=WORK),
        SimWorker(worker_id="late", capacity=2, task_types=WORK, join_s=0.4 * horizon),
    ]
    events = (
        WorkerEvent(0.25 * horizon, "crashy", WorkerChange.CRASH),
        WorkerEvent(0.5 * horizon, "crashy", WorkerChange.JOIN),
        WorkerEvent(0.6 * horizon, "leaver", WorkerChange.LEAVE),
    )
    arrivals = _poisson(rng, rate)
    return Workload(
        name="failing-worker",
        workers=tuple(workers),
        worker_events=events,
        tasks=tuple(
            SimTask(arrival_s=next(arrivals), task_type="work", duration_s=means)
            for _ in range(tasks)
        ),
        jitter_sigma=0.5,
    )


def bursty(tasks: int, rng: random.Random) -> Workload:
    batch = {"fast": 0.4, "slow": 1.2}
    interactive = {"fast": 0.05, "slow": 0.15}
    types = frozenset({"batch", "interactive"})
    workers = _workers("fast", 4, 2, types) + _workers("slow", 2, 2, types)
    made: list[SimTask] = []
    background = _poisson(rng, 4.0)
    burst_every_s, burst_size, burst_length_s = 30.0, 300, 1.0
    next_interactive = next(background)
    burst_start = 5.0
    while len(made) < tasks:
        while next_interactive < burst_start and len(made) < tasks:
            made.append(
                SimTask(
                    arrival_s=next_interactive,
                    task_type="interactive",
                    duration_s=interactive,
                    priority=10,
                )
            )
            next_interactive = next(background)
        burst = sorted(burst_start + rng.uniform(0, burst_length_s) for _ in range(burst_size))
        for at_s in burst:
            while next_interactive < at_s and len(made) < tasks:
                made.append(
                    SimTask(
                        arrival_s=next_interactive,
                        task_type="interactive",
                        duration_s=interactive,
                        priority=10,
                    )
                )
                next_interactive = next(background)
            if len(made) < tasks:
                made.append(SimTask(arrival_s=at_s, task_type="batch", duration_s=batch))
        burst_start += burst_every_s
    return Workload(name="bursty", workers=tuple(workers), tasks=tuple(made), jitter_sigma=0.5)


def constraints(tasks: int, rng: random.Random) -> Workload:
    means = {"gpu": 0.3, "cpu": 0.4}
    workers = [
        *_workers("gpu-a", 2, 3, WORK, zone="a", gpu="yes", **{"class": "gpu"}),
        *_workers("gpu-b", 1, 3, WORK, zone="b", gpu="yes", **{"class": "gpu"}),
        *_workers("cpu-a", 2, 3, WORK, zone="a", gpu="no", **{"class": "cpu"}),
        *_workers("cpu-b", 3, 3, WORK, zone="b", gpu="no", **{"class": "cpu"}),
    ]
    arrivals = _poisson(rng, _rate(workers, means, 0.5))
    kinds: list[tuple[float, Callable[[], Placement]]] = [
        (0.25, lambda: Placement(required_labels={"gpu": "yes"})),
        (0.15, lambda: Placement(required_labels={"zone": "a"})),
        (0.05, lambda: Placement(required_labels={"zone": "b", "gpu": "yes"})),
        (0.15, lambda: Placement(anti_affinity_group=f"shard-{rng.randrange(3)}")),
        (0.10, lambda: Placement(anti_affinity_group="spread", anti_affinity_soft=True)),
        (0.30, Placement),
    ]
    weights = list(itertools.accumulate(share for share, _ in kinds))
    makers = [make for _, make in kinds]
    return Workload(
        name="constraints",
        workers=tuple(workers),
        tasks=tuple(
            SimTask(
                arrival_s=next(arrivals),
                task_type="work",
                duration_s=means,
                placement=rng.choices(makers, cum_weights=weights)[0](),
            )
            for _ in range(tasks)
        ),
        jitter_sigma=0.5,
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "heterogeneous",
            "4 fast (0.1 s) and 4 slow (1 s) workers of capacity 2, Poisson arrivals at 70% "
            "of capacity, then a closing batch of 8 tasks",
            10_000,
            heterogeneous,
        ),
        Scenario(
            "same-labels",
            "two workers with the same (no) labels, one taking 0.1 s and one 1 s, capacity "
            "2 each, Poisson arrivals at 60% of capacity",
            10_000,
            same_labels,
        ),
        Scenario(
            "one-better",
            "4 workers taking 0.1 s and 4 taking 0.18 s, capacity 1, at 30% of capacity: "
            "placing by learned run time beats spreading the load",
            10_000,
            one_better,
        ),
        Scenario(
            "steady",
            "8 identical workers of capacity 2 at 60% of capacity: no strategy is much "
            "better, so adaptive should stay put",
            10_000,
            steady,
        ),
        Scenario(
            "hot-keys",
            "8 workers of capacity 4; routing keys (a third also sticky) drawn Zipf-like from "
            "300; a warm key (LRU of 16 per worker) runs 4x faster",
            10_000,
            hot_keys,
        ),
        Scenario(
            "failing-worker",
            "one worker fails half its tasks fast, one crashes and comes back, one drains "
            "away, one joins late",
            10_000,
            failing_worker,
        ),
        Scenario(
            "bursty",
            "bursts of 300 batch tasks every 30 s over a steady trickle of high-priority "
            "interactive ones, on 4 fast and 2 slow workers",
            10_000,
            bursty,
        ),
        Scenario(
            "constraints",
            "zones and GPUs: required labels, hard anti-affinity shards and a soft spread "
            "group, at 50% of capacity",
            10_000,
            constraints,
        ),
    )
}
