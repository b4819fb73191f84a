"""Rows of the SQLite tables: the columns and how tasks, pools, workers, what placement learned
and the metrics history become rows and come back."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from broker.domain import (
    ANYWHERE,
    ApiToken,
    ConfigChange,
    Placement,
    PoolConfig,
    PreferredLabel,
    Task,
    TaskError,
    TaskSpec,
    TaskState,
    WorkerId,
    WorkerSpec,
)
from broker.stats import ArmStats, RollupRow, RunStats, RuntimeKey
from broker.storage.codec import (
    pool_limits_from_json,
    pool_limits_json,
    task_options_from_json,
    task_options_json,
)

Row = tuple[object, ...]

TASK_COLUMNS: Final = (
    "id, pool, task_type, payload, priority, seq, state, attempts, worker_id, created_at,"
    " assigned_at, started_at, finished_at, result, error_type, error_message, error_traceback,"
    " placement_note, unschedulable, not_before, result_content_type, placement, options,"
    " idempotency_key"
)
SELECT_TASKS: Final = f"SELECT {TASK_COLUMNS} FROM tasks"

ROLLUP_COLUMNS: Final = (
    "pool, task_type, worker_id, start, bucket_s, submitted, completed, failed,"
    " wait_count, wait_sum, run_count, run_sum, wait_hist, run_hist"
)


def insert_row(task: Task) -> Row:
    """A new task, in the order of TASK_COLUMNS."""
    spec = task.spec
    return (
        task.id,
        spec.pool,
        spec.task_type,
        spec.payload,
        spec.priority,
        *update_row(task)[:-1],  # the state columns, without the trailing id
        _placement_json(spec.placement),
        task_options_json(spec),
        spec.idempotency_key or None,
    )


def update_row(task: Task) -> Row:
    """What a save keeps: the columns it rewrites (everything but the spec), in
    _UPDATE_TASK's order, then the id. Built flat: it runs for every save."""
    error = task.error
    return (
        task.seq,
        int(task.state),
        task.attempts,
        task.worker_id,
        task.created_at,
        task.assigned_at,
        task.started_at,
        task.finished_at,
        task.result,
        None if error is None else error.type,
        None if error is None else error.message,
        None if error is None else error.traceback,
        task.placement_note,
        int(task.unschedulable),
        task.not_before,
        task.result_content_type,
        task.id,
    )


def _placement_json(placement: Placement) -> str | None:
    if placement is ANYWHERE or placement == ANYWHERE:
        return None
    return json.dumps(
        {
            "required_labels": dict(placement.required_labels),
            "preferred_labels": [[p.key, p.value, p.weight] for p in placement.preferred_labels],
            "anti_affinity_group": placement.anti_affinity_group,
            "anti_affinity_soft": placement.anti_affinity_soft,
            "sticky_key": placement.sticky_key,
            "routing_key": placement.routing_key,
        },
        separators=(",", ":"),
    )


def _placement_from_json(text: str | None) -> Placement:
    if text is None:
        return ANYWHERE
    data = json.loads(text)
    return Placement(
        required_labels=data["required_labels"],
        preferred_labels=tuple(PreferredLabel(k, v, w) for k, v, w in data["preferred_labels"]),
        anti_affinity_group=data["anti_affinity_group"],
        anti_affinity_soft=data["anti_affinity_soft"],
        sticky_key=data.get("sticky_key", ""),
        routing_key=data.get("routing_key", ""),
    )


def task_from_row(row: Sequence[Any]) -> Task:
    """The task in a row of SELECT_TASKS."""
    (
        task_id,
        pool,
        task_type,
        payload,
        priority,
        seq,
        state,
        attempts,
        worker_id,
        created_at,
        assigned_at,
        started_at,
        finished_at,
        result,
        error_type,
        error_message,
        error_traceback,
        placement_note,
        unschedulable,
        not_before,
        result_content_type,
        placement,
        options,
        _idempotency_key,
    ) = row
    return Task(
        id=task_id,
        spec=task_options_from_json(
            TaskSpec(
                task_type=task_type,
                payload=payload,
                priority=priority,
                pool=pool,
                placement=_placement_from_json(placement),
            ),
            options,
        ),
        state=TaskState(state),
        seq=seq,
        attempts=attempts,
        worker_id=worker_id,
        created_at=created_at,
        assigned_at=assigned_at,
        started_at=started_at,
        finished_at=finished_at,
        result=result,
        error=None
        if error_type is None
        else TaskError(type=error_type, message=error_message, traceback=error_traceback),
        placement_note=placement_note,
        unschedulable=bool(unschedulable),
        not_before=not_before,
        result_content_type=result_content_type,
    )


# -- metrics history (rows) ----------------------------------------------------------------


def _json_list(values: Sequence[int]) -> str:
    return json.dumps(values, separators=(",", ":"))


def rollup_row(row: RollupRow, histogram: Callable[[Sequence[int]], str] = _json_list) -> Row:
    """A rollup's columns, its histograms written by `histogram` (JSON for SQLite)."""
    return (
        row.pool,
        row.task_type,
        row.worker_id,
        row.start,
        row.bucket_s,
        row.submitted,
        row.completed,
        row.failed,
        row.wait_count,
        row.wait_sum,
        row.run_count,
        row.run_sum,
        histogram(row.wait_hist),
        histogram(row.run_hist),
    )


def rollup_from_row(row: Sequence[Any]) -> RollupRow:
    (pool, task_type, worker_id, start, bucket_s, submitted, completed, failed) = row[:8]
    (wait_count, wait_sum, run_count, run_sum, wait_hist, run_hist) = row[8:]
    return RollupRow(
        pool=pool,
        task_type=task_type,
        worker_id=worker_id,
        start=start,
        bucket_s=bucket_s,
        submitted=submitted,
        completed=completed,
        failed=failed,
        wait_count=wait_count,
        wait_sum=wait_sum,
        run_count=run_count,
        run_sum=run_sum,
        wait_hist=tuple(json.loads(wait_hist)),
        run_hist=tuple(json.loads(run_hist)),
    )


# -- pools, what placement learns, workers ---------------------------------------------------

POOL_COLUMNS: Final = "name, strategy, ab_strategy, ab_percent, sticky_timeout_s, limits"


def pool_row(pool: PoolConfig, at: float) -> Row:
    """A pool created (or changed) at `at`, in the order of sqlite._UPSERT_POOL."""
    return (
        pool.name,
        pool.strategy,
        at,
        pool.ab_strategy,
        pool.ab_percent,
        pool.sticky_timeout_s,
        pool_limits_json(pool),
    )


def pool_from_row(row: Sequence[Any]) -> PoolConfig:
    """The pool in a row of POOL_COLUMNS."""
    name, strategy, ab_strategy, ab_percent, sticky_timeout_s, limits = row
    return pool_limits_from_json(
        PoolConfig(
            name=name,
            strategy=strategy,
            ab_strategy=ab_strategy,
            ab_percent=ab_percent,
            sticky_timeout_s=sticky_timeout_s,
        ),
        limits,
    )


RUNTIME_COLUMNS: Final = "pool, task_type, worker_class, count, mean_s, m2, abs_error_s, predicted"


def runtime_row(key: RuntimeKey, stats: RunStats) -> Row:
    """Learned run times, in the order of RUNTIME_COLUMNS."""
    return (
        key.pool,
        key.task_type,
        key.worker_class,
        stats.count,
        stats.mean_s,
        stats.m2,
        stats.abs_error_s,
        stats.predicted,
    )


def runtime_from_row(row: Sequence[Any]) -> tuple[RuntimeKey, RunStats]:
    """The key and statistics in a row of RUNTIME_COLUMNS."""
    pool, task_type, worker_class, count, mean_s, m2, abs_error_s, predicted = row
    return RuntimeKey(pool, task_type, worker_class), RunStats(
        count, mean_s, m2, abs_error_s, predicted
    )


ARM_STATS_COLUMNS: Final = "pool, arm, strategy, placed, finished, failed, wait_s, run_s"


def arm_stats_rows(pool: str, arms: Sequence[ArmStats]) -> list[Row]:
    """A pool's arm statistics, in the order of ARM_STATS_COLUMNS."""
    return [
        (pool, i, a.strategy, a.placed, a.finished, a.failed, a.wait_s, a.run_s)
        for i, a in enumerate(arms)
    ]


def arm_stats_from_row(row: Sequence[Any]) -> tuple[str, ArmStats]:
    """The pool and statistics in a row of ARM_STATS_COLUMNS."""
    pool, _, strategy, placed, finished, failed, wait_s, run_s = row
    return pool, ArmStats(strategy, placed, finished, failed, wait_s, run_s)


def connect_row(spec: WorkerSpec, at: float) -> Row:
    """A worker connected at `at`, in the order of sqlite._CONNECT_WORKER."""
    return (
        spec.worker_id,
        spec.pool,
        json.dumps(dict(spec.labels), sort_keys=True),
        spec.capacity,
        json.dumps(sorted(spec.task_types)),
        spec.sdk_version,
        at,
        at,
    )


def config_change_row(change: ConfigChange) -> Row:
    """An audited change, in the order of sqlite._INSERT_CONFIG_CHANGE."""
    return (
        change.at,
        change.who,
        change.source,
        change.pool,
        change.before,
        change.after,
        json.dumps(list(change.fields)),
    )


CONFIG_CHANGE_COLUMNS: Final = "at, who, source, pool, before, after, fields"


def config_change_from_row(row: Sequence[Any]) -> ConfigChange:
    at, who, source, pool, before, after, fields = row
    return ConfigChange(
        at=at,
        who=who,
        source=source,
        pool=pool,
        before=before,
        after=after,
        fields=tuple(json.loads(fields)),
    )


TOKEN_COLUMNS: Final = "name, roles, pools, digest, created_at, revoked_at"


def token_row(token: ApiToken) -> Row:
    """An API token (its hash, never its secret), in the order of TOKEN_COLUMNS."""
    return (
        token.name,
        json.dumps(list(token.roles)),
        json.dumps(list(token.pools)),
        token.digest,
        token.created_at,
        token.revoked_at,
    )


def token_from_row(row: Sequence[Any]) -> ApiToken:
    name, roles, pools, digest, created_at, revoked_at = row
    return ApiToken(
        name=name,
        roles=tuple(json.loads(roles)),
        pools=tuple(json.loads(pools)),
        digest=digest,
        created_at=created_at,
        revoked_at=revoked_at,
    )


# -- reads whose SQL is the same in both SQL stores ----------------------------------------


class SharedReads:
    """The reads that take no parameters and whose SQL and rows are the same in SQLite and
    PostgreSQL, over the store's own `_fetch`."""

    async def _fetch(self, sql: str) -> Sequence[Any]:
        raise NotImplementedError

    async def load_tokens(self) -> list[ApiToken]:
        """Every stored API token, revoked ones too, by name."""
        rows = await self._fetch(f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY name")
        return [token_from_row(row) for row in rows]

    async def load_file_settings(self) -> dict[str, dict[str, Any]]:
        """The settings the config file last gave each pool, by pool."""
        rows = await self._fetch("SELECT pool, settings FROM pool_file_settings")
        return {pool: json.loads(settings) for pool, settings in rows}

    async def load_sticky(self) -> dict[str, dict[str, WorkerId]]:
        """Where each pool's sticky keys live: pool -> key -> worker id."""
        rows = await self._fetch("SELECT pool, key, worker_id FROM sticky_keys ORDER BY updated_at")
        sticky: dict[str, dict[str, WorkerId]] = {}
        for pool, key, worker_id in rows:
            sticky.setdefault(pool, {})[key] = worker_id
        return sticky

    async def load_runtimes(self) -> list[tuple[RuntimeKey, RunStats]]:
        """Every learned run-time statistic."""
        rows = await self._fetch(f"SELECT {RUNTIME_COLUMNS} FROM runtimes")
        return [runtime_from_row(row) for row in rows]

    async def load_arm_stats(self) -> dict[str, list[ArmStats]]:
        """Each pool's arm statistics, in the order they were saved."""
        rows = await self._fetch(f"SELECT {ARM_STATS_COLUMNS} FROM arm_stats ORDER BY pool, arm")
        stats: dict[str, list[ArmStats]] = {}
        for row in rows:
            pool, arm = arm_stats_from_row(row)
            stats.setdefault(pool, []).append(arm)
        return stats
