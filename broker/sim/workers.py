"""The simulated workers: what each runs, and an independent check of each placement.

The check does not trust the scheduler: the worker must be connected and not
draining, take the task's type, have a free slot, carry the required labels and run
no task that hard anti-affinity excludes. Any miss is a constraint violation; there
should be none.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.domain import Task, WorkerId
from broker.sim.workload import SimWorker


@dataclass(slots=True)
class Attempt:
    """One attempt of a task on a simulated worker, and how it will end."""

    run_id: int
    task: Task
    worker_id: WorkerId
    started_s: float
    queue_wait_s: float
    success: bool
    ends_s: float = 0.0  # when it will end, unless stopped first


@dataclass(slots=True)
class ConnectedWorker:
    """A simulated worker while it is connected."""

    spec: SimWorker
    joined_s: float
    running: dict[int, Attempt] = field(default_factory=dict)  # by task id
    draining: bool = False
    warm: OrderedDict[str, None] = field(default_factory=OrderedDict)


def violation(task: Task, worker: ConnectedWorker) -> str | None:
    """Why the worker may not take this task now, by the placement rules; None if it may."""
    spec = worker.spec
    hints = task.spec.placement
    if worker.draining:
        return "the worker is draining"
    if task.spec.task_type not in spec.task_types:
        return f"the worker does not take type {task.spec.task_type!r}"
    if len(worker.running) >= spec.capacity:
        return f"the worker runs {len(worker.running)} tasks already (capacity {spec.capacity})"
    missing = {k: v for k, v in hints.required_labels.items() if spec.labels.get(k) != v}
    if missing:
        return f"the worker lacks required labels {_format_labels(missing)}"
    if group := hints.anti_affinity_group:
        for attempt in worker.running.values():
            other = attempt.task.spec.placement
            if other.anti_affinity_group == group and not (
                hints.anti_affinity_soft and other.anti_affinity_soft
            ):
                return f"the worker runs task {attempt.task.id} of anti-affinity group {group!r}"
    return None


def _format_labels(labels: Mapping[str, str]) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))
