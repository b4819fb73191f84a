"""The placement simulator: replay a workload through the broker's own task lifecycle
on a virtual clock, once per strategy, and measure placement.

The workload (broker.sim.workload) is workers, their comings and goings, and tasks
with their arrival times and run times per worker class; it comes from a built-in
scenario (broker.sim.scenarios) or a trace file (broker.sim.traces). A run
(broker.sim.run) submits the tasks to a `TaskLifecycle` (broker.core.lifecycle), the
same core the broker's engine runs, and plays the workers that the lifecycle's
placements go to: retries and dead letters, leases, bulkheads and circuit breakers
act as they do in the broker. Hours of simulated time take seconds.

This module is the simulator's public face: import from here.
"""

from __future__ import annotations

from broker.sim.results import ROW_KEYS, SimResult, percentile
from broker.sim.run import MAX_IDLE_WAKES, check_strategies, compare, simulate, strategy_names
from broker.sim.traces import load_trace, parse_workers
from broker.sim.workload import (
    ANY_CLASS,
    DEFAULT_CLASS,
    DEFAULT_TRACE_WORKERS,
    DURATION_PREFIX,
    POOL,
    SimTask,
    SimulationError,
    SimWorker,
    TraceError,
    WorkerChange,
    WorkerEvent,
    Workload,
    check_workload,
    classes_by_type,
    task_problem,
)

__all__ = [
    "ANY_CLASS",
    "DEFAULT_CLASS",
    "DEFAULT_TRACE_WORKERS",
    "DURATION_PREFIX",
    "MAX_IDLE_WAKES",
    "POOL",
    "ROW_KEYS",
    "SimResult",
    "SimTask",
    "SimWorker",
    "SimulationError",
    "TraceError",
    "WorkerChange",
    "WorkerEvent",
    "Workload",
    "check_strategies",
    "check_workload",
    "classes_by_type",
    "compare",
    "load_trace",
    "parse_workers",
    "percentile",
    "simulate",
    "strategy_names",
    "task_problem",
]
