"""Worker counts per pool: the pool's history and its workers now, through the queueing
model of broker.observability.recommend."""

from __future__ import annotations

from broker.errors import InvalidArgument, NotFound
from broker.observability.recommend import Recommendation, recommend
from broker.observability.rollups import MetricsHistory
from broker.runtime.engine import Engine

DEFAULT_TARGET_WAIT_S = 1.0
DEFAULT_HORIZON_S = 900.0


async def recommend_pools(
    engine: Engine,
    history: MetricsHistory,
    *,
    now: float,
    retention_s: float,
    pool: str = "",
    target_wait_s: float = DEFAULT_TARGET_WAIT_S,
    horizon_s: float = DEFAULT_HORIZON_S,
) -> list[Recommendation]:
    """A recommendation for each pool (or the one named), for a mean queue wait of
    `target_wait_s` over the next `horizon_s` seconds."""
    names = [p.name for p in engine.pools()]
    if pool and pool not in names:
        raise NotFound(f"pool {pool!r} does not exist")
    if not 0 < target_wait_s <= 86_400:
        raise InvalidArgument(
            f"target_wait_s must be more than 0 and at most 86400, got {target_wait_s}"
        )
    if not 60 <= horizon_s <= 7 * 86_400:
        raise InvalidArgument(f"horizon_s must be 60..604800 seconds, got {horizon_s}")
    backlog = {b.pool: b.pending for b in engine.backlog() if not b.task_type}
    result = []
    for name in [pool] if pool else names:
        points = await history.history(name, since=now - retention_s, until=now)
        workers = engine.workers(name)
        slots = sum(w.capacity for w in workers) / len(workers) if workers else 1.0
        try:
            result.append(
                recommend(
                    name,
                    points,
                    now=now,
                    current_workers=len(workers),
                    slots_per_worker=slots or 1.0,
                    target_wait_s=target_wait_s,
                    horizon_s=horizon_s,
                    backlog=backlog.get(name, 0),
                )
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
    return result
