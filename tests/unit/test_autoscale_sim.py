"""The autoscaling simulation (broker.sim.autoscale): one trace with a daily season, three
rules on it, and the numbers each rule's mechanics must produce."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from broker.observability.recommend import DAY, recommend
from broker.sim.autoscale import (
    POOL,
    RULES,
    Outcome,
    Setup,
    Trace,
    arrival_rate,
    compare,
    fixed_workers,
    make_trace,
    simulate,
    table,
)

# A lighter day than the README's, refitted less often, so that the test takes seconds.
SETUP = Setup(seed=3, load=0.5, predict_every_s=900.0)


@pytest.fixture(scope="module")
def compared() -> tuple[Trace, list[Outcome]]:
    return compare(SETUP)


def test_the_trace_has_a_daily_season_and_is_the_same_for_a_seed() -> None:
    trace = make_trace(SETUP)
    assert make_trace(SETUP) == trace
    assert make_trace(Setup(seed=4, load=0.5)) != trace
    by_hour = Counter(int((at - trace.start) // 3600) for at in trace.arrivals)
    assert by_hour[10] > 8 * by_hour[3]
    assert all(trace.start <= at < trace.start + DAY for at in trace.arrivals)
    expected = sum(arrival_rate(m / 60) for m in range(24 * 60)) * 60 * SETUP.load
    assert 0.85 * expected < len(trace.arrivals) < 1.15 * expected
    # The history covers the days before, so the broker's forecast is seasonal.
    rec = recommend(
        POOL, trace.history, now=trace.start + 7.75 * 3600, current_workers=1, slots_per_worker=4
    )
    assert rec.method == "holt-winters"


def test_every_rule_runs_every_task(compared: tuple[Trace, list[Outcome]]) -> None:
    trace, outcomes = compared
    assert [o.rule for o in outcomes] == [*RULES, "predictive"]
    for outcome in outcomes:
        assert outcome.tasks == len(trace.arrivals)
        assert 0 <= outcome.wait_p50_s <= outcome.wait_p99_s
        assert outcome.worker_hours > 0


def test_the_fixed_pool_pays_for_the_peak_all_day(compared: tuple[Trace, list[Outcome]]) -> None:
    trace, outcomes = compared
    (fixed,) = [o for o in outcomes if o.rule == "fixed"]
    workers = fixed_workers(SETUP, trace.peak_rate)
    assert fixed.worker_hours == pytest.approx(24 * workers)
    assert fixed.peak_workers == workers


def test_scaling_saves_worker_hours_and_the_target_trades_them_for_wait(
    compared: tuple[Trace, list[Outcome]],
) -> None:
    _trace, outcomes = compared
    fixed, reactive, predictive, tight = outcomes
    assert predictive.worker_hours < reactive.worker_hours < fixed.worker_hours
    assert tight.worker_hours > predictive.worker_hours
    assert tight.wait_p99_s < predictive.wait_p99_s
    # The tight target meets its mean within the model's error.
    assert tight.wait_mean_s < 2 * tight.target_wait_s


def test_a_slower_worker_start_costs_the_reactive_rule_wait() -> None:
    trace = make_trace(SETUP)
    quick = simulate(SETUP, trace, "reactive")
    slow = simulate(Setup(seed=3, load=0.5, startup_s=180.0), trace, "reactive")
    assert slow.wait_p99_s > quick.wait_p99_s


def test_the_table_has_a_row_per_outcome(compared: tuple[Trace, list[Outcome]]) -> None:
    trace, outcomes = compared
    rows = table(SETUP, trace, outcomes).splitlines()
    assert len(rows) == 2 + len(outcomes)
    assert f"{outcomes[0].worker_hours:.1f}" in rows[2]
    assert "target wait 0.1 s" in rows[-1]


def test_an_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown rule"):
        simulate(SETUP, make_trace(SETUP), "guess")
    assert math.isfinite(arrival_rate(12.5))
