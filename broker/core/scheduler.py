"""A pool's placement rounds: which waiting task goes next, to which worker, and the
bookkeeping of what its workers hold.

No I/O and no clock: the engine feeds it tasks and workers and applies the
decisions it returns, so tests and tools can drive it directly.

How a round goes:
Bulkheads come first: while the pool holds its ``max_inflight`` tasks, or a task
type its bulkhead's ``max_inflight``, tasks of it stay queued (never dropped), and
the other types go on. Within the pool, fairness keys (tenants) take turns by
weighted round robin (see broker.core.queue). Each task is placed by one of the
pool's arms (broker.core.arms): its strategy, or the A/B arm for ``ab_percent`` of
the tasks. A task without hints takes the strategy's pick from its index. A task
with a sticky key goes back to the worker that last ran the key, waiting up to
``sticky_timeout_s`` for it. Any other task with hints goes through the placement
filters and scores (broker.core.placement).
A task that no ready worker may take is parked, with the reason, until a worker
of its type changes; one that no connected worker could ever take is marked
unschedulable. Once placed, a task holds its worker's credit, its type's and pool's
bulkhead room and its anti-affinity group until the worker releases it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from broker.core.arms import Arm, ArmStats, make_arms
from broker.core.placement import (
    MAX_LABEL_INDEXES,
    SOFT_ANTI_AFFINITY_PENALTY,
    Decision,
    ReadyWorkers,
    fits,
)
from broker.core.queue import PoolQueue
from broker.core.runtimes import RuntimeModel
from broker.core.strategies import Outcome, Strategy, StrategyEnv, WorkerSlot
from broker.core.strategies._base import UNLIMITED, default_env
from broker.core.validation import MAX_STICKY_KEYS
from broker.domain import PoolConfig, Task, TaskId, WorkerId
from broker.errors import AlreadyExists, NotFound

# In sticky_moves: the key was evicted; the store deletes it.
FORGET_STICKY: WorkerId = ""

# Decision, ArmStats and the placement constants are kept importable from here.
__all__ = [
    "MAX_LABEL_INDEXES",
    "SOFT_ANTI_AFFINITY_PENALTY",
    "ArmStats",
    "Decision",
    "PoolScheduler",
]


class PoolScheduler:
    """A pool's queue, its workers' credit, its bulkheads, arms and sticky keys, and
    the ready workers placement picks from."""

    def __init__(
        self,
        name: str,
        strategy: str,
        starvation_interval: int = 10,
        *,
        env: StrategyEnv | None = None,
        config: PoolConfig | None = None,
        max_sticky_keys: int = MAX_STICKY_KEYS,
    ) -> None:
        self.name = name
        self.config = config or PoolConfig(name=name, strategy=strategy)
        self.env = _with_settings(env or default_env(name), self.config)
        self.queue = PoolQueue(starvation_interval, self.config.fairness_weights)
        self.workers: dict[WorkerId, WorkerSlot] = {}
        self._type_limits = {b.task_type: b.max_inflight for b in self.config.bulkheads}
        self.inflight_by_type: Counter[str] = Counter()  # held tasks per type, for bulkheads
        self._type_of: dict[TaskId, str] = {}
        self._arms = make_arms(strategy, self.config, self.env)
        self._placed_by: dict[TaskId, int] = {}  # arm of each task a worker holds
        self.arms_changed = False  # arm statistics changed since the store last saw them
        # Sticky key -> the worker that last ran it, least recently used first; past
        # max_sticky_keys the least recently used key is forgotten.
        self.sticky: dict[str, WorkerId] = {}
        self.max_sticky_keys = max_sticky_keys
        # Changed since the store last saw them; FORGET_STICKY: evicted, delete it.
        self.sticky_moves: dict[str, WorkerId] = {}
        self.sticky_hits = 0
        self.sticky_misses = 0
        self._sticky_since: dict[TaskId, float] = {}  # when a sticky task began to wait
        self._key_moves: dict[TaskId, str] = {}  # why a sticky task's key is moving
        # Tasks a strategy holds back for a busy worker, and when that wait runs out.
        self._held_until: dict[TaskId, float] = {}
        self._ready = ReadyWorkers(self.workers, self._arms, self.env)
        self._ready_by_type = self._ready.by_type  # the same dict, kept by self._ready
        # The anti-affinity group of each placed task that has one, and whether it is hard.
        self._group_of: dict[TaskId, tuple[str, bool]] = {}
        self._parked: dict[str, dict[TaskId, Task]] = {}  # by task type
        self._recheck: set[str] = set()  # task types whose parked tasks may fit now

    @property
    def strategy_name(self) -> str:
        return self._arms[0].strategy

    @property
    def runtimes(self) -> RuntimeModel:
        return self.env.runtimes

    def arm_stats(self) -> list[ArmStats]:
        return [arm.stats for arm in self._arms]

    def restore_arm_stats(self, saved: list[ArmStats]) -> None:
        """Go on counting from what the store kept, for each arm whose strategy is the
        one it had then."""
        for arm, stats in zip(self._arms, saved, strict=False):
            if arm.stats.strategy == stats.strategy:
                arm.stats = replace(stats)

    def strategy_notes(self) -> list[str]:
        """What strategies that explain themselves (e.g. adaptive) say, per task type."""
        notes = []
        for arm in self._arms:
            for task_type, index in sorted(arm.indexes.items()):
                describe = getattr(index, "describe", None)
                if describe is not None:
                    notes.append(f"{task_type}: {describe()}")
        return notes

    @property
    def pending(self) -> int:
        """Tasks waiting: queued or parked."""
        return len(self.queue) + sum(len(p) for p in self._parked.values())

    def parked(self) -> list[Task]:
        return [task for tasks in self._parked.values() for task in tasks.values()]

    # Workers -----------------------------------------------------------------

    def add_worker(self, worker: WorkerSlot) -> None:
        if worker.worker_id in self.workers:
            raise AlreadyExists(f"worker {worker.worker_id!r} is connected already")
        self.workers[worker.worker_id] = worker
        self._ready.connect(worker)
        if worker.ready:
            self._ready.add(worker)
        self._recheck.update(worker.task_types)

    def remove_worker(self, worker_id: WorkerId) -> WorkerSlot:
        """Forget a worker; the caller requeues what it held (``slot.held``)."""
        worker = self._get(worker_id)
        self._ready.remove(worker)
        del self.workers[worker_id]
        self._ready.disconnect(worker)
        for task_id in worker.held:
            self._group_of.pop(task_id, None)
            self._placed_by.pop(task_id, None)
            self._untype(task_id)
        self._recheck.update(worker.task_types)
        return worker

    def set_capacity(self, worker_id: WorkerId, capacity: int) -> None:
        worker = self._get(worker_id)
        was_ready = worker.ready
        worker.capacity = capacity
        self._reindex(worker, was_ready)

    def set_draining(self, worker_id: WorkerId, draining: bool = True) -> None:
        worker = self._get(worker_id)
        was_ready = worker.ready
        worker.draining = draining
        self._reindex(worker, was_ready)

    def set_paused(self, worker_id: WorkerId, paused: bool, limit: int = UNLIMITED) -> None:
        """Pause a worker (cordoned, breaker open) or cap what it holds (a breaker's trial)."""
        worker = self._get(worker_id)
        was_ready = worker.ready
        worker.paused = paused
        worker.limit = limit
        self._reindex(worker, was_ready)

    @property
    def inflight(self) -> int:
        """Tasks the pool's workers hold."""
        return len(self._type_of)

    def release(self, worker_id: WorkerId, task_id: TaskId) -> None:
        """The worker no longer holds this task: one credit back."""
        worker = self.workers.get(worker_id)
        if worker is not None and task_id in worker.held:
            was_ready = worker.ready
            worker.held.discard(task_id)
            if self._placed_by:
                self._placed_by.pop(task_id, None)
            self._untype(task_id)
            if self._group_of:
                grouped = self._group_of.pop(task_id, None)
                if grouped is not None:
                    group, hard = grouped
                    _decrement(worker.groups, group)
                    if hard:
                        _decrement(worker.hard_groups, group)
                    self._recheck.update(worker.task_types)
            if was_ready:  # still ready, with one more slot free
                self._ready.update(worker)
            else:
                self._reindex(worker, was_ready)

    def finish(
        self, task: Task, worker_id: WorkerId, *, queue_wait_s: float, run_s: float, success: bool
    ) -> None:
        """A task came back from its worker: release its slot and learn from how it went."""
        worker = self.workers.get(worker_id)
        arm = self._arms[min(self._placed_by.get(task.id, 0), len(self._arms) - 1)]
        self.release(worker_id, task.id)
        stats = arm.stats
        self.arms_changed = True
        stats.finished += 1
        stats.failed += not success
        stats.wait_s += queue_wait_s
        stats.run_s += run_s
        if worker is None:
            return
        if success:
            self.env.runtimes.record_class(task.spec.task_type, worker.class_name, run_s)
        outcome = Outcome(worker, task, queue_wait_s, run_s, success)
        for each in self._arms:
            index = each.indexes.get(task.spec.task_type)
            if index is not None:
                index.observe(outcome)

    def reconfigure(self, config: PoolConfig) -> None:
        """Switch strategy (and A/B split, sticky timeout): rebuild the ready indexes."""
        env = _with_settings(self.env, config)
        arms = make_arms(config.strategy, config, env)  # KeyError before anything changes
        for new, old in zip(arms, self._arms, strict=False):  # an arm that stays counts on
            if new.strategy == old.strategy:
                new.stats = old.stats
        self.arms_changed = True
        self.env = env
        self.config = config
        self._arms = arms
        self._type_limits = {b.task_type: b.max_inflight for b in config.bulkheads}
        self.queue.set_weights(config.fairness_weights)
        self._placed_by.clear()
        self._ready.reset(arms)

    def use_arms(self, arms: list[Arm]) -> None:
        """Place with these arms from now on (the simulator's yardsticks, which are no
        registered strategy); the config is unchanged."""
        self._arms = arms
        self._placed_by.clear()
        self._ready.reset(arms)

    def indexes(self, task_type: str) -> list[Strategy]:
        """The strategy index of each arm for a task type, made on first use."""
        return [arm.index(task_type) for arm in self._arms]

    def set_strategy(self, strategy: str) -> None:
        """Switch the main strategy, keeping the rest of the pool's settings."""
        self.reconfigure(replace(self.config, strategy=strategy))

    def next_deadline(self) -> float | None:
        """When the next waiting task (for its sticky key's worker, or held back for a
        busy worker) stops waiting, if any is waiting."""
        # A wait that ran out while no worker of its type was ready needs no wake-up: the
        # task is looked at again when one becomes ready, and then falls back.
        if not self._sticky_since and not self._held_until:
            return None
        now = self.env.clock.now()
        timeout = self.config.sticky_timeout_s
        upcoming = [
            since + timeout for since in self._sticky_since.values() if since + timeout > now
        ]
        upcoming += [until for until in self._held_until.values() if until > now]
        return min(upcoming, default=None)

    # Tasks -------------------------------------------------------------------

    def enqueue(self, task: Task) -> None:
        self.queue.push(task)

    def dequeue(self, task_id: TaskId) -> Task | None:
        """Take a waiting task out (queued or parked); None if it is not waiting here."""
        self._sticky_since.pop(task_id, None)
        self._key_moves.pop(task_id, None)
        self._held_until.pop(task_id, None)
        task = self.queue.remove(task_id)
        if task is None:
            for parked in self._parked.values():
                task = parked.pop(task_id, None)
                if task is not None:
                    break
        return task

    def place(self) -> list[Decision]:
        """Match waiting tasks to ready workers until one side runs out.

        Returns the placements, and the parked tasks whose reason for waiting changed.
        """
        decisions: list[Decision] = []
        self._unpark(decisions)
        ready = self._ready_by_type
        choose = self._ready.choose
        queue = self.queue
        arms = self._arms
        split = len(arms) > 1
        # Without bulkheads nothing but the worker's own credit stops a run of tasks.
        limited = bool(self._type_limits) or bool(self.config.max_inflight)
        while self._pool_open() and (
            types := [t for t in queue.types_waiting() if ready.get(t) and self._type_open(t)]
        ):
            # These types all have a ready worker and room in their bulkhead until some
            # worker fills up or a bulkhead does.
            while (task := queue.pop(types)) is not None:
                arm = self._arm_for(task) if split else 0
                spec = task.spec
                hints = spec.placement
                if hints.free:
                    of_arm = arms[arm]
                    index = of_arm.indexes.get(spec.task_type)
                    if index is None:
                        index = of_arm.index(spec.task_type)
                    worker = index.pick(task)
                    if worker is None:  # held back for a busy worker
                        self._hold(task, index, decisions)
                        continue
                    note = getattr(index, "note", "") or of_arm.strategy
                    decision = Decision(task, worker, note)
                else:
                    sticky = self._sticky(task) if hints.sticky_key else None
                    if sticky is None:
                        decision = choose(task, arm)
                        if (moved := self._key_moves.pop(task.id, None)) and decision.worker:
                            note = f"{decision.note}; {moved}, moved to {decision.worker.worker_id}"
                            decision = decision._replace(note=note)
                    else:
                        decision = sticky
                    if decision.worker is None:
                        self._park(task, decision, decisions)
                        continue
                    worker = decision.worker
                decisions.append(decision)
                if not self._take(task, worker, arm) or (
                    limited and (not self._type_open(task.spec.task_type) or not self._pool_open())
                ):
                    break
        return decisions

    def _pool_open(self) -> bool:
        """Whether the pool's bulkhead has room for one more task."""
        limit = self.config.max_inflight
        return not limit or len(self._type_of) < limit

    def _type_open(self, task_type: str) -> bool:
        """Whether the task type's bulkhead has room for one more task."""
        limit = self._type_limits.get(task_type)
        return not limit or self.inflight_by_type[task_type] < limit

    def _untype(self, task_id: TaskId) -> None:
        task_type = self._type_of.pop(task_id, None)
        if task_type is not None:
            _decrement(self.inflight_by_type, task_type)

    def _arm_for(self, task: Task) -> int:
        """0 for the main strategy; 1 for the A/B arm, for ab_percent of the tasks."""
        if len(self._arms) == 1:
            return 0
        return int((task.id * 2654435761) % 100 < self.config.ab_percent)

    def _take(self, task: Task, worker: WorkerSlot, arm: int) -> bool:
        """The worker takes the task: its credit, groups, sticky key and indexes follow.
        Whether the worker is still ready."""
        spec = task.spec
        task_id, task_type = task.id, spec.task_type
        worker.held.add(task_id)
        self._type_of[task_id] = task_type
        by_type = self.inflight_by_type
        by_type[task_type] = by_type.get(task_type, 0) + 1
        self._arms[arm].stats.placed += 1
        self.arms_changed = True
        if arm:
            self._placed_by[task_id] = arm
        hints = spec.placement
        if group := hints.anti_affinity_group:
            self._group_of[task_id] = (group, not hints.anti_affinity_soft)
            worker.groups[group] += 1
            if not hints.anti_affinity_soft:
                worker.hard_groups[group] += 1
        if key := hints.sticky_key:
            self._sticky_since.pop(task_id, None)
            if self.sticky.get(key) == worker.worker_id:
                self.sticky_hits += 1
                self.sticky[key] = self.sticky.pop(key)  # now the most recently used
            else:
                self.sticky_misses += 1
                self.sticky.pop(key, None)
                self.sticky[key] = self.sticky_moves[key] = worker.worker_id
                self._evict_sticky()
        if worker.ready:
            self._ready.update(worker, taken=True)
            return True
        self._ready.remove(worker)
        return False

    # Sticky keys and parked tasks ----------------------------------------------------

    def restore_sticky(self, keys: dict[str, WorkerId]) -> None:
        """Take back the sticky keys the store kept (oldest first), within the bound."""
        self.sticky.update(keys)
        self._evict_sticky()

    def _evict_sticky(self) -> None:
        """Forget the least recently used sticky keys past max_sticky_keys, in memory
        and (through sticky_moves) in the store."""
        sticky = self.sticky
        while len(sticky) > self.max_sticky_keys:
            oldest = next(iter(sticky))
            del sticky[oldest]
            self.sticky_moves[oldest] = FORGET_STICKY

    def _sticky(self, task: Task) -> Decision | None:
        """Where a sticky task goes: its key's worker, a wait for it, or None (no
        worker for the key, or the wait ran out: place it as any other task)."""
        key = task.spec.placement.sticky_key
        held_by = self.sticky.get(key, "")
        owner = self.workers.get(held_by)
        required = task.spec.placement.required_labels
        if (
            owner is None
            or task.spec.task_type not in owner.task_types
            or any(owner.labels.get(k) != v for k, v in required.items())
        ):
            # The key's worker is gone or can never take this task.
            if held_by:
                why = "is gone" if owner is None else "cannot take it"
                self._key_moves[task.id] = f"sticky key {key!r} held by {held_by}, which {why}"
            return None
        ready = self._ready_by_type.get(task.spec.task_type, {})
        now = self.env.clock.now()
        if owner.worker_id in ready and fits(task, owner):
            since = self._sticky_since.get(task.id)
            if since is None:
                return Decision(task, owner, f"sticky: key {key!r} stays on {owner.worker_id}")
            return Decision(
                task,
                owner,
                f"sticky: key {key!r} held by {owner.worker_id}, waited {now - since:.1f} s",
            )
        since = self._sticky_since.setdefault(task.id, now)
        deadline = since + self.config.sticky_timeout_s
        if now >= deadline:
            del self._sticky_since[task.id]
            self._key_moves[task.id] = (
                f"sticky key {key!r} held by {owner.worker_id}, waited {now - since:.1f} s"
            )
            return None
        return Decision(
            task,
            None,
            f"waiting: sticky key {key!r} waits for worker {owner.worker_id} for up to "
            f"{deadline - now:.1f} s more (waited {now - since:.1f} s)",
        )

    def _hold(self, task: Task, index: object, decisions: list[Decision]) -> None:
        """Park a task its strategy holds back for a busy worker, until the worker frees a
        slot or the hold runs out (a timer: `next_deadline`)."""
        held = getattr(index, "held", None)
        hold = held(task) if held is not None else None
        assert hold is not None, "a strategy with ready workers picks or says why it holds"
        note, until = hold
        self._held_until[task.id] = until
        self._park(task, Decision(task, None, note), decisions)

    def _park(self, task: Task, decision: Decision, decisions: list[Decision]) -> None:
        self._parked.setdefault(task.spec.task_type, {})[task.id] = task
        if (decision.note, decision.unschedulable) != (task.placement_note, task.unschedulable):
            decisions.append(decision)

    def _unpark(self, decisions: list[Decision]) -> None:
        """Give parked tasks of the types that changed (or whose sticky wait ran out)
        another chance."""
        if self._sticky_since:
            expired = self.env.clock.now() - self.config.sticky_timeout_s
            for task_type, waiting in self._parked.items():
                if any(self._sticky_since.get(i, expired + 1) <= expired for i in waiting):
                    self._recheck.add(task_type)
        if self._held_until:
            now = self.env.clock.now()
            for task_type, waiting in self._parked.items():
                if any(self._held_until.get(i, now + 1) <= now for i in waiting):
                    self._recheck.add(task_type)
        recheck, self._recheck = self._recheck, set()
        for task_type in recheck:
            parked = self._parked.pop(task_type, None)
            if not parked:
                continue
            if self._ready_by_type.get(task_type):
                for task in parked.values():
                    self._held_until.pop(task.id, None)
                    self.queue.push(task)
            else:  # no ready worker of this type: only the reasons can change
                self._parked[task_type] = parked
                for task in parked.values():
                    decision = self._ready.why_waiting(task)
                    if (decision.note, decision.unschedulable) != (
                        task.placement_note,
                        task.unschedulable,
                    ):
                        decisions.append(decision)

    # Internals ---------------------------------------------------------------

    def _get(self, worker_id: WorkerId) -> WorkerSlot:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise NotFound(f"worker {worker_id!r} is not connected to pool {self.name!r}")
        return worker

    def _reindex(self, worker: WorkerSlot, was_ready: bool) -> None:
        """Keep the ready indexes in step with a change to the worker."""
        if was_ready and not worker.ready:
            self._ready.remove(worker)
        elif worker.ready and not was_ready:
            self._ready.add(worker)
            self._recheck.update(worker.task_types)
        elif worker.ready:
            self._ready.update(worker)


def _with_settings(env: StrategyEnv, config: PoolConfig) -> StrategyEnv:
    """The strategy env with the pool's settings for its strategies."""
    window, explore = config.adaptive_window, config.adaptive_explore_percent / 100
    if (env.adaptive_window, env.adaptive_explore) == (window, explore):
        return env
    return replace(env, adaptive_window=window, adaptive_explore=explore)


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
