"""The oracle: placement that knows each task's true run time on each worker.

A yardstick for the simulator, never a production strategy: it sees what no broker
can (the run time a task will take on each worker, and when each running task will
end) and places each task where it will finish first, holding it back for a busy
worker when that finishes it sooner. It is greedy, one task at a time, so it is "the
best a placement that looks one task ahead can do", which is what predictive aims at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar

from broker.core.arms import Arm, ArmStats
from broker.core.strategies import Strategy, StrategyEnv, WorkerSlot
from broker.core.strategies.predictive import Predictive
from broker.domain import Task, WorkerId

ORACLE = "oracle"

# (task, worker) -> its true run time there; worker -> seconds until each task it runs ends.
RunTime = Callable[[Task, WorkerId], float]
RunningEnds = Callable[[WorkerId], list[float]]


class Oracle(Predictive):
    """Earliest true completion, over every ready worker and every busy one."""

    name: ClassVar[str] = ORACLE
    hold_margin: ClassVar[float] = 1.0

    def __init__(self, env: StrategyEnv, run_time: RunTime, running_ends: RunningEnds) -> None:
        super().__init__(env)
        self._run_time = run_time
        self._running_ends_of = running_ends

    def _run_s(self, task: Task, worker: WorkerSlot) -> float:
        return self._run_time(task, worker.worker_id)

    def _running_ends(self, task_type: str, worker: WorkerSlot, now: float) -> list[float]:
        return self._running_ends_of(worker.worker_id)

    def _candidates(self, task: Task) -> Iterator[tuple[WorkerSlot, float, int]]:
        for worker, version, *_ in self._members.values():
            yield worker, self._run_s(task, worker), version


class OracleArm(Arm):
    """A pool arm whose indexes are oracles."""

    def __init__(self, env: StrategyEnv, run_time: RunTime, running_ends: RunningEnds) -> None:
        self.strategy = ORACLE
        self.env = env
        self.indexes: dict[str, Strategy] = {}
        self.stats = ArmStats(ORACLE)
        self._run_time = run_time
        self._running_ends = running_ends

    def make_index(self) -> Strategy:
        return Oracle(self.env, self._run_time, self._running_ends)
