"""Adaptive placement: run the strategy that measures best, and switch with hysteresis.

Every candidate strategy keeps its own index of the ready workers and learns from
every outcome. The active one places most tasks; one task in `explore_every`
goes to each challenger in turn, so there is always fresh evidence about it.
Each finished task costs its queue wait plus its run time, and a failure costs
`failure_penalty` times its share more. After every `window` outcomes per arm
the arms are compared: a challenger must beat the active strategy by more than
`hysteresis` in `confirmations` windows in a row to take over. Every switch is
logged and kept in `switches`, which `taskbroker stats` shows.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from broker.core.strategies._base import Outcome, Strategy, StrategyEnv, WorkerSlot, default_env
from broker.domain import Task, TaskId

log = logging.getLogger("taskbroker.adaptive")

CANDIDATES = ("least_loaded", "weighted_response_time", "predictive", "round_robin")


@dataclass(slots=True)
class _Window:
    count: int = 0
    cost_s: float = 0.0
    failures: int = 0

    def score(self, failure_penalty: float) -> float:
        """Mean cost per task, inflated by the failure rate (lower is better)."""
        mean = self.cost_s / self.count
        return mean * (1.0 + failure_penalty * self.failures / self.count)


class Adaptive:
    """Picks with the strategy that has measured best lately."""

    name: ClassVar[str] = "adaptive"

    def __init__(
        self,
        env: StrategyEnv | None = None,
        *,
        candidates: Sequence[str] = CANDIDATES,
        window: int = 50,
        explore_every: int = 10,
        hysteresis: float = 0.15,
        confirmations: int = 2,
        failure_penalty: float = 2.0,
    ) -> None:
        from broker.core.strategies import STRATEGIES  # the registry imports this module

        env = env or default_env()
        names = [c for c in candidates if c in STRATEGIES and c != self.name]
        if not names:
            raise ValueError("adaptive needs at least one other strategy")
        self._arms: dict[str, Strategy] = {n: STRATEGIES[n](env) for n in names}
        self.active = names[0]
        self._window = window
        self._explore_every = explore_every
        self._hysteresis = hysteresis
        self._confirmations = confirmations
        self._failure_penalty = failure_penalty
        self._windows = {n: _Window() for n in names}
        self._placed_by: dict[TaskId, str] = {}
        self._turn = 0
        self._leader: str | None = None  # the challenger ahead in the last comparison
        self._lead = 0  # ... and for how many comparisons in a row
        self.switches: deque[str] = deque(maxlen=20)

    # The index of ready workers, kept by every arm ------------------------------

    def add(self, worker: WorkerSlot) -> None:
        for arm in self._arms.values():
            arm.add(worker)

    def remove(self, worker: WorkerSlot) -> None:
        for arm in self._arms.values():
            arm.remove(worker)

    def update(self, worker: WorkerSlot) -> None:
        for arm in self._arms.values():
            arm.update(worker)

    def __len__(self) -> int:
        return len(self._arms[self.active])

    # Placing -------------------------------------------------------------------

    def pick(self, task: Task) -> WorkerSlot | None:
        name = self._arm_for_next_task()
        worker = self._arms[name].pick(task)
        if worker is not None:
            self._placed_by[task.id] = name
        return worker

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        name = self._arm_for_next_task()
        self._placed_by[task.id] = name
        return self._arms[name].rank(task, allowed)

    def _arm_for_next_task(self) -> str:
        self._turn += 1
        challengers = [n for n in self._arms if n != self.active]
        if challengers and self._turn % self._explore_every == 0:
            return challengers[(self._turn // self._explore_every) % len(challengers)]
        return self.active

    # Learning ------------------------------------------------------------------

    def observe(self, outcome: Outcome) -> None:
        for arm in self._arms.values():
            arm.observe(outcome)
        name = self._placed_by.pop(outcome.task.id, None)
        if name is None:
            return
        window = self._windows[name]
        window.count += 1
        window.cost_s += outcome.queue_wait_s + outcome.run_s
        window.failures += not outcome.success
        if self._windows[self.active].count >= self._window and all(
            w.count >= max(1, self._window // self._explore_every) for w in self._windows.values()
        ):
            self._compare()

    def _compare(self) -> None:
        scores = {n: w.score(self._failure_penalty) for n, w in self._windows.items()}
        self._windows = {n: _Window() for n in self._arms}
        best = min(scores, key=lambda n: scores[n])
        if best == self.active or scores[best] >= scores[self.active] * (1 - self._hysteresis):
            self._leader, self._lead = None, 0
            return
        self._lead = self._lead + 1 if best == self._leader else 1
        self._leader = best
        if self._lead < self._confirmations:
            return
        note = (
            f"{self.active} -> {best}: cost {scores[best]:.3f} s vs "
            f"{scores[self.active]:.3f} s per task over the last window"
        )
        log.info("adaptive switch %s", note)
        self.switches.append(note)
        self.active = best
        self._leader, self._lead = None, 0

    def describe(self) -> str:
        """The active strategy and the last switch, for stats."""
        last = f"; last switch {self.switches[-1]}" if self.switches else ""
        return f"adaptive: active {self.active} ({len(self.switches)} switches{last})"
