"""Statistics the broker learns and keeps: plain values shared by the core, the metrics
history and the store.

Run-time statistics (`RunStats`, per `RuntimeKey`) are what placement learns; a
`RollupRow` is one row of the metrics history. They live here, below all three users, so
that the store can persist them without importing scheduling or observability code. No
I/O and no imports beyond `broker.domain` and the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import NamedTuple

from broker.domain import WorkerId

# -- learned run times ---------------------------------------------------------------------


@dataclass(slots=True)
class RunStats:
    """Running count, mean and variance of run times, and the error of predictions."""

    count: int = 0
    mean_s: float = 0.0
    m2: float = 0.0  # sum of squared deviations (Welford)
    abs_error_s: float = 0.0  # summed |predicted - actual| over `predicted` samples
    predicted: int = 0

    def add(self, run_s: float) -> None:
        self.count += 1
        delta = run_s - self.mean_s
        self.mean_s += delta / self.count
        self.m2 += delta * (run_s - self.mean_s)

    @property
    def variance(self) -> float:
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def mean_abs_error_s(self) -> float:
        return self.abs_error_s / self.predicted if self.predicted else 0.0


class RuntimeKey(NamedTuple):
    """What a `RunStats` is about. (A named tuple: it is made and hashed per finished
    task and per prediction, and a tuple's hash and equality cost least.)"""

    pool: str
    task_type: str
    worker_class: str  # "*" for every worker of the type


@dataclass(slots=True)
class ArmStats:
    """How the tasks one arm of a pool (its strategy, or the A/B one) placed went: for
    A/B splits. Kept by the store, so a restart goes on counting."""

    strategy: str
    placed: int = 0
    finished: int = 0
    failed: int = 0
    wait_s: float = 0.0  # summed queue wait of finished tasks
    run_s: float = 0.0  # summed run time of finished tasks

    @property
    def mean_wait_s(self) -> float:
        return self.wait_s / self.finished if self.finished else 0.0

    @property
    def mean_run_s(self) -> float:
        return self.run_s / self.finished if self.finished else 0.0


# -- the metrics history -------------------------------------------------------------------


def hist_add(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """Two histograms added bucket by bucket; the shorter counts as zeros beyond its end."""
    return tuple(x + y for x, y in zip_longest(a, b, fillvalue=0))


@dataclass(frozen=True, slots=True, kw_only=True)
class RollupRow:
    """One row of the metrics history: what happened in [start, start + bucket_s) for one
    pool, task type and worker (worker_id "" for submissions)."""

    pool: str
    task_type: str
    worker_id: WorkerId
    start: float  # epoch seconds, a multiple of bucket_s
    bucket_s: int  # 60 as written, 3600 once compacted
    submitted: int = 0
    completed: int = 0  # attempts that ended, any outcome
    failed: int = 0  # attempts that failed
    wait_count: int = 0
    wait_sum: float = 0.0
    run_count: int = 0
    run_sum: float = 0.0
    wait_hist: tuple[int, ...] = ()  # counts per rollups.HIST_EDGES bucket; () = all zero
    run_hist: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, str, WorkerId, int, float]:
        """What identifies the row in the store."""
        return (self.pool, self.task_type, self.worker_id, self.bucket_s, self.start)

    def plus(self, other: RollupRow) -> RollupRow:
        """This row with `other`'s counts, sums and histograms added (its key is kept)."""
        return RollupRow(
            pool=self.pool,
            task_type=self.task_type,
            worker_id=self.worker_id,
            start=self.start,
            bucket_s=self.bucket_s,
            submitted=self.submitted + other.submitted,
            completed=self.completed + other.completed,
            failed=self.failed + other.failed,
            wait_count=self.wait_count + other.wait_count,
            wait_sum=self.wait_sum + other.wait_sum,
            run_count=self.run_count + other.run_count,
            run_sum=self.run_sum + other.run_sum,
            wait_hist=hist_add(self.wait_hist, other.wait_hist),
            run_hist=hist_add(self.run_hist, other.run_hist),
        )
