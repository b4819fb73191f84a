"""The PostgreSQL schema: the migrations that build it, step by step, and the one that
applies them.

The columns are those of the SQLite schema (broker.storage.sqlite_schema), so that both
stores make and read their rows alike (broker.storage.sqlite_rows); the cluster tables
(brokers, pool leases: broker.cluster) exist only here.
"""

from __future__ import annotations

import logging
from typing import Final

import asyncpg

from broker.errors import BrokerError

_log = logging.getLogger("taskbroker.store")

# Step i moves the schema from version i to i + 1 (kept in taskbroker_schema). A step that
# has shipped never changes; a change is a new step.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE tasks (
            id BIGINT PRIMARY KEY,
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            payload BYTEA NOT NULL,
            priority INTEGER NOT NULL,
            seq BIGINT NOT NULL,
            state INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            worker_id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            assigned_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            finished_at DOUBLE PRECISION NOT NULL,
            result BYTEA NOT NULL,
            error_type TEXT,
            error_message TEXT,
            error_traceback TEXT,
            placement_note TEXT NOT NULL,
            unschedulable INTEGER NOT NULL,
            not_before DOUBLE PRECISION NOT NULL,
            placement TEXT,
            options TEXT,
            idempotency_key TEXT
        )
        """,
        # As on SQLite: few indexes, since each costs every insert and state change.
        "CREATE INDEX tasks_pool_state ON tasks (pool, state, id)",
        "CREATE INDEX tasks_state ON tasks (state, id)",
        "CREATE INDEX tasks_type ON tasks (task_type, id)",
        "CREATE INDEX tasks_idempotency ON tasks (pool, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
        "CREATE INDEX tasks_finished ON tasks (pool, finished_at) WHERE state IN (4, 5, 6, 7)",
        """
        CREATE TABLE pools (
            name TEXT PRIMARY KEY,
            strategy TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            ab_strategy TEXT NOT NULL,
            ab_percent INTEGER NOT NULL,
            sticky_timeout_s DOUBLE PRECISION NOT NULL,
            limits TEXT
        )
        """,
        """
        CREATE TABLE workers (
            worker_id TEXT PRIMARY KEY,
            pool TEXT NOT NULL,
            labels TEXT NOT NULL,
            capacity INTEGER NOT NULL,
            task_types TEXT NOT NULL,
            sdk_version TEXT NOT NULL,
            connected_at DOUBLE PRECISION NOT NULL,
            disconnected_at DOUBLE PRECISION,
            last_heartbeat DOUBLE PRECISION NOT NULL
        )
        """,
        """
        CREATE TABLE sticky_keys (
            pool TEXT NOT NULL,
            key TEXT NOT NULL,
            worker_id TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (pool, key)
        )
        """,
        """
        CREATE TABLE runtimes (
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            worker_class TEXT NOT NULL,
            count BIGINT NOT NULL,
            mean_s DOUBLE PRECISION NOT NULL,
            m2 DOUBLE PRECISION NOT NULL,
            abs_error_s DOUBLE PRECISION NOT NULL,
            predicted BIGINT NOT NULL,
            PRIMARY KEY (pool, task_type, worker_class)
        )
        """,
        """
        CREATE TABLE metric_rollups (
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            worker_id TEXT NOT NULL,
            start DOUBLE PRECISION NOT NULL,
            bucket_s INTEGER NOT NULL,
            submitted BIGINT NOT NULL,
            completed BIGINT NOT NULL,
            failed BIGINT NOT NULL,
            wait_count BIGINT NOT NULL,
            wait_sum DOUBLE PRECISION NOT NULL,
            run_count BIGINT NOT NULL,
            run_sum DOUBLE PRECISION NOT NULL,
            wait_hist BIGINT[] NOT NULL,
            run_hist BIGINT[] NOT NULL,
            PRIMARY KEY (pool, task_type, worker_id, bucket_s, start)
        )
        """,
        "CREATE INDEX metric_rollups_start ON metric_rollups (bucket_s, start)",
        """
        CREATE TABLE config_audit (
            id BIGSERIAL PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            who TEXT NOT NULL,
            source TEXT NOT NULL,
            pool TEXT NOT NULL,
            before TEXT NOT NULL,
            after TEXT NOT NULL,
            fields TEXT NOT NULL
        )
        """,
        "CREATE INDEX config_audit_pool ON config_audit (pool, id)",
        """
        CREATE TABLE pool_file_settings (
            pool TEXT PRIMARY KEY,
            settings TEXT NOT NULL
        )
        """,
        # Element by element sum of two histograms; the shorter counts as zeros beyond its
        # end.
        """
        CREATE FUNCTION taskbroker_hist_add(a BIGINT[], b BIGINT[]) RETURNS BIGINT[]
        LANGUAGE sql IMMUTABLE AS $$
            SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}')
            FROM unnest(a, b) WITH ORDINALITY AS u(x, y, i)
        $$
        """,
    ),
    (
        # Several brokers on one database (broker.cluster): who is alive, and which broker
        # schedules each pool. A pool's epoch grows by one whenever its owner changes; the
        # owner's writes carry it, and taskbroker_fence refuses them once it has moved on.
        """
        CREATE TABLE brokers (
            broker_id TEXT PRIMARY KEY,
            address TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )
        """,
        """
        CREATE TABLE pool_leases (
            pool TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            epoch BIGINT NOT NULL,
            acquired_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )
        """,
        """
        CREATE FUNCTION taskbroker_fence(held BIGINT, wanted INTEGER) RETURNS BIGINT
        LANGUAGE plpgsql AS $$
        BEGIN
            IF held < wanted THEN
                RAISE EXCEPTION 'a pool lease has moved on' USING ERRCODE = 'TB001';
            END IF;
            RETURN held;
        END
        $$
        """,
        # Task ids and submission order across brokers.
        "CREATE SEQUENCE task_ids",
    ),
    (
        # The media type of a task's result, as its worker said.
        "ALTER TABLE tasks ADD COLUMN result_content_type TEXT NOT NULL DEFAULT ''",
        # How each arm of a pool (its strategy, and the A/B one) placed, so that an A/B
        # comparison goes on counting across a restart.
        """
        CREATE TABLE arm_stats (
            pool TEXT NOT NULL,
            arm INTEGER NOT NULL,
            strategy TEXT NOT NULL,
            placed BIGINT NOT NULL,
            finished BIGINT NOT NULL,
            failed BIGINT NOT NULL,
            wait_s DOUBLE PRECISION NOT NULL,
            run_s DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (pool, arm)
        )
        """,
        # API tokens: their SHA-256 only, never the secret; a revoked one keeps its row.
        """
        CREATE TABLE api_tokens (
            name TEXT PRIMARY KEY,
            roles TEXT NOT NULL,
            pools TEXT NOT NULL,
            digest TEXT NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        )
        """,
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# One key for pg_advisory_xact_lock: brokers starting together migrate one after another.
_MIGRATION_LOCK: Final = 0x7461736B62726B  # "taskbrk"


async def migrate(conn: asyncpg.Connection, where: str) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction, or refuse a newer one."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS taskbroker_schema (version INTEGER)")
        version = await conn.fetchval("SELECT max(version) FROM taskbroker_schema") or 0
        if version > SCHEMA_VERSION:
            raise BrokerError(
                f"{where} has schema version {version}, but this taskbroker knows only up to"
                f" {SCHEMA_VERSION}; upgrade taskbroker or point db_path elsewhere"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                await conn.execute(statement)
        if version < SCHEMA_VERSION:
            await conn.execute("DELETE FROM taskbroker_schema")
            await conn.execute("INSERT INTO taskbroker_schema VALUES ($1)", SCHEMA_VERSION)
            _log.info("%s: migrated schema from version %d to %d", where, version, SCHEMA_VERSION)
