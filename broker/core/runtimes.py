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

    def load(self, rows: Iterable[tuple[RuntimeKey, RunStats]]) -> None:
        for key, stats in rows:
            if key.pool == self.pool:
                self.stats[key] = stats

    def predict(self, task_type: str, labels: Mapping[str, str]) -> float:
        """Expected run time in seconds of a task of this type on a worker with these labels."""
        for key in (
            RuntimeKey(self.pool, task_type, worker_class(labels)),
            RuntimeKey(self.pool, task_type, "*"),
        ):
            stats = self.stats.get(key)
            if stats is not None and stats.count:
                return stats.mean_s
        return self.prior_s

    def record(self, task_type: str, labels: Mapping[str, str], run_s: float) -> None:
        """Learn from one finished task, scoring the prediction made for it first."""
        predicted = self.predict(task_type, labels)
        for key in (
            RuntimeKey(self.pool, task_type, worker_class(labels)),
            RuntimeKey(self.pool, task_type, "*"),
        ):
            stats = self.stats.get(key)
            if stats is None:
                stats = self.stats[key] = RunStats()
            if key.worker_class != "*":
                stats.abs_error_s += abs(predicted - run_s)
                stats.predicted += 1
            stats.add(run_s)
            self.dirty.add(key)

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
