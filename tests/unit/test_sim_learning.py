"""What the learning strategies promise, measured in the simulator over five fixed seeds:
predictive near the oracle on heterogeneous workers, telling apart workers with the same
labels, and adaptive switching when one strategy is better and settling when none is."""

from __future__ import annotations

import pytest

from broker.sim.oracle import ORACLE
from broker.sim.run import compare
from broker.sim.scenarios import build_scenario

SEEDS = range(5)
_LEARNING = ["predictive", "weighted_response_time"]


@pytest.mark.parametrize("seed", SEEDS)
def test_predictive_is_near_the_oracle_on_heterogeneous_workers(seed: int) -> None:
    workload = build_scenario("heterogeneous", tasks=3000, seed=seed)
    rr, predictive, oracle = compare(workload, ["round_robin", "predictive", ORACLE], seed=seed)
    assert rr.violations == predictive.violations == oracle.violations == 0
    assert predictive.completed == rr.completed == 3000
    assert predictive.response_mean_s <= 0.6 * rr.response_mean_s
    assert predictive.response_mean_s <= 1.15 * oracle.response_mean_s
    assert predictive.response_p99_s <= rr.response_p99_s
    assert predictive.makespan_s <= rr.makespan_s


@pytest.mark.parametrize("seed", SEEDS)
def test_predictive_tells_apart_two_workers_with_the_same_labels(seed: int) -> None:
    workload = build_scenario("same-labels", tasks=2000, seed=seed)
    (predictive,) = compare(workload, ["predictive"], seed=seed)
    # The quick worker can absorb all the work (60 % of the pair's capacity is 72 % of
    # its own): it must get at least 80 % of it.
    assert predictive.placed_on["quick-1"] >= 0.8 * sum(predictive.placed_on.values())
    (rr,) = compare(workload, ["round_robin"], seed=seed)
    assert rr.placed_on["quick-1"] < predictive.placed_on["quick-1"]


@pytest.mark.parametrize("seed", SEEDS)
def test_adaptive_switches_to_a_better_strategy_within_500_tasks(seed: int) -> None:
    workload = build_scenario("one-better", tasks=1000, seed=seed)
    results = {
        r.strategy: r
        for r in compare(workload, ["least_loaded", "adaptive", *_LEARNING], seed=seed)
    }
    baseline = results["least_loaded"].response_mean_s
    better = [n for n in _LEARNING if results[n].response_mean_s <= 0.8 * baseline]
    assert better, "the scenario has a strategy 20 % better than adaptive's first arm"
    adaptive = results["adaptive"]
    assert adaptive.switched_at
    assert adaptive.switched_at[0] <= 500
    assert adaptive.active in better
    assert len(adaptive.switched_at) == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_adaptive_settles_in_stationary_traffic(seed: int) -> None:
    workload = build_scenario("steady", tasks=5000, seed=seed)
    (adaptive,) = compare(workload, ["adaptive"], seed=seed)
    assert adaptive.active
    assert len(adaptive.switched_at) <= 1
