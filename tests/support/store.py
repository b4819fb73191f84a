"""Stores for tests: every backend in one list, and the tasks the store tests share.

The contract suite (tests/contract/test_store_contract.py) runs every test once per entry
of BACKENDS, so a new backend joins it with one line here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from broker.domain import (
    Placement,
    PreferredLabel,
    RetryPolicy,
    Task,
    TaskError,
    TaskFilter,
    TaskSpec,
    TaskState,
    WorkerSpec,
)
from broker.storage.contract import Store
from broker.storage.memory import MemoryStore, WorkerRecord
from broker.storage.postgres import PostgresStore
from broker.storage.sqlite import SQLiteStore
from tests.support.postgres import fresh_database

PENDING, ASSIGNED, RUNNING = TaskState.PENDING, TaskState.ASSIGNED, TaskState.RUNNING
SUCCEEDED, FAILED, CANCELLED = TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED

# -- the backends --------------------------------------------------------------------------


class Backend(NamedTuple):
    """A store implementation under test: its name (the test id) and how to open a new,
    empty one; a backend with files keeps them at the path it is given."""

    name: str
    open: Callable[[Path], Awaitable[Store]]


async def _open_sqlite(path: Path) -> Store:
    return await SQLiteStore.open(path)


async def _open_memory(path: Path) -> Store:
    return await MemoryStore.open()


async def _open_postgres(path: Path) -> Store:
    """A new database on the session's private PostgreSQL server (tests.support.postgres)."""
    return await PostgresStore.open(await fresh_database())


BACKENDS: list[Backend] = [
    Backend("sqlite", _open_sqlite),
    Backend("memory", _open_memory),
    Backend("postgresql", _open_postgres),
]


def backend_params() -> list[Any]:
    """One pytest parameter per entry of BACKENDS as it is now, named after it."""
    return [pytest.param(backend, id=backend.name) for backend in BACKENDS]


def parametrize_backends(metafunc: pytest.Metafunc) -> None:
    """Run a test that takes `backend` once per entry of BACKENDS (read at collection, so
    an entry added before then is picked up): call it from `pytest_generate_tests`."""
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", backend_params())


async def worker_log(store: Store) -> dict[str, WorkerRecord]:
    """What the store logged per worker, once committed. The log has no read API, so this
    looks inside each backend."""
    await store.flush()
    if isinstance(store, MemoryStore):
        return dict(store.workers)
    query = (
        "SELECT worker_id, pool, capacity, task_types, labels, sdk_version,"
        " connected_at, last_heartbeat, disconnected_at FROM workers"
    )
    rows: Any
    if isinstance(store, PostgresStore):
        rows = await store.pool.fetch(query)
    else:
        assert isinstance(store, SQLiteStore), f"no way to read the worker log of {store!r}"
        rows = await store._db.execute_fetchall(query)
    return {
        row[0]: WorkerRecord(
            spec=WorkerSpec(
                worker_id=row[0],
                pool=row[1],
                capacity=row[2],
                task_types=frozenset(json.loads(row[3])),
                labels=json.loads(row[4]),
                sdk_version=row[5],
            ),
            connected_at=row[6],
            last_heartbeat=row[7],
            disconnected_at=row[8],
        )
        for row in rows
    }


# -- tasks ---------------------------------------------------------------------------------


def make_task(task_id: int, **changes: Any) -> Task:
    """A pending task; `changes` may name fields of the Task or of its TaskSpec."""
    spec_fields = {f.name for f in dataclasses.fields(TaskSpec)}
    spec_changes = {name: changes.pop(name) for name in spec_fields & changes.keys()}
    spec = TaskSpec(**{"task_type": "resize", "payload": b"\x00payload"} | spec_changes)
    fields: dict[str, Any] = {"seq": task_id, "created_at": 1_700_000_000.5} | changes
    return Task(id=task_id, spec=spec, **fields)


def finished(task: Task, state: TaskState = SUCCEEDED, **changes: Any) -> Task:
    """The task after one attempt on worker w1 that ended in `state`."""
    return dataclasses.replace(
        task,
        state=state,
        attempts=task.attempts + 1,
        worker_id="w1",
        assigned_at=task.created_at + 1,
        started_at=task.created_at + 2,
        finished_at=task.created_at + 3,
        **changes,
    )


# Every field set by one case or another (a contract test checks that).
ROUND_TRIP_CASES = {
    "pending": make_task(1),
    "empty payload": make_task(2, payload=b""),
    "large payload": make_task(3, payload=os.urandom(2 * 1024 * 1024)),
    "text everywhere": make_task(
        4, task_type="ünïcode/тип", pool="gpu.a-1", priority=-1000, worker_id="wörker"
    ),
    "succeeded": finished(
        make_task(5, priority=1000, payload_content_type="application/json"),
        result=b"\x00\xffresult",
        result_content_type="application/octet-stream",
    ),
    "failed": finished(
        make_task(6),
        FAILED,
        error=TaskError(type="ValueError", message="bad input", traceback="Traceback..."),
    ),
    "failed, error with empty fields": finished(make_task(7), FAILED, error=TaskError(type="X")),
    "cancelled": finished(make_task(8), CANCELLED),
    "placed, waiting": make_task(
        9,
        placement=Placement(
            required_labels={"zone": "b", "gpu": ""},
            preferred_labels=(PreferredLabel("arch", "arm", 5), PreferredLabel("disk", "ssd")),
            anti_affinity_group="shard-7",
            anti_affinity_soft=True,
        ),
        placement_note="no connected worker has zone=b",
        unschedulable=True,
    ),
    "sticky and routing keys": make_task(
        10, placement=Placement(sticky_key="user-7", routing_key="shard-3")
    ),
    "routing key alone": make_task(11, placement=Placement(routing_key="shard-9")),
    "retry policy, deadlines and keys, delayed": dataclasses.replace(
        make_task(
            12,
            retry=RetryPolicy(
                max_attempts=5,
                initial_backoff_s=0.5,
                max_backoff_s=30.0,
                backoff_multiplier=3.0,
                retryable_errors=frozenset({"IOError", "Timeout"}),
                non_retryable_errors=frozenset({"ValueError"}),
            ),
            not_before=1_700_000_100.25,
            start_timeout_s=60.0,
            execution_timeout_s=2.5,
            idempotency_key="order-17",
            fairness_key="tenant-a",
            trace_context={
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            },
            attempts=2,
            placement_note="retry 3 after a backoff",
        ),
        not_before=1_700_000_300.5,  # the task's own wait: a retry's backoff
    ),
    "submitted by an authenticated caller": make_task(14, submitter="tenant-a-ci"),
    "dead letter": finished(
        make_task(13, retry=RetryPolicy(max_attempts=2)),
        TaskState.DEAD_LETTER,
        error=TaskError(type="IOError", message="disk gone"),
    ),
}


# -- listings ------------------------------------------------------------------------------


def listing_tasks() -> list[Task]:
    """60 tasks over three pools, two types and every state."""
    pools, types, states = ["default", "gpu", "tiny"], ["resize", "encode"], list(TaskState)
    return [
        make_task(
            i,
            pool=pools[i % 7 % 3],
            task_type=types[i % 5 % 2],
            state=states[i % len(states)],
        )
        for i in range(1, 61)
    ]


def expected(tasks: list[Task], flt: TaskFilter) -> list[int]:
    """The ids list_tasks must return, by a plain filter."""
    kept = [
        t.id
        for t in tasks
        if (not flt.pool or t.spec.pool == flt.pool)
        and (not flt.states or t.state in flt.states)
        and (not flt.task_type or t.spec.task_type == flt.task_type)
        and (flt.before_id is None or t.id < flt.before_id)
    ]
    return sorted(kept, reverse=True)[: flt.limit]


FILTERS = [
    TaskFilter(pool=pool, states=states, task_type=task_type, before_id=before_id, limit=limit)
    for pool in ["", "gpu", "nope"]
    for states in [frozenset(), frozenset({FAILED}), frozenset({PENDING, RUNNING, CANCELLED})]
    for task_type in ["", "encode"]
    for before_id in [None, 40]
    for limit in [1, 7, 100]
]
