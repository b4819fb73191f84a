"""From a recommendation to an autoscaler's answer: is the pool active, and how many
workers should it have. One rule, shared by the broker's KEDA scaler (through
BrokerService.scaling) and the autoscaling simulation (broker.sim.autoscale)."""

from __future__ import annotations

from typing import Final, NamedTuple

from broker.observability.recommend import Recommendation

# A pool with nothing waiting or running is active (worth a worker) only if at least this
# many arrivals are forecast over the horizon.
ACTIVATION_TASKS: Final = 1.0


class ScalingDecision(NamedTuple):
    active: bool
    desired_workers: int  # the recommendation while active, else 0
    forecast_tasks: float  # arrivals forecast over the horizon, the backlog included


def decide(
    recommendation: Recommendation, *, pending: int, in_flight: int, horizon_s: float
) -> ScalingDecision:
    """Active while a task waits or runs, or while at least ACTIVATION_TASKS arrivals are
    forecast over the horizon: a forecast fades slowly after the last arrival and would
    keep a quiet pool at one worker for hours. Inactive, the pool wants 0 workers (KEDA
    scales it to zero; its next task makes it active again)."""
    forecast_tasks = recommendation.arrival_rate_per_s * horizon_s
    active = pending > 0 or in_flight > 0 or forecast_tasks >= ACTIVATION_TASKS
    workers = recommendation.recommended_workers if active else 0
    return ScalingDecision(active, workers, forecast_tasks)
