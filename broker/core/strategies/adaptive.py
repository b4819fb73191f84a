"""Adaptive placement: run the strategy that measures best, and switch on evidence.

Every candidate strategy keeps its own index of the ready workers and learns from
every outcome. The active one places most tasks; a share of them (`explore_share`,
a pool setting) goes to the challengers, so there is always fresh evidence about
them: first to any challenger with fewer than `MIN_SAMPLES` in its window, then three
turns in four to the challenger measuring best and one to the others in turn.

Each finished task costs its queue wait plus its run time, and a failure costs
`failure_penalty` times more. Each arm keeps the costs of its last `window` tasks (a
pool setting), so the arms are compared on the same recent traffic of one task type.
Every `window // 10` outcomes the best challenger is tested against the active arm
with Welch's t statistic; it takes over when its mean cost is at least `min_gain`
lower and the statistic clears the one-sided `confidence` level, shared among the
challengers (0.99 over three: t >= 2.71), at every check until the challenger has
`FRESH_SAMPLES` more costs than when it first did, so the lead is confirmed on new
evidence. Once switched, the old arm is a challenger like any other and must clear
the same bar to come back, so stationary traffic settles. Every switch is logged
and kept in `switches`, which `taskbroker stats` shows.

Every change to a ready worker goes to every arm whose index follows load; a take
goes to none when no arm needs to hear of it (`update_on_take`), as with the default
arms, so a placement costs the active arm's pick and each arm's look at the release.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import ClassVar

from broker.core.strategies._base import Outcome, Strategy, StrategyEnv, WorkerSlot, default_env
from broker.domain import Task, TaskId

log = logging.getLogger("taskbroker.adaptive")

CANDIDATES = ("least_loaded", "weighted_response_time", "predictive", "round_robin")
MIN_SAMPLES = 20  # an arm's window holds at least this many costs before it is compared
FRESH_SAMPLES = 10  # a lead is confirmed on at least this many costs newer than its start


def _forget_oldest(kept: dict[TaskId, str]) -> None:
    """Drop the older half of the tasks kept, longest kept first."""
    for task_id in list(itertools.islice(kept, len(kept) // 2)):
        del kept[task_id]


@dataclass(slots=True)
class _Window:
    """An arm's last costs, with their running sum and sum of squares."""

    size: int
    seen: int = 0  # every cost ever added
    costs: deque[float] = field(default_factory=deque)
    total: float = 0.0
    squares: float = 0.0

    def add(self, cost: float) -> None:
        self.seen += 1
        self.costs.append(cost)
        self.total += cost
        self.squares += cost * cost
        if len(self.costs) > self.size:
            old = self.costs.popleft()
            self.total -= old
            self.squares -= old * old

    @property
    def count(self) -> int:
        return len(self.costs)

    @property
    def mean(self) -> float:
        return self.total / len(self.costs) if self.costs else 0.0

    @property
    def variance(self) -> float:
        n = len(self.costs)
        if n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total * self.total / n) / (n - 1))


def welch_t(active: _Window, challenger: _Window) -> float:
    """How many standard errors the challenger's mean cost lies below the active's."""
    error = math.sqrt(
        active.variance / max(1, active.count) + challenger.variance / max(1, challenger.count)
    )
    gap = active.mean - challenger.mean
    if error == 0.0:
        return math.inf if gap > 0 else 0.0
    return gap / error


class Adaptive:
    """Picks with the strategy that has measured best lately, switching on evidence."""

    name: ClassVar[str] = "adaptive"
    kept: int = 100_000  # tasks placed (or held back) whose arm is kept, at most

    def __init__(
        self,
        env: StrategyEnv | None = None,
        *,
        candidates: Sequence[str] = CANDIDATES,
        window: int | None = None,
        explore_share: float | None = None,
        confidence: float = 0.99,
        min_gain: float = 0.1,
        failure_penalty: float = 2.0,
    ) -> None:
        from broker.core.strategies import STRATEGIES  # the registry imports this module

        env = env or default_env()
        names = [c for c in candidates if c in STRATEGIES and c != self.name]
        if not names:
            raise ValueError("adaptive needs at least one other strategy")
        self._arms: dict[str, Strategy] = {n: STRATEGIES[n](env) for n in names}
        # The arms whose index follows the workers' load (round robin's does not).
        arms = [a for a in self._arms.values() if not getattr(a, "ignores_load", False)]
        self._updates = [a.update for a in arms]
        self.update_on_take = any(getattr(a, "update_on_take", True) for a in arms)
        self._challengers: list[str] = []
        self._prefixes: dict[str, str] = {}  # the start of each arm's notes
        self.active = names[0]
        self.window = window if window is not None else env.adaptive_window
        self.explore_share = explore_share if explore_share is not None else env.adaptive_explore
        # The best of several challengers is tested: Bonferroni over them keeps the
        # chance of a switch between equal arms at 1 - confidence per check.
        self._threshold = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / max(1, len(names) - 1))
        self._confidence = confidence
        self._min_gain = min_gain
        self._failure_penalty = failure_penalty
        self._windows = {n: _Window(self.window) for n in names}
        # The arm that placed each task (until its outcome), and the tasks an arm held
        # back (until placed): at most `kept` of each, the oldest forgotten first (a
        # task cancelled where it ran, or while held, has no outcome).
        self._placed_by: dict[TaskId, str] = {}
        self._holding: dict[TaskId, str] = {}
        self._credit = 0.0  # exploration owed, in tasks
        self._explored = 0
        self._leader: str | None = None  # the challenger ahead at the last check
        self._lead_from = 0  # ... since its window had seen this many costs
        self.outcomes = 0  # of tasks its arms placed
        self.switches: deque[str] = deque(maxlen=20)
        self.switched_at: list[int] = []  # `outcomes` at each switch
        self.note = ""

    @property
    def active(self) -> str:
        """The arm that places all but the explored share of the tasks."""
        return self._active

    @active.setter
    def active(self, name: str) -> None:
        self._active = name
        self._challengers = [n for n in self._arms if n != name]
        self._prefixes = {
            n: f"{self.name} ({'' if n == name else 'exploring '}{n}): " for n in self._arms
        }

    # The index of ready workers, kept by every arm ------------------------------

    def add(self, worker: WorkerSlot) -> None:
        for arm in self._arms.values():
            arm.add(worker)

    def remove(self, worker: WorkerSlot) -> None:
        for arm in self._arms.values():
            arm.remove(worker)

    def update(self, worker: WorkerSlot) -> None:
        for update in self._updates:
            update(worker)

    def disconnect(self, worker: WorkerSlot) -> None:
        for arm in self._arms.values():
            forget = getattr(arm, "disconnect", None)
            if forget is not None:
                forget(worker)

    def __len__(self) -> int:
        return len(self._arms[self._active])

    # Placing -------------------------------------------------------------------

    def pick(self, task: Task) -> WorkerSlot | None:
        name = self._holding.pop(task.id, None) if self._holding else None
        if name is None:
            # `_arm_for_next_task`'s usual answer, without its call.
            credit = self._credit + self.explore_share
            if credit < 1.0 and self._challengers:
                self._credit = credit
                name = self._active
            else:
                name = self._arm_for_next_task()
        arm = self._arms[name]
        worker = arm.pick(task)
        if worker is None:
            if len(arm) and getattr(arm, "held", None) is not None:
                self._holding[task.id] = name
                if len(self._holding) > self.kept:
                    _forget_oldest(self._holding)
            return None
        self._placed(task, name, arm)
        return worker

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        name = self._holding.pop(task.id, None) if self._holding else None
        if name is None:
            name = self._arm_for_next_task()
        arm = self._arms[name]
        worker = arm.rank(task, allowed)
        self._placed(task, name, arm)
        return worker

    def held(self, task: Task) -> tuple[str, float] | None:
        """Why the arm that held the task back waits, and until when."""
        name = self._holding.get(task.id)
        held = getattr(self._arms[name], "held", None) if name is not None else None
        return held(task) if held is not None else None

    def _placed(self, task: Task, name: str, arm: Strategy) -> None:
        placed_by = self._placed_by
        placed_by[task.id] = name
        if len(placed_by) > self.kept:
            _forget_oldest(placed_by)
        self.note = self._prefixes[name] + (getattr(arm, "note", "") or name)

    def _arm_for_next_task(self) -> str:
        challengers = self._challengers
        if not challengers:
            return self._active
        self._credit += self.explore_share
        if self._credit < 1.0:
            return self._active
        self._credit -= 1.0
        self._explored += 1
        windows = self._windows
        short = [n for n in challengers if windows[n].count < MIN_SAMPLES]
        if short:
            return min(short, key=lambda n: windows[n].count)
        if self._explored % 4:
            return min(challengers, key=lambda n: windows[n].mean)
        return challengers[(self._explored // 4) % len(challengers)]

    # Learning ------------------------------------------------------------------

    def observe(self, outcome: Outcome) -> None:
        for arm in self._arms.values():
            arm.observe(outcome)
        name = self._placed_by.pop(outcome.task.id, None)
        if name is None:
            return
        cost = outcome.queue_wait_s + outcome.run_s
        if not outcome.success:
            cost *= 1.0 + self._failure_penalty
        self._windows[name].add(cost)
        self.outcomes += 1
        if self.outcomes % max(1, self.window // 10) == 0:
            self._check()

    def _check(self) -> None:
        """Test the best challenger against the active arm; switch on confirmed evidence."""
        windows = self._windows
        active = windows[self.active]
        ready = [n for n in self._arms if n != self.active and windows[n].count >= MIN_SAMPLES]
        if active.count < MIN_SAMPLES or not ready:
            self._leader = None
            return
        best = min(ready, key=lambda n: windows[n].mean)
        challenger = windows[best]
        t = welch_t(active, challenger)
        if challenger.mean > active.mean * (1.0 - self._min_gain) or t < self._threshold:
            self._leader = None
            return
        if best != self._leader:
            self._leader, self._lead_from = best, challenger.seen
        if challenger.seen - self._lead_from < FRESH_SAMPLES:
            return
        note = (
            f"{self.active} -> {best} after {self.outcomes} tasks: cost "
            f"{challenger.mean:.3f} s (n={challenger.count}) vs {active.mean:.3f} s "
            f"(n={active.count}), Welch t {t:.1f} >= {self._threshold:.2f} "
            f"({self._confidence:.0%} one-sided over {len(self._arms) - 1} challengers)"
        )
        log.info("adaptive switch %s", note)
        self.switches.append(note)
        self.switched_at.append(self.outcomes)
        self.active = best
        self._leader = None

    def describe(self) -> str:
        """The active strategy and the last switch, for stats."""
        last = f"; last switch {self.switches[-1]}" if self.switches else ""
        return f"adaptive: active {self.active} ({len(self.switches)} switches{last})"
