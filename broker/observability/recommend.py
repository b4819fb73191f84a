"""How many workers a pool needs: forecast its arrivals, then size it as an M/M/c queue.

Pure functions over the metrics history (broker.observability.rollups), for
`taskbroker pools recommend`:

- `forecast_rate` forecasts the mean arrival rate over the next `horizon_s` seconds: Holt's
  linear trend (double exponential smoothing) over the recent per-minute arrival rates, or,
  once the history spans two days, Holt-Winters with additive daily seasonality over hourly
  rates, so that a pool busy every morning is sized for the morning before it starts;
- `erlang_c`, `mean_wait` and `servers_for` are the M/M/c queue: Poisson arrivals at rate
  lambda, exponential service at rate mu = 1 / mean run time on each of c slots;
- `recommend` puts them together into a worker count for a target mean queue wait, with
  every step written out, numbers included.

The model's assumptions (Poisson arrivals, exponential run times, one queue, no failures)
rarely hold exactly; the answer is a sizing estimate, and the reasoning says what went in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from broker.observability.rollups import HOUR, MINUTE, MetricPoint

DAY: Final = 86_400
SEASONAL_MIN_HISTORY_S: Final = 2 * DAY  # history needed for the daily season
_TREND_WINDOW_S: Final = 6 * HOUR  # per-minute rates Holt's method looks at
_SEASONAL_WINDOW_S: Final = 14 * DAY  # hourly rates Holt-Winters looks at
_RUN_WINDOW_S: Final = DAY  # run times averaged over this much recent history
# A trend fitted to n < this many minutes is damped by (n / this) squared: a few minutes
# of a load starting up (its first minute partial) are no evidence that it keeps growing.
TRUSTED_TREND_MINUTES: Final = 30
_MAX_SERVERS: Final = 10_000_000

# Smoothing parameters are fitted on a grid, by the one-step-ahead squared error.
_ALPHAS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
_BETAS: Final = (0.01, 0.05, 0.1, 0.2, 0.4)
_GAMMAS: Final = (0.05, 0.1, 0.2, 0.4)


# -- the M/M/c queue -----------------------------------------------------------------------


def _check_rates(arrival_rate: float, service_rate: float) -> None:
    if not (math.isfinite(arrival_rate) and arrival_rate >= 0):
        raise ValueError(f"the arrival rate must be finite and >= 0, got {arrival_rate}")
    if not (math.isfinite(service_rate) and service_rate > 0):
        raise ValueError(f"the service rate must be finite and > 0, got {service_rate}")


def erlang_b(servers: int, offered_load: float) -> float:
    """Erlang B: the probability that all `servers` are busy in a loss system offered
    `offered_load` erlangs, by the stable recursion B(k) = a B(k-1) / (k + a B(k-1))."""
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return blocking


def erlang_c(servers: int, arrival_rate: float, service_rate: float) -> float:
    """Erlang C: the probability that an arriving task waits in an M/M/c queue.

    Computed from Erlang B (C = B / (1 - rho (1 - B)), rho = lambda / (c mu)), which stays
    accurate for thousands of servers where the factorial formula overflows. 1.0 when the
    queue is unstable (rho >= 1), 0.0 when nothing arrives.
    """
    _check_rates(arrival_rate, service_rate)
    if arrival_rate == 0:
        return 0.0
    if servers <= 0:
        return 1.0
    offered = arrival_rate / service_rate
    rho = offered / servers
    if rho >= 1:
        return 1.0
    blocking = erlang_b(servers, offered)
    return blocking / (1 - rho * (1 - blocking))


def mean_wait(servers: int, arrival_rate: float, service_rate: float) -> float:
    """The mean queue wait Wq = C / (c mu - lambda) of an M/M/c queue, in seconds; inf when
    it is unstable (c mu <= lambda), 0.0 when nothing arrives."""
    _check_rates(arrival_rate, service_rate)
    if arrival_rate == 0:
        return 0.0
    spare = servers * service_rate - arrival_rate
    if servers <= 0 or spare <= 0:
        return math.inf
    return erlang_c(servers, arrival_rate, service_rate) / spare


def servers_for(target_wait_s: float, arrival_rate: float, service_rate: float) -> int:
    """The fewest servers c for which the mean queue wait is at most `target_wait_s`; 0 when
    nothing arrives."""
    _check_rates(arrival_rate, service_rate)
    if not target_wait_s > 0:
        raise ValueError(f"the target wait must be positive, got {target_wait_s}")
    if arrival_rate == 0:
        return 0
    offered = arrival_rate / service_rate
    servers = math.floor(offered) + 1  # the fewest with rho < 1
    blocking = erlang_b(servers, offered)
    while servers <= _MAX_SERVERS:
        rho = offered / servers
        waits = blocking / (1 - rho * (1 - blocking))
        if waits / (servers * service_rate - arrival_rate) <= target_wait_s:
            return servers
        servers += 1
        blocking = offered * blocking / (servers + offered * blocking)
    raise ValueError(f"more than {_MAX_SERVERS} servers would be needed")


# -- forecasting arrivals ------------------------------------------------------------------


class Forecast(NamedTuple):
    """A forecast mean arrival rate, how it was made, and the steps in words."""

    rate_per_s: float
    method: str  # "none", "mean", "holt" or "holt-winters"
    reasoning: tuple[str, ...]


def rate_series(points: Sequence[MetricPoint], step: int, first: float, end: float) -> list[float]:
    """Arrivals per second in each `step`-second bucket of [first, end) (both multiples of
    `step`), from points of any width: a wider point is spread evenly over its buckets.
    A bucket no point covers had no arrivals."""
    buckets = max(0, int((end - first) // step))
    counts = [0.0] * buckets
    for point in points:
        point_end = point.start + point.bucket_s
        if not point.submitted or point_end <= first or point.start >= end:
            continue
        density = point.submitted / point.bucket_s
        low = max(0, int((point.start - first) // step))
        high = min(buckets, math.ceil((point_end - first) / step))
        for index in range(low, high):
            bucket_start = first + index * step
            overlap = min(bucket_start + step, point_end) - max(bucket_start, point.start)
            if overlap > 0:
                counts[index] += density * overlap
    return [count / step for count in counts]


def forecast_rate(
    points: Sequence[MetricPoint], now: float, horizon_s: float, *, seasonal: bool = True
) -> Forecast:
    """The mean arrival rate (tasks per second) forecast over [now, now + horizon_s).

    With two days of history (and `seasonal`), Holt-Winters over hourly rates with a 24 h
    season; otherwise Holt's linear trend over the last six hours of per-minute rates; with
    under three complete minutes, their mean. Only complete buckets before `now` are used.
    """
    if not horizon_s > 0:
        raise ValueError(f"the horizon must be positive, got {horizon_s}")
    arrivals = [p for p in points if p.submitted and p.start < now]
    if not arrivals:
        return Forecast(0.0, "none", ("no arrivals in the history: forecast 0/s",))
    earliest = min(p.start for p in arrivals)
    if seasonal and earliest <= now - SEASONAL_MIN_HISTORY_S:
        trend = _forecast_trend(arrivals, now, horizon_s)
        forecast = _forecast_seasonal(arrivals, earliest, now, horizon_s)
        return forecast._replace(
            reasoning=(
                *forecast.reasoning,
                f"(Holt's linear trend alone would forecast {trend.rate_per_s:.4g}/s)",
            )
        )
    return _forecast_trend(arrivals, now, horizon_s)


def _forecast_trend(points: Sequence[MetricPoint], now: float, horizon_s: float) -> Forecast:
    end = _floor(now, MINUTE)
    first = max(_floor(min(p.start for p in points), MINUTE), end - _TREND_WINDOW_S)
    series = rate_series(points, MINUTE, first, end)
    if len(series) < 3:
        if series:
            rate = sum(series) / len(series)
            span = f"{len(series)} complete minute(s)"
        else:  # only the current, incomplete minute
            submitted = sum(p.submitted for p in points if p.start + p.bucket_s > first)
            rate = submitted / max(now - first, 1.0)
            span = f"the last {now - first:.0f} s"
        return Forecast(rate, "mean", (f"too little history for a trend: mean of {span}",))
    fit = _fit_holt(series)
    reasoning = [
        f"history: {len(series)} per-minute arrival rates, mean {_mean(series):.4g}/s,"
        f" last {series[-1]:.4g}/s",
        f"Holt's linear trend (alpha={fit.alpha:g}, beta={fit.beta:g}, one-step RMSE"
        f" {fit.rmse:.3g}/s): level {fit.level:.4g}/s, trend {fit.trend:+.3g}/s per minute",
    ]
    trust = min(1.0, len(series) / TRUSTED_TREND_MINUTES) ** 2
    trend = fit.trend * trust
    if trust < 1:
        reasoning.append(
            f"a trend from {len(series)} minutes of history is damped to {trust:.2g} of"
            f" itself ({TRUSTED_TREND_MINUTES} minutes are trusted whole):"
            f" {trend:+.3g}/s per minute"
        )
    rate = _window_mean(lambda k: fit.level + k * trend, end, MINUTE, now, horizon_s)
    recent = series[-max(1, math.ceil(horizon_s / MINUTE)) :]
    if rate <= 0 and any(recent):
        # A falling trend says "nothing", but tasks arrived within a horizon: a pool that
        # paused is not sized to zero on a minute's quiet.
        rate = _mean(recent)
        reasoning.append(
            f"the trend forecasts no arrivals, but tasks arrived in the last {len(recent)}"
            f" minute(s): forecast their mean rate, {rate:.4g}/s"
        )
    reasoning.append(f"forecast mean over the next {_duration(horizon_s)}: {rate:.4g}/s")
    return Forecast(rate, "holt", tuple(reasoning))


def _forecast_seasonal(
    points: Sequence[MetricPoint], earliest: float, now: float, horizon_s: float
) -> Forecast:
    end = _floor(now, HOUR)
    first = max(_floor(earliest, HOUR), end - _SEASONAL_WINDOW_S)
    series = rate_series(points, HOUR, first, end)
    season = DAY // HOUR
    fit = _fit_holt_winters(series, season)
    n = len(series)

    def ahead(k: int) -> float:
        return fit.level + k * fit.trend + fit.seasonals[(n - 1 + k) % season]

    rate = _window_mean(ahead, end, HOUR, now, horizon_s)
    return Forecast(
        rate,
        "holt-winters",
        (
            f"history: {n} hourly arrival rates ({n / season:.1f} days), mean"
            f" {_mean(series):.4g}/s",
            f"Holt-Winters, additive daily season of 24 hourly terms (alpha={fit.alpha:g},"
            f" beta={fit.beta:g}, gamma={fit.gamma:g}, one-step RMSE {fit.rmse:.3g}/s):"
            f" level {fit.level:.4g}/s, trend {fit.trend:+.3g}/s per hour, season for the"
            f" next hour {fit.seasonals[n % season]:+.4g}/s",
            f"forecast mean over the next {_duration(horizon_s)}: {rate:.4g}/s",
        ),
    )


@dataclass(frozen=True, slots=True)
class _Fit:
    alpha: float
    beta: float
    gamma: float
    level: float
    trend: float  # per step
    seasonals: tuple[float, ...]  # indexed by step % season
    rmse: float  # of the one-step-ahead forecasts


def _fit_holt(series: Sequence[float]) -> _Fit:
    """Holt's linear trend with the grid's (alpha, beta) of least one-step error."""
    best: _Fit | None = None
    span = min(len(series) - 1, 10)
    initial_trend = (series[span] - series[0]) / span
    for alpha in _ALPHAS:
        for beta in _BETAS:
            level, trend, squared = series[0], initial_trend, 0.0
            for value in series[1:]:
                squared += (value - level - trend) ** 2
                new_level = alpha * value + (1 - alpha) * (level + trend)
                trend = beta * (new_level - level) + (1 - beta) * trend
                level = new_level
            rmse = math.sqrt(squared / (len(series) - 1))
            if best is None or rmse < best.rmse:
                best = _Fit(alpha, beta, 0.0, level, trend, (), rmse)
    assert best is not None
    return best


def _fit_holt_winters(series: Sequence[float], season: int) -> _Fit:
    """Additive Holt-Winters with the grid's (alpha, beta, gamma) of least one-step error.

    Starts from the first two seasons: the level is the first season's mean (moved to its
    end by the trend), the trend the change of the means per step, the seasonal terms the
    first season's deviations from that line.
    """
    first_mean = _mean(series[:season])
    initial_trend = (_mean(series[season : 2 * season]) - first_mean) / season
    initial_level = first_mean + initial_trend * (season - 1) / 2
    initial_seasonals = [
        value - (first_mean + initial_trend * (i - (season - 1) / 2))
        for i, value in enumerate(series[:season])
    ]
    best: _Fit | None = None
    for alpha in _ALPHAS:
        for beta in _BETAS:
            for gamma in _GAMMAS:
                level, trend = initial_level, initial_trend
                seasonals = list(initial_seasonals)
                squared = 0.0
                for t in range(season, len(series)):
                    value, seasonal = series[t], seasonals[t % season]
                    squared += (value - level - trend - seasonal) ** 2
                    new_level = alpha * (value - seasonal) + (1 - alpha) * (level + trend)
                    trend = beta * (new_level - level) + (1 - beta) * trend
                    seasonals[t % season] = gamma * (value - new_level) + (1 - gamma) * seasonal
                    level = new_level
                rmse = math.sqrt(squared / max(len(series) - season, 1))
                if best is None or rmse < best.rmse:
                    best = _Fit(alpha, beta, gamma, level, trend, tuple(seasonals), rmse)
    assert best is not None
    return best


def _window_mean(
    ahead: Callable[[int], float], end: float, step: int, now: float, horizon_s: float
) -> float:
    """The mean over [now, now + horizon_s) of a forecast whose k-th step (k >= 1) covers
    [end + (k-1) step, end + k step); a negative forecast counts as no arrivals."""
    window_end = now + horizon_s
    k = max(1, int((now - end) // step) + 1)
    total = 0.0
    while (step_start := end + (k - 1) * step) < window_end:
        overlap = min(step_start + step, window_end) - max(step_start, now)
        if overlap > 0:
            total += max(ahead(k), 0.0) * overlap
        k += 1
    return total / horizon_s


# -- the recommendation --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    """A worker count for one pool, and how it was reached: the wire's PoolRecommendation."""

    pool: str
    current_workers: int
    recommended_workers: int
    arrival_rate_per_s: float  # forecast for the next window (backlog included)
    mean_run_s: float
    slots_per_worker: float  # mean capacity of its workers (servers per worker)
    servers: int  # slots needed: c in M/M/c
    utilisation: float  # rho = lambda / (c mu) at the recommendation
    expected_wait_s: float  # Erlang C mean queue wait at the recommendation
    probability_of_wait: float  # Erlang C: P(a task waits)
    method: str  # how the arrival rate was forecast
    reasoning: tuple[str, ...]


def recommend(
    pool: str,
    points: Sequence[MetricPoint],
    *,
    now: float,
    current_workers: int,
    slots_per_worker: float,
    target_wait_s: float = 1.0,
    horizon_s: float = 900.0,
    backlog: int = 0,
) -> Recommendation:
    """How many workers `pool` needs over the next `horizon_s` seconds for a mean queue
    wait of at most `target_wait_s`, from its metrics history `points` (other pools'
    points are ignored).

    lambda is the forecast arrival rate plus the `backlog` (tasks waiting now) spread over
    the horizon; 1 / mu is the mean run time of the last day's attempts (of all the history
    if there were none); c = `servers_for(target, lambda, mu)`; the recommendation is
    ceil(c / slots_per_worker) workers. So it is at least 1 whenever anything is forecast
    or waiting, and 0 (scale to zero) when nothing is. Without any run time in the history
    there is nothing to size by, and it keeps the current count (at least 1).
    """
    if not slots_per_worker > 0:
        raise ValueError(f"slots_per_worker must be positive, got {slots_per_worker}")
    if backlog < 0:
        raise ValueError(f"backlog must not be negative, got {backlog}")
    points = [p for p in points if p.pool == pool]
    forecast = forecast_rate(points, now, horizon_s)
    arrival_rate = forecast.rate_per_s + backlog / horizon_s
    reasoning = list(forecast.reasoning)
    if backlog:
        reasoning.append(
            f"arrival rate lambda = {forecast.rate_per_s:.4g}/s forecast + {backlog} waiting"
            f" / {horizon_s:g} s = {arrival_rate:.4g}/s"
        )
    else:
        reasoning.append(f"arrival rate lambda = {arrival_rate:.4g}/s, nothing waiting")

    def result(workers: int, servers: int = 0, mean_run_s: float = 0.0) -> Recommendation:
        if servers and mean_run_s:
            rate = 1 / mean_run_s
            utilisation = arrival_rate / (servers * rate)
            wait_s = mean_wait(servers, arrival_rate, rate)
            waits = erlang_c(servers, arrival_rate, rate)
        else:
            utilisation = wait_s = waits = 0.0
        return Recommendation(
            pool=pool,
            current_workers=current_workers,
            recommended_workers=workers,
            arrival_rate_per_s=arrival_rate,
            mean_run_s=mean_run_s,
            slots_per_worker=slots_per_worker,
            servers=servers,
            utilisation=utilisation,
            expected_wait_s=wait_s,
            probability_of_wait=waits,
            method=forecast.method,
            reasoning=tuple(reasoning),
        )

    recent = [p for p in points if p.completed and p.start + p.bucket_s > now - _RUN_WINDOW_S]
    runs = recent or [p for p in points if p.completed]
    attempts = sum(p.completed for p in runs)
    if arrival_rate == 0:
        reasoning.append(
            "nothing forecast and nothing waiting: 0 workers (the pool may scale to zero)"
        )
        # The learned run time still shows, rather than a mean run of 0.
        return result(0, 0, _mean_run(runs, attempts))
    if not attempts:
        workers = max(current_workers, 1)
        reasoning.append(
            f"no run times in the history, so no service rate to size by: keep {workers} workers"
        )
        return result(workers)
    mean_run_s = _mean_run(runs, attempts)
    service_rate = 1 / mean_run_s
    offered = arrival_rate / service_rate
    servers = servers_for(target_wait_s, arrival_rate, service_rate)
    wait_s = mean_wait(servers, arrival_rate, service_rate)
    reasoning += [
        f"mean run time {mean_run_s:.4g} s over {attempts} attempts"
        f" ({'the last day' if recent else 'all the history'}):"
        f" service rate mu = 1 / {mean_run_s:.4g} s = {service_rate:.4g}/s per slot",
        f"offered load a = lambda / mu = {offered:.4g} (slots busy on average)",
        f"c = {servers} slots: rho = a / c = {offered / servers:.3g},"
        f" P(wait) = Erlang C = {erlang_c(servers, arrival_rate, service_rate):.4g},"
        f" Wq = C / (c mu - lambda) = {_seconds(wait_s)} <= target {target_wait_s:g} s",
    ]
    if servers > 1:
        fewer = mean_wait(servers - 1, arrival_rate, service_rate)
        reasoning.append(f"(c = {servers - 1} would give Wq = {_seconds(fewer)})")
    # The float mean of capacities makes e.g. 12 / 4.000000001 a hair over 3 workers.
    workers = max(1, math.ceil(servers / slots_per_worker - 1e-9))
    reasoning.append(
        f"workers = ceil(c / {slots_per_worker:.4g} slots per worker) = {workers}"
        f" (now {current_workers})"
    )
    if current_workers:
        now_servers = math.floor(current_workers * slots_per_worker + 1e-9)
        now_wait = mean_wait(now_servers, arrival_rate, service_rate)
        reasoning.append(
            f"now {current_workers} worker(s), {now_servers} slots: Wq = {_seconds(now_wait)}"
        )
    return result(workers, servers, mean_run_s)


# -- helpers -------------------------------------------------------------------------------


def _mean_run(runs: Sequence[MetricPoint], attempts: int) -> float:
    """The mean run time of `attempts` attempts in `runs`; 0.0 with none."""
    if not attempts:
        return 0.0
    mean_run_s = sum(p.run_mean_s * p.completed for p in runs) / attempts
    return mean_run_s if mean_run_s > 0 else 1e-6  # no measurable time: still a time


def _floor(at: float, step: float) -> float:
    return float(math.floor(at / step) * step)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _seconds(value: float) -> str:
    return "unbounded (the queue grows)" if math.isinf(value) else f"{value:.4g} s"


def _duration(seconds: float) -> str:
    if seconds >= HOUR and seconds % HOUR == 0:
        return f"{seconds / HOUR:g} h"
    if seconds >= MINUTE and seconds % MINUTE == 0:
        return f"{seconds / MINUTE:g} min"
    return f"{seconds:g} s"
