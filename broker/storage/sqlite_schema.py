"""The SQLite schema: the migrations that build it, step by step, and the one that applies them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import aiosqlite

from broker.errors import BrokerError

_log = logging.getLogger("taskbroker.store")

# Step i moves the schema from version i to i + 1 (kept in PRAGMA user_version). A step
# that has shipped never changes; a change is a new step.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE tasks (
            id INTEGER PRIMARY KEY,
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            payload BLOB NOT NULL,
            priority INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            state INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            worker_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            assigned_at REAL NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL,
            result BLOB NOT NULL,
            error_type TEXT,
            error_message TEXT,
            error_traceback TEXT
        )
        """,
        # Each index costs every insert and state change, so there are few. Listings walk
        # one (pool, state) or (state) range per state, newest first (see list_tasks);
        # tasks_state also finds the unfinished tasks at start-up, and tasks_pool_state
        # covers counting per (pool, state).
        "CREATE INDEX tasks_pool_state ON tasks (pool, state, id)",
        "CREATE INDEX tasks_state ON tasks (state, id)",
        "CREATE INDEX tasks_type ON tasks (task_type, id)",
        """
        CREATE TABLE pools (
            name TEXT PRIMARY KEY,
            strategy TEXT NOT NULL,
            created_at REAL NOT NULL
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
            connected_at REAL NOT NULL,
            disconnected_at REAL,
            last_heartbeat REAL NOT NULL
        )
        """,
    ),
    (
        # Placement hints (JSON, NULL for none) and the scheduler's explanation.
        "ALTER TABLE tasks ADD COLUMN placement TEXT",
        "ALTER TABLE tasks ADD COLUMN placement_note TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE tasks ADD COLUMN unschedulable INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # Pool settings beyond the strategy; what placement learns and must not forget.
        "ALTER TABLE pools ADD COLUMN ab_strategy TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE pools ADD COLUMN ab_percent INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE pools ADD COLUMN sticky_timeout_s REAL NOT NULL DEFAULT 5.0",
        """
        CREATE TABLE sticky_keys (
            pool TEXT NOT NULL,
            key TEXT NOT NULL,
            worker_id TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (pool, key)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE runtimes (
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            worker_class TEXT NOT NULL,
            count INTEGER NOT NULL,
            mean_s REAL NOT NULL,
            m2 REAL NOT NULL,
            abs_error_s REAL NOT NULL,
            predicted INTEGER NOT NULL,
            PRIMARY KEY (pool, task_type, worker_class)
        ) WITHOUT ROWID
        """,
    ),
    (
        # Resilience: a task's retry policy, deadlines and keys (JSON, NULL for none), the
        # time a delayed task waits for, idempotency keys, and pools' limits (JSON).
        "ALTER TABLE tasks ADD COLUMN options TEXT",
        "ALTER TABLE tasks ADD COLUMN not_before REAL NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN idempotency_key TEXT",
        "CREATE INDEX tasks_idempotency ON tasks (pool, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
        "ALTER TABLE pools ADD COLUMN limits TEXT",
    ),
    (
        # Operations: the metrics history (per-minute rollups, coarser once compacted) and
        # the audit of configuration changes.
        """
        CREATE TABLE metric_rollups (
            pool TEXT NOT NULL,
            task_type TEXT NOT NULL,
            worker_id TEXT NOT NULL,
            start REAL NOT NULL,
            bucket_s INTEGER NOT NULL,
            submitted INTEGER NOT NULL,
            completed INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            wait_count INTEGER NOT NULL,
            wait_sum REAL NOT NULL,
            run_count INTEGER NOT NULL,
            run_sum REAL NOT NULL,
            wait_hist TEXT NOT NULL,
            run_hist TEXT NOT NULL,
            PRIMARY KEY (pool, task_type, worker_id, bucket_s, start)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX metric_rollups_start ON metric_rollups (bucket_s, start)",
        """
        CREATE TABLE config_audit (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            who TEXT NOT NULL,
            source TEXT NOT NULL,
            pool TEXT NOT NULL,
            before TEXT NOT NULL,
            after TEXT NOT NULL,
            fields TEXT NOT NULL
        )
        """,
        "CREATE INDEX config_audit_pool ON config_audit (pool, id)",
    ),
    (
        # Retention: finished tasks by pool and the time they finished, so that the purge
        # walks only the ones it deletes. Partial, so unfinished tasks cost it nothing
        # (TERMINAL_STATES_SQL; a query must repeat that term to use it).
        "CREATE INDEX tasks_finished ON tasks (pool, finished_at) WHERE state IN (4, 5, 6, 7)",
    ),
    (
        # The settings the config file last gave each pool (JSON), so that a reload or a
        # restart applies only what the file changed and keeps the changes made at run time.
        """
        CREATE TABLE pool_file_settings (
            pool TEXT PRIMARY KEY,
            settings TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
    (
        # The media type of a task's result, as its worker said.
        "ALTER TABLE tasks ADD COLUMN result_content_type TEXT NOT NULL DEFAULT ''",
    ),
    (
        # How each arm of a pool (its strategy, and the A/B one) placed, so that an A/B
        # comparison goes on counting across a restart.
        """
        CREATE TABLE arm_stats (
            pool TEXT NOT NULL,
            arm INTEGER NOT NULL,
            strategy TEXT NOT NULL,
            placed INTEGER NOT NULL,
            finished INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            wait_s REAL NOT NULL,
            run_s REAL NOT NULL,
            PRIMARY KEY (pool, arm)
        ) WITHOUT ROWID
        """,
    ),
    (
        # API tokens: their SHA-256 only, never the secret; a revoked one keeps its row.
        # Independent of every other table, so it applies after any earlier step.
        """
        CREATE TABLE IF NOT EXISTS api_tokens (
            name TEXT PRIMARY KEY,
            roles TEXT NOT NULL,
            pools TEXT NOT NULL,
            digest TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            revoked_at REAL
        ) WITHOUT ROWID
        """,
    ),
)
# The WHERE of the tasks_finished index, which a query repeats word for word to use it.
TERMINAL_STATES_SQL: Final = "state IN (4, 5, 6, 7)"
SCHEMA_VERSION: Final = len(MIGRATIONS)


async def migrate(db: aiosqlite.Connection, path: str | Path) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction, or refuse a newer one."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row is not None else 0
        if version > SCHEMA_VERSION:
            raise BrokerError(
                f"{path} has schema version {version}, but this taskbroker knows only up to"
                f" {SCHEMA_VERSION}; upgrade taskbroker or point db_path elsewhere"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                await db.execute(statement)
        if version < SCHEMA_VERSION:
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            _log.info("%s: migrated schema from version %d to %d", path, version, SCHEMA_VERSION)
        await db.commit()
    except BaseException:
        await db.rollback()
        raise
