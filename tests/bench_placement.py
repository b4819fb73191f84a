"""Placement cost as pools grow: decisions per second at 10, 1,000 and 10,000 workers.

Drives the real PoolScheduler in process (no network, no store): each round queues
a batch of tasks, places them, and gives every slot back, so every strategy works
in a steady state (the first round, untimed, builds what a strategy builds once).
Prints `placement_rate_<strategy>_<workers>w N decisions/s` and the same for tasks
with a required label (`placement_rate_labels_...`), which go through the label index
and the filters. Each measurement stops after `decisions` placements or `seconds`,
whichever comes first (`--quick`: at most 0.3 s). Time is CPU time
(`time.process_time`), so other work on the machine does not skew it, and counts
what the scheduler does (queue, place, release), not building the Task objects the
store would hand it.
"""

from __future__ import annotations

import argparse
import itertools
import time

from broker.core.scheduler import PoolScheduler
from broker.core.strategies import STRATEGIES, WorkerSlot
from broker.domain import Placement, Task, TaskSpec

SIZES = (10, 1_000, 10_000)
BATCH = 200


def _pool(strategy: str, workers: int) -> PoolScheduler:
    pool = PoolScheduler("bench", strategy, starvation_interval=10)
    for i in range(workers):
        labels = {"zone": f"z{i % 10}", "class": "fast" if i % 2 else "slow"}
        pool.add_worker(WorkerSlot(f"w{i}", "bench", 4, frozenset({"job"}), labels))
    return pool


def rate(strategy: str, workers: int, *, labels: bool, decisions: float, seconds: float) -> float:
    """Placements per second in a steady state."""
    pool = _pool(strategy, workers)
    placement = Placement(required_labels={"zone": "z3"}) if labels else Placement()
    ids = itertools.count(1)
    # No more per round than the slots that may take them, so the queue stays short.
    batch = min(BATCH, 4 * (workers // 10 if labels else workers))

    def make_round() -> list[Task]:
        tasks = []
        for _ in range(batch):
            task_id = next(ids)
            spec = TaskSpec(task_type="job", placement=placement)
            tasks.append(Task(id=task_id, seq=task_id, spec=spec))
        return tasks

    def one_round(tasks: list[Task]) -> int:
        placed = 0
        for task in tasks:
            pool.enqueue(task)
        for decision in pool.place():
            if decision.worker is not None:
                placed += 1
                pool.release(decision.worker.worker_id, decision.task.id)
        for task in pool.parked():  # labelled tasks beyond capacity: drop, keep it steady
            pool.dequeue(task.id)
        for task in list(pool.queue):
            pool.dequeue(task.id)
        return placed

    one_round(make_round())  # the first builds what the strategy builds once: not timed
    placed = 0
    spent = 0.0
    while placed < decisions and spent < seconds:
        tasks = make_round()  # the tasks the store would hand over: not placement's cost
        started = time.process_time()
        placed += one_round(tasks)
        spent += time.process_time() - started
    return placed / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--quick", action="store_true", help="at most 0.3 s a measurement")
    options = parser.parse_args()
    seconds = min(options.seconds, 0.3) if options.quick else options.seconds
    limits = {"decisions": options.decisions, "seconds": seconds}
    for strategy in sorted(STRATEGIES):
        for workers in SIZES:
            value = rate(strategy, workers, labels=False, **limits)
            print(f"placement_rate_{strategy}_{workers}w {value:.0f} decisions/s", flush=True)
    for workers in SIZES:
        value = rate("least_loaded", workers, labels=True, **limits)
        print(f"placement_rate_labels_least_loaded_{workers}w {value:.0f} decisions/s", flush=True)


if __name__ == "__main__":
    main()
