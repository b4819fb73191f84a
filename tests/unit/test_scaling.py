"""broker.observability.scaling: when a pool is active, and what it asks an autoscaler for."""

from __future__ import annotations

import pytest

from broker.observability.recommend import recommend
from broker.observability.rollups import MetricPoint
from broker.observability.scaling import ACTIVATION_TASKS, decide

HORIZON_S = 900.0


def point(start: float, submitted: int, completed: int = 0, run_mean_s: float = 2.0) -> MetricPoint:
    return MetricPoint(
        start=start,
        bucket_s=60,
        pool="p",
        task_type="",
        worker_id="",
        submitted=submitted,
        completed=completed,
        failed=0,
        wait_mean_s=0.0,
        wait_p50_s=0.0,
        wait_p99_s=0.0,
        run_mean_s=run_mean_s,
        run_p50_s=run_mean_s,
        run_p99_s=run_mean_s,
    )


def test_a_busy_pool_asks_for_the_recommendation() -> None:
    points = [point(60.0 * m, 120, 120) for m in range(30)]
    rec = recommend("p", points, now=1800.0, current_workers=2, slots_per_worker=2)
    decision = decide(rec, pending=0, in_flight=0, horizon_s=HORIZON_S)
    assert decision.active
    assert decision.desired_workers == rec.recommended_workers > 1
    assert decision.forecast_tasks == pytest.approx(rec.arrival_rate_per_s * HORIZON_S)


@pytest.mark.parametrize(
    ("pending", "in_flight", "active"), [(0, 0, False), (1, 0, True), (0, 1, True)]
)
def test_a_pool_with_too_little_forecast_is_active_only_with_work(
    pending: int, in_flight: int, active: bool
) -> None:
    # A sparse pool, one task every half hour: well under one arrival per horizon.
    points = [point(60.0 * m, 1, 1) for m in range(0, 360, 30)]
    rec = recommend("p", points, now=360 * 60.0 + 600, current_workers=1, slots_per_worker=1)
    assert 0 < rec.arrival_rate_per_s * HORIZON_S < ACTIVATION_TASKS
    assert rec.recommended_workers == 1  # what the recommendation alone would keep
    decision = decide(rec, pending=pending, in_flight=in_flight, horizon_s=HORIZON_S)
    assert decision.active is active
    assert decision.desired_workers == (rec.recommended_workers if active else 0)


def test_a_pool_with_nothing_at_all_wants_zero() -> None:
    rec = recommend("p", [], now=1000.0, current_workers=0, slots_per_worker=1)
    assert decide(rec, pending=0, in_flight=0, horizon_s=HORIZON_S) == (False, 0, 0.0)
