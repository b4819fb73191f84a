"""Predictive placement: each task where it is expected to finish first, busy workers too.

What a task costs on a worker is its expected run time there, learned per worker
(`Predictive.estimate`): the worker's own mean, shrunk towards a prior with a weight
that grows with the spread of its samples, so three lucky runs do not make a worker
fast. The prior is what the pool has learned for the worker's label set, else for the
task type, else the pool's prior (`RuntimeModel.predict`), which is also all a new
worker starts with.

A ready worker (a free slot) starts the task now. A busy one starts it when a slot is
expected to free: the tasks it holds each end at their start plus their expected run
time (never sooner than a fifth of it from now, as a task running long may run longer),
and the tasks already held back for it take the slots in turn. When a busy worker is
expected to finish the task sooner than the best ready one, the task is held back for
it: `pick` returns None and `held` says for whom and for how long, which becomes the
task's placement note. The wait is bounded: a task is never held longer than the best
ready worker was expected to take to run it, from the moment it was first held, so a
worker slower than predicted cannot starve it.

Costs: a pick peeks the heap of each label set whose workers changed since the last
pick (most often one), reads the best two of the sets' tops from a list kept in order,
and looks at no more than `BUSY_SCAN` busy workers, those predicted faster than the
best ready one.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, insort
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush, heapreplace
from itertools import islice
from typing import ClassVar

from broker.core.strategies._base import Outcome, StrategyEnv, WorkerSlot, default_env
from broker.domain import Task, TaskId, WorkerId
from broker.stats import RunStats

PRIOR_WEIGHT = 2.0  # samples the prior counts as, for a worker whose runs do not vary
BUSY_SCAN = 256  # busy workers looked at per pick, at most
RUNNING_LONG_SHARE = 0.2  # a task past its expected run time still needs this share of it
PRUNE_HOLDS_AT = 1024  # holds kept before those that ran out are dropped
PRUNE_HOLDS_EVERY_S = 10.0  # ... or this often
SHOWN_KEPT = 4096  # run times whose text the notes keep
HOLD_MARGIN = 0.95  # hold only for a finish at least 5 % sooner than the best ready one


@dataclass(slots=True)
class _WorkerClass:
    """The ready workers of one label set, by expected run time, least first."""

    name: str
    labels: Mapping[str, str]
    size: int = 0
    heap: list[tuple[float, int, int, WorkerId]] = field(default_factory=list)
    limit: int = 64  # entries in the heap before it is re-keyed: 4 x size + 64


@dataclass(slots=True)
class _Hold:
    """A task held back for a busy worker."""

    worker_id: WorkerId
    run_s: float  # its expected run time there
    since: float  # when it was first held
    until: float  # when it stops waiting for a busy worker
    note: str


class Predictive:
    """The worker, ready or busy, on which the task is expected to finish first."""

    name: ClassVar[str] = "predictive"
    update_on_take: ClassVar[bool] = False  # a worker whose key rose is re-keyed at the top
    hold_margin: ClassVar[float] = HOLD_MARGIN

    def __init__(self, env: StrategyEnv | None = None) -> None:
        self._env = env or default_env()
        self._clock = self._env.clock
        self._runtimes = self._env.runtimes
        # The ready workers, each with the version of its live heap entry, its label
        # set, and that entry's expected run time and tasks held. A take raises a
        # worker's key without a new entry: the entry is re-keyed once it reaches the
        # top of its set's heap and holds fewer tasks than the worker.
        self._members: dict[WorkerId, tuple[WorkerSlot, int, _WorkerClass, float, int]] = {}
        self._classes: dict[str, _WorkerClass] = {}
        self._tick = itertools.count()
        self._busy: dict[WorkerId, WorkerSlot] = {}  # connected, every slot taken
        self._learned: dict[WorkerId, RunStats] = {}  # this type's run times per worker
        # The tasks this instance placed: on which worker, expected run time and start.
        self._placed: dict[TaskId, WorkerId] = {}
        self._on: dict[WorkerId, dict[TaskId, tuple[float, float]]] = {}  # may be empty
        self._holds: dict[TaskId, _Hold] = {}
        self._prune_at = PRUNE_HOLDS_AT
        self._prune_after = 0.0
        self._held_for: dict[WorkerId, dict[TaskId, _Hold]] = {}
        self.note = ""  # why the last pick went where it did
        self._priors: dict[str, float] = {}  # by label set, for one model version and type
        self._model_version = -1  # ... this one
        self._model_type = ""  # ... and this one
        # Each worker's estimate, for the same model version and type as the priors,
        # until it learns more.
        self._estimates: dict[WorkerId, float] = {}
        self._task_type = ""  # of the tasks it places (one index per type)
        # The top of each label set: (expected run time, tasks held, version, worker),
        # estimated for one model version and task type (`_tops_version`, `_tops_type`)
        # and kept until a worker of the set changes (`_stale_tops`), so a pick
        # re-estimates only those that changed. `_ranked` holds the same tops, least
        # first, so that a pick finds the best two without weighing them all (None
        # until the next pick sorts them, after they were all re-estimated).
        self._tops: dict[str, tuple[float, int, int, WorkerSlot]] = {}
        self._ranked: list[tuple[float, int, int, WorkerSlot]] | None = None
        self._tops_version = -1
        self._tops_type = ""
        self._stale_tops: set[str] = set()
        # "{run_s:.2f}" for the notes, by run time (zero aside: -0.0 == 0.0).
        self._shown: dict[float, str] = {}
        # A subclass that weighs other candidates (the simulator's oracle) goes through
        # them one by one; one that knows run times otherwise is asked for each.
        self._by_tops = type(self)._candidates is Predictive._candidates
        # Where `estimate` (and `_run_s`, which asks it) is this class's own, a cached
        # estimate is read without the call.
        self._cached = type(self).estimate is Predictive.estimate
        self._estimated = self._cached and type(self)._run_s is Predictive._run_s

    # The index of ready workers ------------------------------------------------

    def add(self, worker: WorkerSlot) -> None:
        worker_id = worker.worker_id
        self._busy.pop(worker_id, None)
        if worker_id not in self._members:
            name = worker.class_name
            bucket = self._classes.get(name)
            if bucket is None:
                bucket = self._classes[name] = _WorkerClass(name, worker.labels)
            bucket.size += 1
            bucket.limit += 4
            self._members[worker_id] = (worker, -1, bucket, 0.0, 0)
        self._forget_released(worker)
        self._push(worker)

    def remove(self, worker: WorkerSlot) -> None:
        member = self._members.pop(worker.worker_id, None)
        if member is not None:
            bucket = member[2]
            bucket.size -= 1
            bucket.limit -= 4
            if not bucket.size:
                del self._classes[bucket.name]
                self._drop_top(bucket.name)
                self._stale_tops.discard(bucket.name)
            else:
                self._stale_tops.add(bucket.name)
        if worker.free <= 0 and not worker.draining and not worker.paused:
            self._busy[worker.worker_id] = worker  # full: it may be worth waiting for
        else:
            self._busy.pop(worker.worker_id, None)

    def disconnect(self, worker: WorkerSlot) -> None:
        """The worker left the pool: forget what was learned and held for it."""
        self.remove(worker)
        worker_id = worker.worker_id
        self._busy.pop(worker_id, None)
        self._learned.pop(worker_id, None)
        self._estimates.pop(worker_id, None)
        on = self._on.get(worker_id)
        if on is not None and not on:  # kept empty by `update`; tasks still counted stay
            del self._on[worker_id]
        for task_id in list(self._held_for.pop(worker_id, {})):
            self._holds.pop(task_id, None)

    def update(self, worker: WorkerSlot) -> None:
        # Once per placement (the release; the scheduler does not report the take):
        # what `_forget_released` and `_push` do, without their calls.
        worker_id = worker.worker_id
        members = self._members
        member = members.get(worker_id)
        if member is None:
            return
        held = worker.held
        on = self._on.get(worker_id)
        if on and len(on) > len(held):
            if held:
                self._forget_released(worker)
            else:  # released all it held (the usual release): forget each
                placed = self._placed
                for task_id in on:
                    placed.pop(task_id, None)
                on.clear()  # kept for its next task
        count = len(held)
        if count > member[4]:
            # A take: its entry is low enough (re-keyed if it reaches the top), and so
            # is its set's top (`pick` checks the best two); an estimate learned since
            # is taken up at its next release.
            return
        task_type = self._task_type
        run_s = None
        if (
            self._cached
            and self._runtimes.version == self._model_version
            and task_type == self._model_type
        ):
            run_s = self._estimates.get(worker_id)
        if run_s is None:
            run_s = self.estimate(task_type, worker)
        if run_s > member[3] or (run_s == member[3] and count >= member[4]):
            return  # its entry, and its set's top if it is that, still hold
        bucket = member[2]
        self._stale_tops.add(bucket.name)
        version = next(self._tick)
        members[worker_id] = (worker, version, bucket, run_s, count)
        heap = bucket.heap
        heappush(heap, (run_s, count, version, worker_id))
        if len(heap) > bucket.limit:
            self._rekey(bucket)

    def observe(self, outcome: Outcome) -> None:
        worker_id = self._forget(outcome.task.id)
        worker = outcome.worker
        self._task_type = outcome.task.spec.task_type
        if outcome.success:
            learned = self._learned.get(worker.worker_id)
            if learned is None:
                learned = self._learned[worker.worker_id] = RunStats()
            learned.add(outcome.run_s)
            self._estimates.pop(worker.worker_id, None)
        if worker.worker_id in self._members:
            self._push(self._members[worker.worker_id][0])
        elif worker_id is not None and worker_id in self._members:
            self._push(self._members[worker_id][0])

    def __len__(self) -> int:
        return len(self._members)

    # What is expected -----------------------------------------------------------

    def estimate(self, task_type: str, worker: WorkerSlot) -> float:
        """Expected run time of a task of this type on the worker: its own mean shrunk
        towards the prior, by PRIOR_WEIGHT x (1 + squared coefficient of variation)."""
        runtimes = self._runtimes
        if runtimes.version != self._model_version or task_type != self._model_type:
            # Start afresh for this model version and type.
            self._priors.clear()
            self._estimates.clear()
            self._model_version = runtimes.version
            self._model_type = task_type
        else:
            estimate = self._estimates.get(worker.worker_id)
            if estimate is not None:
                return estimate
        prior = self._prior(task_type, worker)
        learned = self._learned.get(worker.worker_id)
        if learned is None or not learned.count:
            estimate = prior
        else:
            mean = learned.mean_s
            spread = learned.variance / (mean * mean) if mean > 0 else 0.0
            weight = PRIOR_WEIGHT * (1.0 + spread)
            estimate = (learned.count * mean + weight * prior) / (learned.count + weight)
        self._estimates[worker.worker_id] = estimate
        return estimate

    def _estimates_made(self, task_type: str, readable: bool) -> dict[WorkerId, float]:
        """The estimates made for the current model version and this task type, to read
        instead of calling `estimate` again (empty if `readable` is False, or if they were
        made for another version or type: then each is made afresh)."""
        if (
            readable
            and self._runtimes.version == self._model_version
            and task_type == self._model_type
        ):
            return self._estimates
        return {}

    def _prior(self, task_type: str, worker: WorkerSlot) -> float:
        """What the pool predicts for the worker's label set, cached until it learns
        (`estimate` keeps the cache to one model version and task type)."""
        name = worker.class_name
        prior = self._priors.get(name)
        if prior is None:
            prior = self._priors[name] = self._runtimes.predict_class(task_type, name)
        return prior

    def frees_in(self, task_type: str, worker: WorkerSlot) -> float:
        """Seconds until the worker is expected to start one more task of this type,
        after the tasks it holds and those held back for it."""
        now = self._clock.now()
        capacity = worker.capacity if worker.capacity < worker.limit else worker.limit
        if capacity <= 0:
            return float("inf")
        ends = self._running_ends(task_type, worker, now)
        ends.sort()
        slots = [0.0] * max(0, capacity - len(ends)) + ends[:capacity]
        heapify(slots)
        for hold in self._held_for.get(worker.worker_id, {}).values():
            if hold.until > now:  # not one that ran out (or whose task went away)
                heapreplace(slots, slots[0] + hold.run_s)
        return slots[0]

    def _running_ends(self, task_type: str, worker: WorkerSlot, now: float) -> list[float]:
        """Seconds until each task the worker holds is expected to end."""
        own = self._on.get(worker.worker_id, {})
        ends = [max(start + run - now, RUNNING_LONG_SHARE * run) for run, start in own.values()]
        unknown = len(worker.held) - len(ends)
        if unknown > 0:  # placed by someone else: assume a task of this type, just started
            ends += [self.estimate(task_type, worker)] * unknown
        return ends

    def _run_s(self, task: Task, worker: WorkerSlot) -> float:
        """The task's expected run time on the worker."""
        return self.estimate(task.spec.task_type, worker)

    def expected_finish(self, task_type: str, worker: WorkerSlot) -> float:
        """When a task of this type given to the worker now is expected to end."""
        return (
            self._clock.now() + self.frees_in(task_type, worker) + self.estimate(task_type, worker)
        )

    def held(self, task: Task) -> tuple[str, float] | None:
        """Why a task the last pick returned None for waits, and until when."""
        hold = self._holds.get(task.id)
        return None if hold is None else (hold.note, hold.until)

    # Placing --------------------------------------------------------------------

    def pick(self, task: Task) -> WorkerSlot | None:
        task_type = self._task_type = task.spec.task_type
        if not self._by_tops:
            best, runner_up = self._best_of_all(task)
            if best is None:
                return None
            return self._place(task, best[0], best[3], runner_up, self._clock.now())
        # `_best_of_all` over the label sets' tops: O(label sets) in C, plus an estimate
        # for each set that changed since the last pick.
        if (
            self._stale_tops
            or self._runtimes.version != self._tops_version
            or task_type != self._tops_type
        ):
            self._refresh_tops(task)
        ranked = self._ranked
        if ranked is None:
            ranked = self._ranked = sorted(self._tops.values())
        while self._took_since(ranked):
            self._refresh_tops(task)
            ranked = self._ranked
            if ranked is None:
                ranked = self._ranked = sorted(self._tops.values())
        if len(ranked) < 2:
            if not ranked:
                return None
            best = ranked[0]
            return self._place(task, best[0], best[3], None, self._clock.now())
        best, second = ranked[0], ranked[1]
        # The runner-up: the least expected run time among the others, the first of
        # equals in the sets' order.
        if len(ranked) > 2 and ranked[2][0] == second[0]:
            run_s = second[0]
            for top in self._tops.values():
                if top[0] == run_s and top is not best:
                    second = top
                    break
        finish_s, worker = best[0], best[3]
        now = self._clock.now()
        if self._holds or self._busy or task.id in self._placed:
            return self._place(task, finish_s, worker, (second[0], second[3]), now)
        # Nothing held, no busy worker to weigh, placed for the first time: `_place`,
        # without what does not apply.
        worker_id = worker.worker_id
        self._placed[task.id] = worker_id
        on = self._on.get(worker_id)
        if on is None:
            self._on[worker_id] = {task.id: (finish_s, now)}
        else:
            on[task.id] = (finish_s, now)
        # Behind its equals: `_push`, with the estimate at hand.
        bucket = self._members[worker_id][2]
        version = next(self._tick)
        count = len(worker.held)
        self._members[worker_id] = (worker, version, bucket, finish_s, count)
        self._stale_tops.add(bucket.name)
        heap = bucket.heap
        heappush(heap, (finish_s, count, version, worker_id))
        if len(heap) > bucket.limit:
            self._rekey(bucket)
        shown = self._shown
        finish = shown.get(finish_s) or self._show(finish_s)
        other = shown.get(second[0]) or self._show(second[0])
        self.note = (
            f"{self.name}: expected finish {finish} s on {worker_id}"
            f" vs {other} s on {second[3].worker_id}"
        )
        return worker

    def _show(self, run_s: float) -> str:
        """The run time as the notes show it, kept for the next note."""
        shown = self._shown
        if len(shown) >= SHOWN_KEPT:
            shown.clear()
        text = f"{run_s:.2f}"
        if run_s:  # not 0.0 or -0.0, which are one key and two texts
            shown[run_s] = text
        return text

    def _place(
        self,
        task: Task,
        finish_s: float,
        worker: WorkerSlot,
        runner_up: tuple[float, WorkerSlot] | None,
        now: float,
    ) -> WorkerSlot | None:
        """Give the task to the best ready worker, unless a busy one is expected to
        finish it sooner (None: held back for it)."""
        hold = self._release_hold(task.id) if self._holds else None
        if self._busy and (hold is None or now < hold.until):
            waited = self._hold_for_busy(task, finish_s, worker, hold, now)
            if waited is not None:
                return None
        self._placing(task, worker, finish_s, now)
        if runner_up is None:
            runner_up = self._next_in_class(task, worker)
        shown = self._shown
        finish = shown.get(finish_s) or self._show(finish_s)
        if runner_up is None:
            note = f"{self.name}: expected finish {finish} s on {worker.worker_id}"
        else:
            other = shown.get(runner_up[0]) or self._show(runner_up[0])
            note = (
                f"{self.name}: expected finish {finish} s on {worker.worker_id}"
                f" vs {other} s on {runner_up[1].worker_id}"
            )
        if hold is not None:
            note += f"; waited {now - hold.since:.2f} s for it"
        self.note = note
        return worker

    def rank(self, task: Task, allowed: Sequence[WorkerSlot]) -> WorkerSlot:
        self._task_type = task.spec.task_type
        scored = sorted(
            (self._run_s(task, w), len(w.held), self._version(w), i) for i, w in enumerate(allowed)
        )
        worker = allowed[scored[0][3]]
        self._release_hold(task.id)
        self._placing(task, worker, scored[0][0], self._clock.now())
        note = f"{self.name}: expected finish {scored[0][0]:.2f} s on {worker.worker_id}"
        if len(scored) > 1:
            note += f" vs {scored[1][0]:.2f} s on {allowed[scored[1][3]].worker_id}"
        self.note = note
        return worker

    # Internals -------------------------------------------------------------------

    def _hold_for_busy(
        self,
        task: Task,
        ready_finish_s: float,
        ready: WorkerSlot,
        hold: _Hold | None,
        now: float,
    ) -> _Hold | None:
        """Hold the task for the busy worker expected to finish it soonest, if that is
        sooner than the best ready worker; the hold, or None to place it now."""
        task_type = task.spec.task_type
        best: tuple[float, float, float, WorkerSlot] | None = None
        limit_s = ready_finish_s * self.hold_margin
        stale = []
        estimates = self._estimates_made(task_type, self._estimated)
        for worker_id, worker in islice(self._busy.items(), BUSY_SCAN):
            if worker.draining or worker.paused or worker.free > 0:
                stale.append(worker_id)  # it would be in the index if it were ready
                continue
            run_s = estimates.get(worker_id)
            if run_s is None:
                run_s = self._run_s(task, worker)
            if run_s >= limit_s:
                continue
            starts_in = self.frees_in(task_type, worker)
            finish_s = starts_in + run_s
            if finish_s < limit_s and (best is None or finish_s < best[0]):
                best = (finish_s, starts_in, run_s, worker)
        for worker_id in stale:
            del self._busy[worker_id]
        if best is None:
            return None
        finish_s, starts_in, run_s, worker = best
        since = hold.since if hold is not None else now
        until = hold.until if hold is not None else now + ready_finish_s
        note = (
            f"waiting: {self.name} holds it for busy worker {worker.worker_id}: expected "
            f"finish {finish_s:.2f} s there (a slot frees in {starts_in:.2f} s) vs "
            f"{ready_finish_s:.2f} s on {ready.worker_id}; waits up to {until - now:.1f} s more"
        )
        held = self._holds[task.id] = _Hold(worker.worker_id, run_s, since, until, note)
        self._held_for.setdefault(worker.worker_id, {})[task.id] = held
        return held

    def _release_hold(self, task_id: TaskId) -> _Hold | None:
        """Stop holding the task for a worker (it is being placed, or looked at again)."""
        hold = self._drop_hold(task_id)
        if self._holds and (
            len(self._holds) > self._prune_at or self._clock.now() >= self._prune_after
        ):  # drop the holds of tasks that went elsewhere (cancelled) and ran out
            now = self._clock.now()
            for stale in [t for t, h in self._holds.items() if h.until < now]:
                self._drop_hold(stale)
            self._prune_at = max(PRUNE_HOLDS_AT, 2 * len(self._holds))
            self._prune_after = now + PRUNE_HOLDS_EVERY_S
        return hold

    def _drop_hold(self, task_id: TaskId) -> _Hold | None:
        hold = self._holds.pop(task_id, None)
        if hold is not None:
            waiting = self._held_for.get(hold.worker_id)
            if waiting is not None:
                waiting.pop(task_id, None)
                if not waiting:
                    del self._held_for[hold.worker_id]
        return hold

    def _best_of_all(
        self, task: Task
    ) -> tuple[tuple[float, int, int, WorkerSlot] | None, tuple[float, WorkerSlot] | None]:
        """The best candidate, by (expected run time, tasks held, version), and the
        runner-up's expected run time and worker, going through every candidate."""
        best: tuple[float, int, int, WorkerSlot] | None = None
        runner_up: tuple[float, WorkerSlot] | None = None
        for worker, run_s, version in self._candidates(task):
            key = (run_s, len(worker.held), version)
            if best is None or key < best[:3]:
                if best is not None:
                    runner_up = (best[0], best[3])
                best = (*key, worker)
            elif runner_up is None or key[0] < runner_up[0]:
                runner_up = (key[0], worker)
        return best, runner_up

    def _refresh_tops(self, task: Task) -> None:
        """Re-estimate the tops of the label sets that changed (all of them once the
        model learns or the task type differs)."""
        stale = self._stale_tops
        task_type = task.spec.task_type
        version = self._runtimes.version
        if version != self._tops_version or task_type != self._tops_type:
            self._tops_version = version
            self._tops_type = task_type
            self._tops.clear()
            self._ranked = None
            stale.update(self._classes)
        if not stale:
            return
        tops = self._tops
        classes = self._classes
        members = self._members
        ranked = self._ranked
        estimates = self._estimates_made(task_type, self._estimated)
        for name in stale:
            bucket = classes.get(name)
            if bucket is None:
                self._drop_top(name)
                continue
            heap = bucket.heap  # its top, past the entries left behind
            while heap:
                entry = heap[0]
                member = members.get(entry[3])
                if member is None or member[1] != entry[2]:
                    heappop(heap)
                elif len(member[0].held) > entry[1]:  # took a task since it was pushed
                    heapreplace(heap, self._entry(member[0], bucket))
                else:
                    break
            else:
                self._drop_top(name)
                continue
            worker = member[0]
            run_s = estimates.get(entry[3])
            if run_s is None:
                run_s = self._run_s(task, worker)
            top = (run_s, len(worker.held), member[1], worker)
            if ranked is not None:
                before = tops.get(name)
                if before is not None:  # most often the best, just placed on
                    del ranked[0 if ranked[0] is before else bisect_left(ranked, before)]
                insort(ranked, top)
            tops[name] = top
        stale.clear()

    def _took_since(self, ranked: list[tuple[float, int, int, WorkerSlot]]) -> bool:
        """Whether the worker of one of the best two label set tops took a task since it
        was made top (`update` is not told of takes); its set is marked for a new top
        if so."""
        if not ranked or (
            len(ranked[0][3].held) == ranked[0][1]
            and (len(ranked) < 2 or len(ranked[1][3].held) == ranked[1][1])
        ):
            return False
        stale = False
        for top in ranked[:2]:
            worker = top[3]
            member = self._members.get(worker.worker_id)
            if member is not None and len(worker.held) != top[1]:
                self._stale_tops.add(member[2].name)
                stale = True
        return stale

    def _drop_top(self, name: str) -> None:
        """The label set has no ready worker left."""
        before = self._tops.pop(name, None)
        if before is not None and self._ranked is not None:
            del self._ranked[bisect_left(self._ranked, before)]

    def _candidates(self, task: Task) -> Iterator[tuple[WorkerSlot, float, int]]:
        """The ready workers worth weighing, the top of each label set: each with the
        task's expected run time there and its version. A top's estimate is kept until
        it or the model changes."""
        self._refresh_tops(task)
        for run_s, _, version, worker in self._tops.values():
            yield worker, run_s, version

    def _next_in_class(self, task: Task, worker: WorkerSlot) -> tuple[float, WorkerSlot] | None:
        """For the note: a worker of the same label set near the top of its heap."""
        member = self._members.get(worker.worker_id)
        if member is None:
            return None
        bucket = member[2]
        best: tuple[float, WorkerSlot] | None = None
        for _, _, version, worker_id in bucket.heap[1:3]:
            other = self._members.get(worker_id)
            if other is not None and other[1] == version and worker_id != worker.worker_id:
                run_s = self._run_s(task, other[0])
                if best is None or run_s < best[0]:
                    best = (run_s, other[0])
        return best

    def _version(self, worker: WorkerSlot) -> int:
        member = self._members.get(worker.worker_id)
        return member[1] if member is not None else 0

    def _push(self, worker: WorkerSlot) -> None:
        """(Re-)key the worker in its label set's heap, by its expected run time and
        load now, and its new version; `update` does the same inline."""
        worker_id = worker.worker_id
        bucket = self._members[worker_id][2]
        self._stale_tops.add(bucket.name)
        heap = bucket.heap
        heappush(heap, self._entry(worker, bucket))
        if len(heap) > bucket.limit:
            self._rekey(bucket)

    def _entry(self, worker: WorkerSlot, bucket: _WorkerClass) -> tuple[float, int, int, WorkerId]:
        """A new heap entry for the member, keyed by its expected run time and load now,
        with a new version."""
        version = next(self._tick)
        run_s = self.estimate(self._task_type, worker)
        count = len(worker.held)
        self._members[worker.worker_id] = (worker, version, bucket, run_s, count)
        return (run_s, count, version, worker.worker_id)

    def _rekey(self, bucket: _WorkerClass) -> None:
        """Each member of the set has one current entry in its heap: keep those alone,
        re-keyed. Expected run times move as the model learns; a set's top is estimated
        afresh on each pick, the order below it is that of the last push (or re-key)."""
        members = self._members
        task_type = self._task_type
        current = [
            member
            for _, _, version, member_id in bucket.heap
            if (member := members.get(member_id)) is not None and member[1] == version
        ]
        estimate = self.estimate
        estimates = self._estimates_made(task_type, self._cached)
        heap = []
        for worker, version, *_ in current:
            worker_id = worker.worker_id
            run_s = estimates.get(worker_id) or estimate(task_type, worker)
            count = len(worker.held)
            members[worker_id] = (worker, version, bucket, run_s, count)
            heap.append((run_s, count, version, worker_id))
        heapify(heap)
        bucket.heap = heap

    def _placing(self, task: Task, worker: WorkerSlot, run_s: float, now: float) -> None:
        """Count the task's expected run time against the worker it is going to."""
        task_id = task.id
        if task_id in self._placed:  # placed before, and requeued without an outcome
            before = self._forget(task_id)
            if before is not None and before in self._members:
                self._push(self._members[before][0])
        worker_id = worker.worker_id
        self._placed[task_id] = worker_id
        on = self._on.get(worker_id)
        if on is None:
            self._on[worker_id] = {task_id: (run_s, now)}
        else:
            on[task_id] = (run_s, now)
        if worker_id in self._members:
            self._push(worker)  # behind its equals

    def _forget(self, task_id: TaskId) -> WorkerId | None:
        """Stop counting a task; the worker it was counted against, if any."""
        worker_id = self._placed.pop(task_id, None)
        if worker_id is None:
            return None
        on = self._on[worker_id]
        del on[task_id]
        if not on:
            del self._on[worker_id]
        return worker_id

    def _forget_released(self, worker: WorkerSlot) -> None:
        """Drop tasks the worker no longer holds though no outcome came (cancelled,
        or a new connection under the same id). Only when they must exist: counting
        more tasks than it holds; O(its tasks) then, O(1) otherwise."""
        worker_id = worker.worker_id
        on = self._on.get(worker_id)
        held = worker.held
        if on and len(on) > len(held):
            placed = self._placed  # each task counted against the worker is placed on it
            if held:
                for task_id in [t for t in on if t not in held]:
                    del on[task_id]
                    placed.pop(task_id, None)
                if on:
                    return
            else:
                for task_id in on:
                    placed.pop(task_id, None)
            del self._on[worker_id]
