"""Placement strategies: which ready worker gets the next task.

A strategy is an index over the workers that can take a task right now (they
have free credit and are not draining). The scheduler tells it when a worker
becomes ready, stops being ready, or changes load, and asks it to pick one for
a task. Keeping the index inside the strategy is what keeps a pick cheap in
big pools: no strategy scans every worker per task.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.core.strategies._base import Outcome, Strategy, StrategyEnv, WorkerSlot, default_env
from broker.core.strategies.adaptive import Adaptive
from broker.core.strategies.hashing import ConsistentHash
from broker.core.strategies.learning import WeightedResponseTime
from broker.core.strategies.predictive import Predictive
from broker.core.strategies.simple import LeastLoaded, RoundRobin

__all__ = [
    "STRATEGIES",
    "Adaptive",
    "ConsistentHash",
    "LeastLoaded",
    "Outcome",
    "Predictive",
    "RoundRobin",
    "Strategy",
    "StrategyEnv",
    "WeightedResponseTime",
    "WorkerSlot",
    "default_env",
    "make_strategy",
]

STRATEGIES: dict[str, Callable[[StrategyEnv | None], Strategy]] = {
    RoundRobin.name: RoundRobin,
    LeastLoaded.name: LeastLoaded,
    ConsistentHash.name: ConsistentHash,
    WeightedResponseTime.name: WeightedResponseTime,
    Predictive.name: Predictive,
    Adaptive.name: Adaptive,
}


def make_strategy(name: str, env: StrategyEnv | None = None) -> Strategy:
    """A new, empty strategy index by name; KeyError for an unknown name."""
    return STRATEGIES[name](env)
