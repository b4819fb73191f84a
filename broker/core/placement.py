"""Where a task may go in one pool: its ready workers, indexed, and the placement filters
and scores over them.

`ReadyWorkers` keeps the indexes placement looks workers up in: the ready workers of
each task type, with one strategy index per type and arm (broker.core.arms), one per
(task type, required labels) pair, and every connected worker by label. The scheduler
(broker.core.scheduler) tells it when a worker connects, leaves, becomes ready, stops
being ready or changes load, and asks it where a task with placement hints may go:
1. Hard constraints are filters, applied first: the task's type, free credit,
   its required labels (looked up in a label index, not by scanning workers) and
   hard anti-affinity (no worker already running a task of the same group).
2. Preferences score what is left: each matching preferred label adds its
   weight, each running task of the same soft anti-affinity group costs
   ``SOFT_ANTI_AFFINITY_PENALTY``.
3. The arm's strategy picks among the best-scoring workers.
When no ready worker may take the task, it says why: every fitting worker is busy,
or runs a task of its anti-affinity group, or no connected worker could ever take it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from broker.core.arms import Arm
from broker.core.strategies import Strategy, StrategyEnv, WorkerSlot
from broker.domain import Task, WorkerId

SOFT_ANTI_AFFINITY_PENALTY = 1_000_000
# Strategy indexes kept for (task type, required labels) pairs, so that a task with
# only required labels is placed from an index rather than by a scan. Past this
# many pairs, further ones are served by filtering.
MAX_LABEL_INDEXES = 256

_LabelKey = tuple[str, frozenset[tuple[str, str]]]


class Decision(NamedTuple):
    """This task goes to this worker, or (worker None) waits, for the reason in `note`.
    (A named tuple: one is made per placement, and a tuple is the cheapest to make.)"""

    task: Task
    worker: WorkerSlot | None
    note: str
    unschedulable: bool = False
    arm: str = ""  # the strategy that placed it


class ReadyWorkers:
    """A pool's workers as placement looks them up: the ready ones by task type (one
    strategy index per arm) and by required labels, and every connected one by label."""

    def __init__(
        self, workers: dict[WorkerId, WorkerSlot], arms: list[Arm], env: StrategyEnv
    ) -> None:
        self._workers = workers  # the pool's connected workers, owned by its scheduler
        self.arms = arms
        self._env = env
        self.by_type: dict[str, dict[WorkerId, WorkerSlot]] = {}
        # Ready workers of a type with some labels, one index per arm, and the reverse.
        self._label_indexes: dict[_LabelKey, list[Strategy]] = {}
        self._label_keys_of: dict[WorkerId, list[_LabelKey]] = {}
        self._by_label: dict[tuple[str, str], set[WorkerId]] = {}

    # Keeping the indexes in step ---------------------------------------------------

    def connect(self, worker: WorkerSlot) -> None:
        """A worker connected (ready or not): index it by its labels."""
        for label in worker.labels.items():
            self._by_label.setdefault(label, set()).add(worker.worker_id)

    def disconnect(self, worker: WorkerSlot) -> None:
        """A worker left: forget its labels, and tell the strategies that keep busy
        workers in mind (predictive) to forget it."""
        for arm in self.arms:
            for task_type in worker.task_types:
                index = arm.indexes.get(task_type)
                forget = getattr(index, "disconnect", None)
                if forget is not None:
                    forget(worker)
        for key in self._label_indexes:
            if key[0] in worker.task_types:
                for index in self._label_indexes[key]:
                    forget = getattr(index, "disconnect", None)
                    if forget is not None:
                        forget(worker)
        for label in worker.labels.items():
            holders = self._by_label[label]
            holders.discard(worker.worker_id)
            if not holders:
                del self._by_label[label]

    def reset(self, arms: list[Arm]) -> None:
        """New arms (a new strategy or A/B split): rebuild the ready indexes for them."""
        self.arms = arms
        self.by_type.clear()
        self._label_indexes.clear()
        self._label_keys_of.clear()
        for worker in self._workers.values():
            if worker.ready:
                self.add(worker)

    def add(self, worker: WorkerSlot) -> None:
        """The worker became ready."""
        for task_type in worker.task_types:
            self.by_type.setdefault(task_type, {})[worker.worker_id] = worker
            for arm in self.arms:
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

    def update(self, worker: WorkerSlot, *, taken: bool = False) -> None:
        """The ready worker's load changed; `taken`: it took a task, which only the
        indexes whose strategy says `update_on_take` hear of (one that says False finds
        a key that rose by itself)."""
        for arm in self.arms:
            indexes = arm.indexes
            for task_type in worker.task_types:
                index = indexes.get(task_type)
                if index is None:
                    if taken:  # not indexed there: nothing to re-key
                        continue
                    index = arm.index(task_type)
                if not taken or getattr(index, "update_on_take", True):
                    index.update(worker)
        if self._label_keys_of:
            for key in self._label_keys_of.get(worker.worker_id, ()):
                for index in self._label_indexes[key]:
                    if not taken or getattr(index, "update_on_take", True):
                        index.update(worker)

    def remove(self, worker: WorkerSlot) -> None:
        """The worker is no longer ready (or gone)."""
        for task_type in worker.task_types:
            ready = self.by_type.get(task_type)
            if ready is not None:
                ready.pop(worker.worker_id, None)
            for arm in self.arms:
                index = arm.indexes.get(task_type)
                if index is not None:
                    index.remove(worker)
        for key in self._label_keys_of.pop(worker.worker_id, ()):
            for index in self._label_indexes[key]:
                index.remove(worker)

    # Placement with hints ------------------------------------------------------------

    def choose(self, task: Task, arm: int = 0) -> Decision:
        """The ready worker a task with hints goes to, or why it waits."""
        hints = task.spec.placement
        task_type = task.spec.task_type
        ready = self.by_type.get(task_type, {})
        if (
            hints.required_labels
            and not hints.preferred_labels
            and not hints.anti_affinity_group
            and (index := self._label_index(task_type, hints.required_labels, arm)) is not None
        ):
            allowed_count = len(index)
            worker = index.pick(task)
            if worker is None:
                return self.why_waiting(task)
            note = (
                f"{self.arms[arm].strategy}: {allowed_count} of {len(ready)} ready workers "
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
            return self.why_waiting(task)
        scores = {w.worker_id: _score(task, w) for w in allowed}
        best = max(scores.values())
        top = [w for w in allowed if scores[w.worker_id] == best]
        strategy = self.arms[arm]
        worker = strategy.index(task_type).rank(task, top)
        filters = f" after {' and '.join(removed)}" if removed else ""
        note = (
            f"{strategy.strategy}: {len(allowed)} of {len(ready)} ready workers "
            f"allowed{filters}; score {best}"
        )
        return Decision(task, worker, note)

    def why_waiting(self, task: Task) -> Decision:
        """The decision to park a task that no ready worker may take, with the reason."""
        hints = task.spec.placement
        task_type = task.spec.task_type
        able = [
            w
            for w in (self._workers[i] for i in self._with_labels(hints.required_labels))
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

    def _label_index(self, task_type: str, labels: Mapping[str, str], arm: int) -> Strategy | None:
        """The arm's index of ready workers of this type with these labels (made on first
        use); None once there are MAX_LABEL_INDEXES of them."""
        key = (task_type, frozenset(labels.items()))
        indexes = self._label_indexes.get(key)
        if indexes is None:
            if len(self._label_indexes) >= MAX_LABEL_INDEXES:
                return None
            indexes = self._label_indexes[key] = [a.make_index() for a in self.arms]
            for worker in self.by_type.get(task_type, {}).values():
                if _has_labels(worker, labels):
                    self._label_keys_of.setdefault(worker.worker_id, []).append(key)
                    for index in indexes:
                        index.add(worker)
        return indexes[arm]

    def _with_labels(self, labels: Mapping[str, str]) -> set[WorkerId]:
        """Connected workers (ready or not) whose labels include all of these."""
        holders = [self._by_label.get(item, set()) for item in labels.items()]
        holders.sort(key=len)
        return set(holders[0]).intersection(*holders[1:]) if holders else set(self._workers)


def fits(task: Task, worker: WorkerSlot) -> bool:
    """Whether the worker passes the task's hard filters."""
    hints = task.spec.placement
    if any(worker.labels.get(k) != v for k, v in hints.required_labels.items()):
        return False
    if group := hints.anti_affinity_group:
        running = worker.hard_groups if hints.anti_affinity_soft else worker.groups
        return not running.get(group)
    return True


def _score(task: Task, worker: WorkerSlot) -> int:
    hints = task.spec.placement
    score = sum(p.weight for p in hints.preferred_labels if worker.labels.get(p.key) == p.value)
    if hints.anti_affinity_soft and hints.anti_affinity_group:
        score -= SOFT_ANTI_AFFINITY_PENALTY * worker.groups.get(hints.anti_affinity_group, 0)
    return score


def _has_labels(worker: WorkerSlot, labels: Mapping[str, str]) -> bool:
    return all(worker.labels.get(k) == v for k, v in labels.items())


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
