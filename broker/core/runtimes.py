"""What the broker learns from finished tasks: run times per task type and worker.

A pool's `RuntimeModel` keeps, per (task type, worker class), the count, mean and
variance of run times (Welford's method), and the error of its own predictions.
A worker's class is its label set, so what one worker taught carries over to its
replacement with the same labels. The store persists the model (see
`SQLiteStore.save_runtime`); a broker restart starts from what it knew.

Predictions fall back from the worker class to the task type, then to a prior
(`prior_s`), so a cold start still ranks workers sensibly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Re-exported: the values moved to broker.stats, below the store.
from broker.stats import RunStats as RunStats
from broker.stats import RuntimeKey as RuntimeKey


def worker_class(labels: Mapping[str, str]) -> str:
    """A stable name for a worker's label set ("" for no labels)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@dataclass(slots=True)
class RuntimeModel:
    """Learned run times for one pool."""

    pool: str
    prior_s: float = 1.0
    stats: dict[RuntimeKey, RunStats] = field(default_factory=dict)
    dirty: set[RuntimeKey] = field(default_factory=set)  # changed since the store last saw them
    version: int = 0  # counts changes, so that users may cache predictions
    _keys: dict[tuple[str, str], tuple[RuntimeKey, RuntimeKey]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def load(self, rows: Iterable[tuple[RuntimeKey, RunStats]]) -> None:
        for key, stats in rows:
            if key.pool == self.pool:
                self.stats[key] = stats
        self.version += 1

    def predict(self, task_type: str, labels: Mapping[str, str]) -> float:
        """Expected run time in seconds of a task of this type on a worker with these labels."""
        return self.predict_class(task_type, worker_class(labels))

    def predict_class(self, task_type: str, class_name: str) -> float:
        """`predict`, for a worker class already named (see `worker_class`)."""
        keys = self._key_pair(task_type, class_name)
        stats = self.stats.get(keys[0])
        if stats is None or not stats.count:
            stats = self.stats.get(keys[1])
            if stats is None or not stats.count:
                return self.prior_s
        return stats.mean_s

    def _key_pair(self, task_type: str, class_name: str) -> tuple[RuntimeKey, RuntimeKey]:
        """The keys of a task type on a worker class and on every worker, made once: a
        placement asks for them for every class of worker, and every finished task."""
        keys = self._keys.get((task_type, class_name))
        if keys is None:
            keys = (
                RuntimeKey(self.pool, task_type, class_name),
                RuntimeKey(self.pool, task_type, "*"),
            )
            self._keys[(task_type, class_name)] = keys
        return keys

    def record(self, task_type: str, labels: Mapping[str, str], run_s: float) -> None:
        """Learn from one finished task, scoring the prediction made for it first."""
        self.record_class(task_type, worker_class(labels), run_s)

    def record_class(self, task_type: str, class_name: str, run_s: float) -> None:
        """`record`, for a worker class already named (see `worker_class`)."""
        by_class, by_type = self._key_pair(task_type, class_name)
        known = self.stats
        class_stats = known.get(by_class)
        type_stats = known.get(by_type)
        # What `predict` would have said, from the same two keys.
        if class_stats is not None and class_stats.count:
            predicted = class_stats.mean_s
        elif type_stats is not None and type_stats.count:
            predicted = type_stats.mean_s
        else:
            predicted = self.prior_s
        if class_stats is None:
            class_stats = known[by_class] = RunStats()
        if by_class.worker_class != "*":
            class_stats.abs_error_s += abs(predicted - run_s)
            class_stats.predicted += 1
        class_stats.add(run_s)
        if type_stats is None:
            type_stats = known[by_type] = RunStats()
        type_stats.add(run_s)
        self.dirty.add(by_class)
        self.dirty.add(by_type)
        self.version += 1

    def by_type(self) -> dict[str, RunStats]:
        """The every-worker statistics of each task type."""
        return {k.task_type: s for k, s in self.stats.items() if k.worker_class == "*"}

    def prediction_error(self, task_type: str) -> tuple[int, float]:
        """How many predictions were scored for this type, and their mean absolute error."""
        scored = [
            s for k, s in self.stats.items() if k.task_type == task_type and k.worker_class != "*"
        ]
        count = sum(s.predicted for s in scored)
        error = sum(s.abs_error_s for s in scored)
        return count, (error / count if count else 0.0)
