"""Sizing pools: the M/M/c formulas against textbook values, the forecasters against
synthetic histories, and a recommendation on a recorded history against the formula."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable
from fractions import Fraction

import pytest

from broker.observability.recommend import (
    DAY,
    erlang_b,
    erlang_c,
    forecast_rate,
    mean_wait,
    rate_series,
    recommend,
    servers_for,
)
from broker.observability.rollups import (
    HOUR,
    MINUTE,
    MetricPoint,
    RollupRow,
    hist_bucket,
    points_from_rows,
)

NOW = 1_700_006_400.0  # a whole hour (and so a whole minute): 2023-11-15 00:00 UTC
assert NOW % HOUR == 0


def textbook_erlang_c(servers: int, offered: Fraction) -> Fraction:
    """P(wait) by the closed form, in exact arithmetic (for small c only)."""
    top = offered**servers / math.factorial(servers) * servers / (servers - offered)
    below = sum(offered**k / math.factorial(k) for k in range(servers))
    return top / (below + top)


# -- Erlang C ------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.01, 0.3, 0.5, 0.9, 0.999])
def test_one_server_waits_with_probability_rho(rho: float) -> None:
    assert erlang_c(1, rho * 3.0, 3.0) == pytest.approx(rho, rel=1e-12)
    # M/M/1: Wq = rho / (mu - lambda)
    assert mean_wait(1, rho * 3.0, 3.0) == pytest.approx(rho / (3.0 - rho * 3.0), rel=1e-12)


def test_the_textbook_case_lambda_2_mu_1_c_3() -> None:
    # a = 2, B(3, 2) = 4/19, C = B / (1 - rho (1 - B)) = (4/19) / (9/19) = 4/9; Wq = C / 1.
    assert erlang_b(3, 2.0) == pytest.approx(4 / 19, rel=1e-12)
    assert erlang_c(3, 2.0, 1.0) == pytest.approx(4 / 9, rel=1e-12)
    assert mean_wait(3, 2.0, 1.0) == pytest.approx(4 / 9, rel=1e-12)


@pytest.mark.parametrize(
    ("servers", "arrival_rate", "service_rate"),
    [(2, 1, 1), (5, 4, 1), (10, 15, 2), (20, 38, 2), (30, 7, 0.25), (60, 55, 1)],
)
def test_erlang_c_matches_the_closed_form(
    servers: int, arrival_rate: float, service_rate: float
) -> None:
    offered = Fraction(arrival_rate) / Fraction(service_rate)
    expected = textbook_erlang_c(servers, offered)
    assert erlang_c(servers, arrival_rate, service_rate) == pytest.approx(float(expected), 1e-12)
    wait = expected / (servers * Fraction(service_rate) - Fraction(arrival_rate))
    assert mean_wait(servers, arrival_rate, service_rate) == pytest.approx(float(wait), 1e-12)


def test_erlang_c_stays_finite_for_thousands_of_servers() -> None:
    # The factorial formula overflows floats here; the recursion does not.
    waits = erlang_c(5000, 4900.0, 1.0)
    assert 0.0 < waits < 1.0
    assert mean_wait(5000, 4900.0, 1.0) == pytest.approx(waits / 100.0)


def test_more_servers_wait_less_and_more_arrivals_wait_more() -> None:
    by_servers = [erlang_c(c, 8.0, 1.0) for c in range(9, 40)]
    assert all(a > b for a, b in itertools.pairwise(by_servers))
    waits = [mean_wait(c, 8.0, 1.0) for c in range(9, 40)]
    assert all(a > b for a, b in itertools.pairwise(waits))
    by_load = [erlang_c(10, rate, 1.0) for rate in (1.0, 3.0, 5.0, 7.0, 9.0, 9.9)]
    assert all(a < b for a, b in itertools.pairwise(by_load))


def test_unstable_and_idle_queues() -> None:
    assert erlang_c(2, 2.0, 1.0) == 1.0  # rho = 1
    assert erlang_c(0, 1.0, 1.0) == 1.0
    assert mean_wait(2, 3.0, 1.0) == math.inf
    assert mean_wait(0, 1.0, 1.0) == math.inf
    assert erlang_c(3, 0.0, 1.0) == 0.0
    assert mean_wait(0, 0.0, 1.0) == 0.0
    assert servers_for(1.0, 0.0, 1.0) == 0


@pytest.mark.parametrize(
    ("target", "arrival_rate", "service_rate"),
    [
        (0.5, 2.0, 1.0),
        (0.1, 10.0, 2.0),
        (0.01, 10.0, 2.0),
        (5.0, 0.1, 0.01),
        (0.001, 400.0, 1.0),
        (1.0, 0.001, 1.0),
    ],
)
def test_servers_for_meets_the_target_and_one_fewer_does_not(
    target: float, arrival_rate: float, service_rate: float
) -> None:
    servers = servers_for(target, arrival_rate, service_rate)
    assert mean_wait(servers, arrival_rate, service_rate) <= target
    assert mean_wait(servers - 1, arrival_rate, service_rate) > target


def test_servers_for_the_textbook_case() -> None:
    assert servers_for(0.5, 2.0, 1.0) == 3  # Wq(3) = 4/9 s; 2 servers are saturated
    assert servers_for(0.4, 2.0, 1.0) == 4


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: erlang_c(2, -1.0, 1.0), "arrival rate"),
        (lambda: erlang_c(2, 1.0, 0.0), "service rate"),
        (lambda: mean_wait(2, math.nan, 1.0), "arrival rate"),
        (lambda: servers_for(0.0, 1.0, 1.0), "target wait"),
        (lambda: servers_for(1.0, 1.0, math.inf), "service rate"),
    ],
)
def test_nonsense_is_refused(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# -- forecasting ---------------------------------------------------------------------------


def point(start: float, submitted: int, bucket_s: int = MINUTE, pool: str = "p") -> MetricPoint:
    return MetricPoint(
        start=start,
        bucket_s=bucket_s,
        pool=pool,
        task_type="",
        worker_id="",
        submitted=submitted,
        completed=0,
        failed=0,
        wait_mean_s=0.0,
        wait_p50_s=0.0,
        wait_p99_s=0.0,
        run_mean_s=0.0,
        run_p50_s=0.0,
        run_p99_s=0.0,
    )


def test_rate_series_spreads_wide_points_and_fills_gaps_with_zero() -> None:
    points = [point(NOW - 2 * HOUR, 7200, HOUR), point(NOW - 2 * MINUTE, 120)]
    series = rate_series(points, MINUTE, NOW - 2 * HOUR, NOW)
    assert len(series) == 120
    assert series[:60] == [2.0] * 60  # the hour's 7200 arrivals, 2/s in every minute
    assert series[60:118] == [0.0] * 58
    assert series[118:] == [2.0, 0.0]


def test_a_linear_trend_is_extrapolated() -> None:
    # One more arrival every minute than the minute before: from 1/s three hours ago.
    minutes = 180
    points = [point(NOW - (minutes - i) * MINUTE, 60 + i) for i in range(minutes)]
    rate, method, reasoning = forecast_rate(points, NOW, 15 * MINUTE)
    # The next 15 minutes are indices 180..194, their mean rate (60 + 187) / 60.
    assert method == "holt"
    assert rate == pytest.approx((60 + 187) / 60, rel=1e-9)
    assert any("trend +0.0167/s per minute" in line for line in reasoning)


def test_a_flat_history_forecasts_its_rate_and_an_empty_one_nothing() -> None:
    points = [point(NOW - i * MINUTE, 90) for i in range(1, 61)]
    assert forecast_rate(points, NOW, 600).rate_per_s == pytest.approx(1.5)
    assert forecast_rate([], NOW, 600)[:2] == (0.0, "none")
    few = forecast_rate([point(NOW - MINUTE, 60), point(NOW - 2 * MINUTE, 180)], NOW, 600)
    assert few.method == "mean"
    assert few.rate_per_s == pytest.approx(2.0)


def business_hours(at: float) -> float:
    """Arrivals per second: 20/s from 9:00 to 17:00 UTC, 2/s otherwise."""
    return 20.0 if 9 <= (at % DAY) / HOUR < 17 else 2.0


def daily_history(days: float, noise: float = 0.05) -> list[MetricPoint]:
    """Hourly points (as compaction leaves them) up to a day ago, then minute points."""
    rng = random.Random(7)
    points = []
    at = NOW - days * DAY
    while at < NOW:
        step = HOUR if at < NOW - DAY else MINUTE
        rate = business_hours(at) * (1 + rng.uniform(-noise, noise))
        points.append(point(at, round(rate * step), step))
        at += step
    return points


def test_a_daily_pattern_is_forecast_from_the_season() -> None:
    # Stand at 09:00 on the fourth day: the last six hours were quiet, the next is busy.
    now = NOW - DAY + 9 * HOUR
    seen = [p for p in daily_history(days=4) if p.start + p.bucket_s <= now]
    truth = business_hours(now)  # 20/s
    seasonal = forecast_rate(seen, now, HOUR)
    flat = forecast_rate(seen, now, HOUR, seasonal=False)
    assert seasonal.method == "holt-winters"
    assert flat.method == "holt"
    assert abs(seasonal.rate_per_s - truth) < abs(flat.rate_per_s - truth)
    assert seasonal.rate_per_s == pytest.approx(truth, rel=0.15)
    assert any("daily season" in line for line in seasonal.reasoning)


def test_the_season_needs_two_days_of_history() -> None:
    points = daily_history(days=1.9)
    assert forecast_rate(points, NOW, HOUR).method == "holt"
    points = daily_history(days=2.0)
    assert forecast_rate(points, NOW, HOUR).method == "holt-winters"


# -- the recommendation --------------------------------------------------------------------


def recorded_history(
    rate_per_s: float, mean_run_s: float, hours: int = 2, workers: int = 3
) -> list[RollupRow]:
    """The rows two hours of steady traffic leave: submissions under worker "", attempts
    spread over the workers."""
    rows = []
    per_minute = round(rate_per_s * MINUTE)
    for minute in range(hours * 60):
        start = NOW - (hours * 60 - minute) * MINUTE
        rows.append(
            RollupRow(
                pool="p",
                task_type="t",
                worker_id="",
                start=start,
                bucket_s=MINUTE,
                submitted=per_minute,
            )
        )
        for w in range(workers):
            share = per_minute // workers + (w < per_minute % workers)
            hist = [0] * 42
            hist[hist_bucket(mean_run_s)] = share
            rows.append(
                RollupRow(
                    pool="p",
                    task_type="t",
                    worker_id=f"w{w}",
                    start=start,
                    bucket_s=MINUTE,
                    completed=share,
                    failed=share // 10,
                    run_count=share,
                    run_sum=share * mean_run_s,
                    run_hist=tuple(hist),
                )
            )
    return rows


def test_a_recommendation_on_a_recorded_history_is_the_formula_s() -> None:
    # 10 tasks/s of 0.5 s each: mu = 2/s, a = 5 slots busy. Aim for a 0.1 s mean wait.
    points = points_from_rows(recorded_history(10.0, 0.5))
    found = recommend(
        "p",
        points,
        now=NOW,
        current_workers=1,
        slots_per_worker=4.0,
        target_wait_s=0.1,
        horizon_s=900,
    )
    offered = Fraction(5)
    servers = next(
        c for c in range(6, 100) if textbook_erlang_c(c, offered) / (2 * c - 10) <= Fraction(1, 10)
    )
    waits = textbook_erlang_c(servers, offered)
    assert servers == 7  # Wq(6) = 0.294 s, Wq(7) = 0.081 s
    assert found.pool == "p"
    assert found.method == "holt"
    assert found.arrival_rate_per_s == pytest.approx(10.0)
    assert found.mean_run_s == pytest.approx(0.5)
    assert found.servers == servers
    assert found.probability_of_wait == pytest.approx(float(waits), rel=1e-6)
    assert found.expected_wait_s == pytest.approx(float(waits / (2 * servers - 10)), rel=1e-6)
    assert found.utilisation == pytest.approx(10 / (servers * 2))
    assert found.slots_per_worker == 4.0
    assert (found.current_workers, found.recommended_workers) == (1, 2)  # ceil(7 / 4)
    text = "\n".join(found.reasoning)
    for shown in ("lambda = 10/s", "mu = 1 / 0.5 s = 2/s", "a = lambda / mu = 5", "c = 7 slots"):
        assert shown in text
    assert "workers = ceil(c / 4 slots per worker) = 2 (now 1)" in text
    assert "now 1 worker(s), 4 slots: Wq = unbounded (the queue grows)" in text


def test_a_recommendation_is_per_pool_and_uses_the_textbook_case() -> None:
    # lambda = 2/s, mean run 1 s, target 0.5 s: c = 3 (Wq = 4/9 s), 1 slot per worker.
    rows = recorded_history(2.0, 1.0)
    other = [dataclasses.replace(row, pool="q") for row in recorded_history(50.0, 1.0)]
    found = recommend(
        "p",
        points_from_rows(rows + other),
        now=NOW,
        current_workers=3,
        slots_per_worker=1.0,
        target_wait_s=0.5,
    )
    assert found.servers == 3
    assert found.recommended_workers == 3
    assert found.expected_wait_s == pytest.approx(4 / 9, rel=1e-6)
    assert found.probability_of_wait == pytest.approx(4 / 9, rel=1e-6)


def test_no_arrivals_and_no_backlog_scale_to_zero_and_a_backlog_does_not() -> None:
    idle = recommend("p", [], now=NOW, current_workers=2, slots_per_worker=2.0)
    assert (idle.recommended_workers, idle.servers, idle.arrival_rate_per_s) == (0, 0, 0.0)
    assert "scale to zero" in idle.reasoning[-1]
    history = [row for row in recorded_history(2.0, 1.0) if not row.submitted]  # runs only
    waiting = recommend(
        "p",
        points_from_rows(history),
        now=NOW,
        current_workers=0,
        slots_per_worker=2.0,
        target_wait_s=1.0,
        horizon_s=100.0,
        backlog=50,
    )
    # 50 waiting over 100 s: lambda = 0.5/s; mu = 1/s; one slot gives Wq = 0.5 / 0.5 = 1 s.
    assert waiting.arrival_rate_per_s == pytest.approx(0.5)
    assert waiting.servers == 1
    assert waiting.recommended_workers == 1
    assert any("50 waiting / 100 s" in line for line in waiting.reasoning)


def test_without_run_times_the_current_count_is_kept() -> None:
    points = [point(NOW - i * MINUTE, 60) for i in range(1, 30)]
    found = recommend("p", points, now=NOW, current_workers=4, slots_per_worker=1.0)
    assert found.recommended_workers == 4
    assert found.servers == 0
    assert "no run times" in found.reasoning[-1]
    cold = recommend("p", points, now=NOW, current_workers=0, slots_per_worker=1.0)
    assert cold.recommended_workers == 1


def test_recommend_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="slots_per_worker"):
        recommend("p", [], now=NOW, current_workers=1, slots_per_worker=0.0)
    with pytest.raises(ValueError, match="backlog"):
        recommend("p", [], now=NOW, current_workers=1, slots_per_worker=1.0, backlog=-1)
    with pytest.raises(ValueError, match="horizon"):
        recommend("p", [], now=NOW, current_workers=1, slots_per_worker=1.0, horizon_s=0.0)


# -- short histories and pauses ------------------------------------------------------------


def test_a_short_steady_history_is_not_extrapolated_into_growth() -> None:
    # Two minutes into a steady 9/s that started halfway through a minute, 30 s into the next.
    points = [
        point(NOW - 3 * MINUTE, 270),
        point(NOW - 2 * MINUTE, 540),
        point(NOW - MINUTE, 540),
        point(NOW, 270),
    ]
    forecast = forecast_rate(points, NOW + 30, 15 * MINUTE)
    assert 8.5 <= forecast.rate_per_s <= 9.9, forecast
    assert any("damped" in line for line in forecast.reasoning)


def test_a_quiet_spell_after_work_keeps_the_learned_run_time_and_some_workers() -> None:
    history = points_from_rows(recorded_history(9.0, 0.5, hours=1))
    # Three quiet minutes after an hour of 9/s: the trend falls, the work was recent.
    paused = recommend(
        "p", history, now=NOW + 3 * MINUTE + 30, current_workers=3, slots_per_worker=4.0
    )
    assert paused.mean_run_s == pytest.approx(0.5, rel=0.2)
    assert paused.arrival_rate_per_s > 1.0
    assert paused.recommended_workers >= 1
    # Long after: nothing forecast, 0 workers, and the run time learned still shows.
    idle = recommend("p", history, now=NOW + 3 * HOUR, current_workers=3, slots_per_worker=4.0)
    assert idle.recommended_workers == 0
    assert idle.mean_run_s == pytest.approx(0.5, rel=0.2)
