"""A pool's strategy arms: its strategy and, under an A/B split, a second one.

Each arm keeps one strategy index per task type and counts how the tasks it placed
went, so that a split can be compared and an adaptive strategy can learn.
"""

from __future__ import annotations

from broker.core.strategies import Strategy, StrategyEnv, make_strategy
from broker.domain import PoolConfig

# Re-exported: the value moved to broker.stats, below the store.
from broker.stats import ArmStats as ArmStats


class Arm:
    """One strategy of the pool, with an index per task type, and its results."""

    def __init__(self, strategy: str, env: StrategyEnv) -> None:
        make_strategy(strategy, env)  # KeyError for an unknown name, before anything changes
        self.strategy = strategy
        self.env = env
        self.indexes: dict[str, Strategy] = {}
        self.stats = ArmStats(strategy)

    def index(self, task_type: str) -> Strategy:
        index = self.indexes.get(task_type)
        if index is None:
            index = self.indexes[task_type] = self.make_index()
        return index

    def make_index(self) -> Strategy:
        """A new, empty index of this arm's strategy."""
        return make_strategy(self.strategy, self.env)


def make_arms(strategy: str, config: PoolConfig, env: StrategyEnv) -> list[Arm]:
    """The arm of `strategy`, then the A/B arm if the config splits the pool; KeyError
    for an unknown strategy, before anything changes."""
    arms = [Arm(strategy, env)]
    if config.ab_strategy and config.ab_percent:
        arms.append(Arm(config.ab_strategy, env))
    return arms
