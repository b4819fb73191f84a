"""Pure placement decisions for one pool: which pending task goes to which worker.

No I/O and no clock: the engine feeds it tasks and workers and applies the
decisions it returns, so tests and tools can drive it directly.

How a task is placed:
1. Hard constraints are filters, applied first: the task's type, free credit,
   its required labels (looked up in a label index, not by scanning workers) and
   hard anti-affinity (no worker already running a task of the same group).
2. Preferences score what is left: each matching preferred label adds its
   weight, each running task of the same soft anti-affinity group costs
   ``SOFT_ANTI_AFFINITY_PENALTY``.
3. The pool's strategy picks among the best-scoring workers.
Bulkheads come before all of this: while the pool holds its ``max_inflight`` tasks,
or a task type its bulkhead's ``max_inflight``, tasks of it stay queued (never
dropped), and the other types go on. Within the pool, fairness keys (tenants)
take turns by weighted round robin (see broker.core.queue).
A task without hints skips 1-2 and takes the strategy's pick from its index. A
task that no ready worker may take is parked, with the reason, until a worker
of its type changes; one that no connected worker could ever take is marked
unschedulable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

from broker.core.arms import ArmStats, make_arms
from broker.core.queue import PoolQueue
from broker.core.runtimes import RuntimeModel
from broker.core.strategies import Outcome, Strategy, StrategyEnv, WorkerSlot, make_strategy
from broker.core.strategies._base import UNLIMITED, default_env
from broker.domain import PoolConfig, Task, TaskId, WorkerId
from broker.errors import AlreadyExists, NotFound

# ArmStats is kept importable from here.
__all__ = [
    "MAX_LABEL_INDEXES",
    "SOFT_ANTI_AFFINITY_PENALTY",
    "ArmStats",
    "Decision",
    "PoolScheduler",
]

SOFT_ANTI_AFFINITY_PENALTY = 1_000_000
# Strategy indexes kept for (task type, required labels) pairs, so that a task with
# only required labels is placed from an index rather than by a scan. Past this
# many pairs, further ones are served by filtering.
MAX_LABEL_INDEXES = 256

_LabelKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Decision:
    """This task goes to this worker, or (worker None) waits, for the reason in `note`."""

    task: Task
    worker: WorkerSlot | None
    note: str
    unschedulable: bool = False
    arm: str = ""  # the strategy that placed it


class PoolScheduler:
    """A pool's queue, its workers' credit, one strategy index per task type, and the
    label index behind placement filters."""

    def __init__(
        self,
        name: str,
        strategy: str,
        starvation_interval: int = 10,
        *,
        env: StrategyEnv | None = None,
        config: PoolConfig | None = None,
    ) -> None:
        self.name = name
        self.env = env or default_env(name)
        self.config = config or PoolConfig(name=name, strategy=strategy)
        self.queue = PoolQueue(starvation_interval, self.config.fairness_weights)
        self.workers: dict[WorkerId, WorkerSlot] = {}
        self._type_limits = {b.task_type: b.max_inflight for b in self.config.bulkheads}
        self.inflight_by_type: Counter[str] = Counter()  # held tasks per type, for bulkheads
        self._type_of: dict[TaskId, str] = {}
        self._arms = make_arms(strategy, self.config, self.env)
        self._placed_by: dict[TaskId, int] = {}  # arm of each task a worker holds
        self.sticky: dict[str, WorkerId] = {}  # sticky key -> the worker that last ran it
        self.sticky_moves: dict[str, WorkerId] = {}  # changed since the store last saw them
        self.sticky_hits = 0
        self.sticky_misses = 0
        self._sticky_since: dict[TaskId, float] = {}  # when a sticky task began to wait
        self._ready_by_type: dict[str, dict[WorkerId, WorkerSlot]] = {}
        # Ready workers of a type with some labels, one index per arm, and the reverse.
        self._label_indexes: dict[_LabelKey, list[Strategy]] = {}
        self._label_keys_of: dict[WorkerId, list[_LabelKey]] = {}
        self._by_label: dict[tuple[str, str], set[WorkerId]] = {}
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
        for label in worker.labels.items():
            self._by_label.setdefault(label, set()).add(worker.worker_id)
        if worker.ready:
            self._index_add(worker)
        self._recheck.update(worker.task_types)

    def remove_worker(self, worker_id: WorkerId) -> WorkerSlot:
        """Forget a worker; the caller requeues what it held (``slot.held``)."""
        worker = self._get(worker_id)
        self._index_remove(worker)
        del self.workers[worker_id]
        for label in worker.labels.items():
            holders = self._by_label[label]
            holders.discard(worker_id)
            if not holders:
                del self._by_label[label]
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
            self._placed_by.pop(task_id, None)
            self._untype(task_id)
            grouped = self._group_of.pop(task_id, None)
            if grouped is not None:
                group, hard = grouped
                _decrement(worker.groups, group)
                if hard:
                    _decrement(worker.hard_groups, group)
                self._recheck.update(worker.task_types)
            self._reindex(worker, was_ready)

    def finish(
        self, task: Task, worker_id: WorkerId, *, queue_wait_s: float, run_s: float, success: bool
    ) -> None:
        """A task came back from its worker: release its slot and learn from how it went."""
        worker = self.workers.get(worker_id)
        arm = self._arms[min(self._placed_by.get(task.id, 0), len(self._arms) - 1)]
        self.release(worker_id, task.id)
        stats = arm.stats
        stats.finished += 1
        stats.failed += not success
        stats.wait_s += queue_wait_s
        stats.run_s += run_s
        if worker is None:
            return
        if success:
            self.env.runtimes.record(task.spec.task_type, worker.labels, run_s)
        outcome = Outcome(worker, task, queue_wait_s, run_s, success)
        for each in self._arms:
            index = each.indexes.get(task.spec.task_type)
            if index is not None:
                index.observe(outcome)

    def reconfigure(self, config: PoolConfig) -> None:
        """Switch strategy (and A/B split, sticky timeout): rebuild the ready indexes."""
        arms = make_arms(config.strategy, config, self.env)  # KeyError before anything changes
        self.config = config
        self._arms = arms
        self._type_limits = {b.task_type: b.max_inflight for b in config.bulkheads}
        self.queue.set_weights(config.fairness_weights)
        self._placed_by.clear()
        self._ready_by_type.clear()
        self._label_indexes.clear()
        self._label_keys_of.clear()
        for worker in self.workers.values():
            if worker.ready:
                self._index_add(worker)

    def set_strategy(self, strategy: str) -> None:
        """Switch the main strategy, keeping the rest of the pool's settings."""
        self.reconfigure(replace(self.config, strategy=strategy))

    def next_deadline(self) -> float | None:
        """When the next sticky task stops waiting for its worker, if any is waiting."""
        # A wait that ran out while no worker of its type was ready needs no wake-up: the
        # task is looked at again when one becomes ready, and then falls back.
        if not self._sticky_since:
            return None
        now = self.env.clock.now()
        timeout = self.config.sticky_timeout_s
        upcoming = [
            since + timeout for since in self._sticky_since.values() if since + timeout > now
        ]
        return min(upcoming, default=None)

    # Tasks -------------------------------------------------------------------

    def enqueue(self, task: Task) -> None:
        self.queue.push(task)

    def dequeue(self, task_id: TaskId) -> Task | None:
        """Take a waiting task out (queued or parked); None if it is not waiting here."""
        self._sticky_since.pop(task_id, None)
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
        queue = self.queue
        while self._pool_open() and (
            types := [t for t in queue.types_waiting() if ready.get(t) and self._type_open(t)]
        ):
            # These types all have a ready worker and room in their bulkhead until some
            # worker fills up or a bulkhead does.
            while (task := queue.pop(types)) is not None:
                arm = self._arm_for(task)
                if task.spec.placement.free:
                    worker = self._arms[arm].index(task.spec.task_type).pick(task)
                    assert worker is not None, "a non-empty strategy index always picks"
                    decision = Decision(task, worker, self._arms[arm].strategy)
                else:
                    decision = self._choose(task, arm)
                    if decision.worker is None:
                        self._park(task, decision, decisions)
                        continue
                    worker = decision.worker
                decisions.append(decision)
                self._take(task, worker, arm)
                if (
                    not worker.ready
                    or not self._type_open(task.spec.task_type)
                    or not self._pool_open()
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

    def _take(self, task: Task, worker: WorkerSlot, arm: int) -> None:
        """The worker takes the task: its credit, groups, sticky key and indexes follow."""
        worker.held.add(task.id)
        self._type_of[task.id] = task.spec.task_type
        self.inflight_by_type[task.spec.task_type] += 1
        self._arms[arm].stats.placed += 1
        if arm:
            self._placed_by[task.id] = arm
        hints = task.spec.placement
        if group := hints.anti_affinity_group:
            self._group_of[task.id] = (group, not hints.anti_affinity_soft)
            worker.groups[group] += 1
            if not hints.anti_affinity_soft:
                worker.hard_groups[group] += 1
        if key := hints.sticky_key:
            self._sticky_since.pop(task.id, None)
            if self.sticky.get(key) == worker.worker_id:
                self.sticky_hits += 1
            else:
                self.sticky_misses += 1
                self.sticky[key] = self.sticky_moves[key] = worker.worker_id
        if worker.ready:
            self._index_update(worker)
        else:
            self._index_remove(worker)

    # Placement with hints ----------------------------------------------------

    def _choose(self, task: Task, arm: int = 0) -> Decision:
        hints = task.spec.placement
        task_type = task.spec.task_type
        ready = self._ready_by_type.get(task_type, {})
        if hints.sticky_key:
            sticky = self._sticky(task, ready)
            if sticky is not None:
                return sticky
        if (
            hints.required_labels
            and not hints.preferred_labels
            and not hints.anti_affinity_group
            and (index := self._label_index(task_type, hints.required_labels, arm)) is not None
        ):
            allowed_count = len(index)
            worker = index.pick(task)
            if worker is None:
                return self._why_waiting(task)
            note = (
                f"{self._arms[arm].strategy}: {allowed_count} of {len(ready)} ready workers "
                f"allowed after required labels {_labels(hints.required_labels)}"
            )
            return Decision(task, worker, note)
        removed: list[str] = []
        if hints.required_labels:
            matching = self._with_labels(hints.required_labels)
            allowed = [ready[w] for w in matching if w in ready]
            removed.append(f"required labels {_labels(hints.required_labels)}")
        else:
            allowed = list(ready.values())
        if group := hints.anti_affinity_group:
            # A hard task runs alone among its group; a soft one only avoids hard ones.
            running = "hard_groups" if hints.anti_affinity_soft else "groups"
            allowed = [w for w in allowed if not getattr(w, running).get(group)]
            removed.append(f"anti-affinity group {group!r}")
        if not allowed:
            return self._why_waiting(task)
        scores = {w.worker_id: self._score(task, w) for w in allowed}
        best = max(scores.values())
        top = [w for w in allowed if scores[w.worker_id] == best]
        strategy = self._arms[arm]
        worker = strategy.index(task_type).rank(task, top)
        filters = f" after {' and '.join(removed)}" if removed else ""
        note = (
            f"{strategy.strategy}: {len(allowed)} of {len(ready)} ready workers "
            f"allowed{filters}; score {best}"
        )
        return Decision(task, worker, note)

    def _label_index(self, task_type: str, labels: Mapping[str, str], arm: int) -> Strategy | None:
        """The arm's index of ready workers of this type with these labels (made on first
        use); None once there are MAX_LABEL_INDEXES of them."""
        key = (task_type, frozenset(labels.items()))
        indexes = self._label_indexes.get(key)
        if indexes is None:
            if len(self._label_indexes) >= MAX_LABEL_INDEXES:
                return None
            indexes = self._label_indexes[key] = [
                make_strategy(a.strategy, self.env) for a in self._arms
            ]
            for worker in self._ready_by_type.get(task_type, {}).values():
                if _has_labels(worker, labels):
                    self._label_keys_of.setdefault(worker.worker_id, []).append(key)
                    for index in indexes:
                        index.add(worker)
        return indexes[arm]

    def _sticky(self, task: Task, ready: dict[WorkerId, WorkerSlot]) -> Decision | None:
        """Where a sticky task goes: its key's worker, a wait for it, or None (no
        worker for the key, or the wait ran out: place it as any other task)."""
        key = task.spec.placement.sticky_key
        owner = self.workers.get(self.sticky.get(key, ""))
        required = task.spec.placement.required_labels
        if (
            owner is None
            or task.spec.task_type not in owner.task_types
            or any(owner.labels.get(k) != v for k, v in required.items())
        ):
            return None  # the key's worker is gone or can never take this task
        if owner.worker_id in ready and self._fits(task, owner):
            return Decision(task, owner, f"sticky: key {key!r} stays on {owner.worker_id}")
        now = self.env.clock.now()
        since = self._sticky_since.setdefault(task.id, now)
        deadline = since + self.config.sticky_timeout_s
        if now >= deadline:
            del self._sticky_since[task.id]
            return None
        return Decision(
            task,
            None,
            f"waiting: sticky key {key!r} waits for worker {owner.worker_id} "
            f"for up to {deadline - now:.1f} s more",
        )

    def _fits(self, task: Task, worker: WorkerSlot) -> bool:
        """Whether the worker passes the task's hard filters."""
        hints = task.spec.placement
        if any(worker.labels.get(k) != v for k, v in hints.required_labels.items()):
            return False
        if group := hints.anti_affinity_group:
            running = worker.hard_groups if hints.anti_affinity_soft else worker.groups
            return not running.get(group)
        return True

    def _score(self, task: Task, worker: WorkerSlot) -> int:
        hints = task.spec.placement
        score = sum(p.weight for p in hints.preferred_labels if worker.labels.get(p.key) == p.value)
        if hints.anti_affinity_soft and hints.anti_affinity_group:
            score -= SOFT_ANTI_AFFINITY_PENALTY * worker.groups.get(hints.anti_affinity_group, 0)
        return score

    def _with_labels(self, labels: Mapping[str, str]) -> set[WorkerId]:
        """Connected workers (ready or not) whose labels include all of these."""
        holders = [self._by_label.get(item, set()) for item in labels.items()]
        holders.sort(key=len)
        return set(holders[0]).intersection(*holders[1:]) if holders else set(self.workers)

    def _why_waiting(self, task: Task) -> Decision:
        """The decision to park a task that no ready worker may take, with the reason."""
        hints = task.spec.placement
        task_type = task.spec.task_type
        able = [
            w
            for w in (self.workers[i] for i in self._with_labels(hints.required_labels))
            if task_type in w.task_types
        ]
        wanted = f"type {task_type!r}"
        if hints.required_labels:
            wanted += f" and labels {_labels(hints.required_labels)}"
        if not able:
            return Decision(task, None, f"unschedulable: no connected worker takes {wanted}", True)
        free = [w for w in able if w.ready]
        if not free:
            return Decision(task, None, f"waiting: all {len(able)} workers for {wanted} are busy")
        return Decision(
            task,
            None,
            f"waiting: all {len(free)} free workers for {wanted} run a task of "
            f"anti-affinity group {hints.anti_affinity_group!r}",
        )

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
        recheck, self._recheck = self._recheck, set()
        for task_type in recheck:
            parked = self._parked.pop(task_type, None)
            if not parked:
                continue
            if self._ready_by_type.get(task_type):
                for task in parked.values():
                    self.queue.push(task)
            else:  # no ready worker of this type: only the reasons can change
                self._parked[task_type] = parked
                for task in parked.values():
                    decision = self._why_waiting(task)
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
            self._index_remove(worker)
        elif worker.ready and not was_ready:
            self._index_add(worker)
            self._recheck.update(worker.task_types)
        elif worker.ready:
            self._index_update(worker)

    def _index_add(self, worker: WorkerSlot) -> None:
        for task_type in worker.task_types:
            self._ready_by_type.setdefault(task_type, {})[worker.worker_id] = worker
            for arm in self._arms:
                arm.index(task_type).add(worker)
        keys = [
            key
            for key in self._label_indexes
            if key[0] in worker.task_types and _has_labels(worker, dict(key[1]))
        ]
        if keys:
            self._label_keys_of[worker.worker_id] = keys
            for key in keys:
                for index in self._label_indexes[key]:
                    index.add(worker)

    def _index_update(self, worker: WorkerSlot) -> None:
        """The ready worker's load changed."""
        for arm in self._arms:
            for task_type in worker.task_types:
                arm.index(task_type).update(worker)
        for key in self._label_keys_of.get(worker.worker_id, ()):
            for index in self._label_indexes[key]:
                index.update(worker)

    def _index_remove(self, worker: WorkerSlot) -> None:
        for task_type in worker.task_types:
            ready = self._ready_by_type.get(task_type)
            if ready is not None:
                ready.pop(worker.worker_id, None)
            for arm in self._arms:
                index = arm.indexes.get(task_type)
                if index is not None:
                    index.remove(worker)
        for key in self._label_keys_of.pop(worker.worker_id, ()):
            for index in self._label_indexes[key]:
                index.remove(worker)


def _has_labels(worker: WorkerSlot, labels: Mapping[str, str]) -> bool:
    return all(worker.labels.get(k) == v for k, v in labels.items())


def _decrement(counter: Counter[str], key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
