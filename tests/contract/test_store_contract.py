"""The store contract (broker.storage.contract): what the engine, the registry and the
metrics history may rely on from any store.

Every test runs once per backend in tests.support.store.BACKENDS (SQLiteStore on a file in
tmp_path, MemoryStore, and whatever is added there), so a fake that passes them can stand
in for the real one. What only SQLite has (schema, group commit, files on disk) is tested
in test_store.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from broker.domain import (
    ApiToken,
    BulkheadConfig,
    PoolConfig,
    Task,
    TaskError,
    TaskFilter,
    TaskSpec,
    TaskState,
    WorkerSpec,
)
from broker.errors import InvalidArgument, StorageError, Unavailable
from broker.stats import ArmStats, RollupRow, RunStats, RuntimeKey
from broker.storage.contract import Store
from broker.storage.memory import WorkerRecord
from tests.support.store import (
    ASSIGNED,
    CANCELLED,
    FAILED,
    FILTERS,
    PENDING,
    ROUND_TRIP_CASES,
    RUNNING,
    SUCCEEDED,
    Backend,
    expected,
    finished,
    listing_tasks,
    make_task,
    parametrize_backends,
    worker_log,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_backends(metafunc)


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Store]:
    async with await backend.open(tmp_path / "broker.db") as opened:
        yield opened


# Round trips ------------------------------------------------------------------------------


def test_the_round_trip_cases_cover_every_field() -> None:
    """A field added to Task or TaskSpec needs a case above, or no store is held to keep it."""
    tasks = list(ROUND_TRIP_CASES.values())
    assert never_set(tasks) == []
    assert never_set([task.spec for task in tasks]) == []
    assert never_set([task.spec.placement for task in tasks]) == []


def never_set(objects: list[Any]) -> list[str]:
    """The fields with a default that every one of these dataclass objects leaves at it."""
    unset = []
    for f in dataclasses.fields(objects[0]):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue  # required, so always set
        if all(getattr(o, f.name) == default for o in objects):
            unset.append(f.name)
    return unset


@pytest.mark.parametrize("task", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
async def test_insert_then_get_round_trips_every_field(store: Store, task: Task) -> None:
    await store.insert_tasks([task])
    assert await store.get_task(task.id) == task


async def test_get_of_a_missing_task_is_none(store: Store) -> None:
    assert await store.get_task(42) is None


async def test_save_round_trips_every_field_but_the_spec(store: Store) -> None:
    task = ROUND_TRIP_CASES["placed, waiting"]
    await store.insert_tasks([task])
    updated = finished(
        task,
        FAILED,
        seq=99,
        error=TaskError(type="E", message="m", traceback="t"),
        placement_note="ran on w1",
        unschedulable=False,
    )
    store.save(updated)
    await store.flush()
    assert await store.get_task(task.id) == updated
    requeued = dataclasses.replace(
        updated, state=PENDING, error=None, worker_id="", placement_note="", unschedulable=True
    )
    store.save(dataclasses.replace(requeued, spec=TaskSpec(task_type="other", pool="elsewhere")))
    await store.flush()
    assert await store.get_task(task.id) == requeued  # the spec is as inserted


async def test_the_last_save_wins(store: Store) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    store.save(dataclasses.replace(task, state=ASSIGNED, worker_id="w1", attempts=1))
    store.save(dataclasses.replace(task, state=RUNNING, worker_id="w1", attempts=1))
    store.save(finished(task))
    await store.flush()
    assert await store.get_task(1) == finished(task)
    assert await store.count_by_pool_state() == {("default", SUCCEEDED): 1}


async def test_reads_see_writes_queued_before_them(store: Store) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    store.save(finished(task))
    assert await store.get_task(1) == finished(task)


async def test_reads_see_held_tasks_saves_which_durable_does_not_wait_for(
    store: Store,
) -> None:
    """A held task's save waits for the commit after next (`durable()` does not wait for
    it), yet every read sees it: a read of that task, a listing, a count."""
    tasks = [make_task(1), make_task(2)]
    await store.insert_tasks(tasks)
    held = [dataclasses.replace(t, state=RUNNING, worker_id="w1", attempts=1) for t in tasks]
    for task in held:
        store.save(task)
    await store.durable()
    assert await store.get_task(1) == held[0]
    assert await store.list_tasks(TaskFilter(states=frozenset({RUNNING}))) == held[::-1]
    assert await store.count_by_pool_state() == {("default", RUNNING): 2}


async def test_get_tasks_reads_the_stored_ones_among_many_ids(store: Store) -> None:
    """Past one statement's worth of ids (SQLite reads 500 at a time), repeats once, an
    unknown id left out, and a held task's save seen."""
    tasks = [make_task(i) for i in range(1, 1201)]
    await store.insert_tasks(tasks)
    held = dataclasses.replace(tasks[9], state=RUNNING, worker_id="w1", attempts=1)
    store.save(held)
    wanted = [*range(1, 1201), 5, 10_000]
    got = await store.get_tasks(wanted)
    assert sorted(task.id for task in got) == list(range(1, 1201))
    assert {task.id: task for task in got}[10] == held
    assert await store.get_tasks([]) == []


async def test_a_save_of_a_task_never_inserted_is_ignored(store: Store) -> None:
    store.save(make_task(1))
    await store.flush()
    assert await store.get_task(1) is None
    assert await store.max_task_id() == 0


async def test_the_store_keeps_copies_not_the_callers_tasks(store: Store) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    task.state, task.attempts = ASSIGNED, 1  # in place, never saved
    assert await store.get_task(1) == make_task(1)

    saved = finished(make_task(1))
    store.save(saved)
    await store.flush()
    saved.state, saved.result = FAILED, b"changed in place"
    assert await store.get_task(1) == finished(make_task(1))

    for read in [
        await store.get_task(1),
        *await store.list_tasks(TaskFilter()),
        *await store.load_unfinished(),
    ]:
        assert read is not None
        read.state = CANCELLED  # what a read hands out is the caller's to change
    assert await store.get_task(1) == finished(make_task(1))


async def test_a_save_stores_the_task_as_it_was_when_saved(store: Store) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    running = dataclasses.replace(task, state=RUNNING, worker_id="w1", attempts=1)
    store.save(running)
    # Changed in place before the commit, and never saved again: not stored.
    running.state, running.finished_at, running.result = SUCCEEDED, 5.0, b"unsaved"
    await store.flush()
    assert await store.get_task(1) == dataclasses.replace(
        task, state=RUNNING, worker_id="w1", attempts=1
    )
    store.save(running)  # saved again: now it is
    await store.flush()
    assert await store.get_task(1) == running


async def test_inserted_and_runtime_snapshots_ignore_later_changes(store: Store) -> None:
    task = make_task(1)
    inserting = asyncio.ensure_future(store.insert_tasks([task]))
    await asyncio.sleep(0)  # the insert has started: it waits for its commit
    task.state, task.attempts = ASSIGNED, 1
    key, stats = RuntimeKey("default", "resize", "*"), RunStats()
    stats.add(1.0)
    store.save_runtime(key, stats)
    stats.add(3.0)  # before the commit, never saved
    await inserting
    await store.flush()
    assert await store.get_task(1) == make_task(1)
    ((_, loaded),) = await store.load_runtimes()
    assert (loaded.count, loaded.mean_s) == (1, 1.0)


# Durability ------------------------------------------------------------------------------


async def test_durable_is_done_at_once_when_nothing_is_queued(store: Store) -> None:
    assert store.durable().done()


async def test_durable_resolves_once_the_save_is_stored(store: Store) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    store.save(finished(task))
    await store.durable()
    assert await store.get_task(1) == finished(task)


async def test_cancelling_one_waiter_leaves_the_others(store: Store) -> None:
    task = make_task(1)
    await store.insert_tasks([task])
    store.save(finished(task))
    abandoned, kept = store.durable(), store.durable()
    abandoned.cancel()
    await kept
    assert await store.get_task(1) == finished(task)


async def test_a_duplicate_id_fails_its_whole_batch_and_leaves_nothing(
    store: Store,
) -> None:
    await store.insert_tasks([make_task(1)])
    with pytest.raises(StorageError):
        await store.insert_tasks([make_task(2), make_task(3), make_task(1, pool="other")])
    with pytest.raises(StorageError):
        await store.insert_tasks([make_task(4), make_task(4)])
    assert [t.id for t in await store.list_tasks(TaskFilter())] == [1]
    assert await store.get_task(1) == make_task(1)
    assert (await store.max_task_id(), await store.max_seq()) == (1, 1)
    await store.insert_tasks([make_task(2), make_task(4)])  # the ids are free still
    assert [t.id for t in await store.list_tasks(TaskFilter())] == [4, 2, 1]


# Queries ---------------------------------------------------------------------------------


async def test_load_unfinished_returns_only_live_tasks_in_seq_order(store: Store) -> None:
    states = [PENDING, SUCCEEDED, RUNNING, FAILED, ASSIGNED, CANCELLED, PENDING]
    seqs = [50, 10, 40, 5, 20, 1, 30]
    tasks = [
        make_task(i + 1, state=state, seq=seq)
        for i, (state, seq) in enumerate(zip(states, seqs, strict=True))
    ]
    await store.insert_tasks(tasks)
    unfinished = await store.load_unfinished()
    assert [t.id for t in unfinished] == [5, 7, 3, 1]  # seq 20, 30, 40, 50
    assert unfinished == sorted((t for t in tasks if not t.state.terminal), key=lambda t: t.seq)
    store.save(finished(tasks[4]))
    store.save(dataclasses.replace(tasks[0], seq=2))
    assert [t.id for t in await store.load_unfinished()] == [1, 7, 3]


async def test_max_task_id_and_max_seq(store: Store) -> None:
    assert (await store.max_task_id(), await store.max_seq()) == (0, 0)
    await store.insert_tasks([make_task(7, seq=3), make_task(5, seq=9)])
    assert (await store.max_task_id(), await store.max_seq()) == (7, 9)
    store.save(make_task(7, seq=12))
    assert (await store.max_task_id(), await store.max_seq()) == (7, 12)


async def test_list_tasks_matches_a_plain_filter(store: Store) -> None:
    tasks = listing_tasks()
    await store.insert_tasks(tasks)
    for flt in FILTERS:
        assert [t.id for t in await store.list_tasks(flt)] == expected(tasks, flt), flt
    everything = await store.list_tasks(TaskFilter(limit=1000))
    assert everything == sorted(tasks, key=lambda t: t.id, reverse=True)


@pytest.mark.parametrize("flt", [TaskFilter(), TaskFilter(pool="gpu", states=frozenset({FAILED}))])
async def test_paging_with_before_id_visits_every_task_once(store: Store, flt: TaskFilter) -> None:
    tasks = listing_tasks()
    await store.insert_tasks(tasks)
    seen = await page_through(store, dataclasses.replace(flt, limit=4))
    assert seen == expected(tasks, dataclasses.replace(flt, limit=1000))


async def page_through(store: Store, page: TaskFilter) -> list[int]:
    """The ids of every page, each asked for with before_id = the last id of the one before."""
    seen: list[int] = []
    while batch := await store.list_tasks(page):
        # Without this a store that repeats a task would keep the loop (and hypothesis) going.
        assert not seen or batch[0].id < seen[-1], f"page {batch} repeats or goes back"
        seen += [t.id for t in batch]
        page = dataclasses.replace(page, before_id=batch[-1].id)
    return seen


async def test_list_tasks_limits(store: Store) -> None:
    await store.insert_tasks([make_task(i) for i in range(1, 151)])
    assert await store.list_tasks(TaskFilter(limit=0)) == []
    assert [t.id for t in await store.list_tasks(TaskFilter())] == list(range(150, 50, -1))
    assert len(await store.list_tasks(TaskFilter(limit=1000))) == 150
    with pytest.raises(InvalidArgument, match="limit"):
        await store.list_tasks(TaskFilter(limit=-1))


_POOLS, _TYPES = ["a", "b", "c"], ["x", "y"]
_stored_tasks = st.lists(
    st.builds(
        make_task,
        st.integers(1, 40),
        pool=st.sampled_from(_POOLS),
        task_type=st.sampled_from(_TYPES),
        state=st.sampled_from(TaskState),
        seq=st.integers(0, 100),
    ),
    max_size=25,
    unique_by=lambda task: task.id,
)
_filters = st.builds(
    TaskFilter,
    pool=st.sampled_from(["", *_POOLS, "none"]),
    states=st.frozensets(st.sampled_from(TaskState)),
    task_type=st.sampled_from(["", *_TYPES, "none"]),
    limit=st.integers(0, 30),
    before_id=st.none() | st.integers(0, 42),
)
_example = itertools.count()  # a fresh file per example; tmp_path lasts the whole test


@settings(
    max_examples=50,
    deadline=None,  # SQLite's first fsync can be slow
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # explaining took 15 s
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # tmp_path only
)
@given(tasks=_stored_tasks, filters=st.lists(_filters, min_size=1, max_size=8))
async def test_listing_and_counting_agree_with_plain_python(
    backend: Backend, tmp_path: Path, tasks: list[Task], filters: list[TaskFilter]
) -> None:
    by_id = {task.id: task for task in tasks}
    async with await backend.open(tmp_path / f"{next(_example)}.db") as store:
        await store.insert_tasks(tasks)
        for flt in filters:
            assert await store.list_tasks(flt) == [by_id[i] for i in expected(tasks, flt)], flt
        first = filters[0]
        seen = await page_through(store, dataclasses.replace(first, limit=max(first.limit, 1)))
        assert seen == expected(tasks, dataclasses.replace(first, limit=1000))
        assert await store.count_by_pool_state() == Counter((t.spec.pool, t.state) for t in tasks)


async def test_count_by_pool_state(store: Store) -> None:
    assert await store.count_by_pool_state() == {}
    tasks = listing_tasks()
    await store.insert_tasks(tasks)
    assert await store.count_by_pool_state() == Counter((t.spec.pool, t.state) for t in tasks)
    for task in tasks:
        if not task.state.terminal:
            store.save(dataclasses.replace(task, state=CANCELLED))
    counts = Counter((t.spec.pool, t.state if t.state.terminal else CANCELLED) for t in tasks)
    assert await store.count_by_pool_state() == counts


# Pools and workers -----------------------------------------------------------------------


async def test_pools_upsert_and_list(store: Store) -> None:
    assert await store.list_pools() == []
    await store.upsert_pool(PoolConfig(name="gpu", strategy="least_loaded"))
    await store.upsert_pool(PoolConfig(name="default"))
    await store.upsert_pool(PoolConfig(name="gpu", strategy="round_robin"))
    assert await store.list_pools() == [
        PoolConfig(name="default"),
        PoolConfig(name="gpu", strategy="round_robin"),
    ]


async def test_pool_settings_round_trip(store: Store) -> None:
    pool = PoolConfig(
        name="gpu",
        strategy="least_loaded",
        ab_strategy="round_robin",
        ab_percent=20,
        sticky_timeout_s=2.5,
    )
    await store.upsert_pool(pool)
    assert await store.list_pools() == [pool]


async def test_pool_limits_round_trip_and_change(store: Store) -> None:
    pool = PoolConfig(
        name="gpu",
        max_inflight=8,
        max_queue=100,
        rate_per_s=20.0,
        rate_burst=40,
        client_rate_per_s=2.5,
        client_rate_burst=5,
        rate_mode="queue",
        breaker_failures=3,
        breaker_failure_rate=0.5,
        breaker_window=10,
        breaker_cooldown_s=7.5,
        lease_s=4.0,
        bulkheads=(
            BulkheadConfig(task_type="render", max_inflight=2, max_queue=10, rate_per_s=1.5),
            BulkheadConfig(task_type="encode", rate_burst=3),
        ),
        fairness_weights={"tenant-a": 3, "tenant-b": 1},
    )
    await store.upsert_pool(pool)
    assert await store.list_pools() == [pool]
    back_to_defaults = PoolConfig(name="gpu")
    await store.upsert_pool(back_to_defaults)
    assert await store.list_pools() == [back_to_defaults]


async def test_the_config_files_settings_of_pools_round_trip_and_are_replaced(
    store: Store,
) -> None:
    assert await store.load_file_settings() == {}
    gpu = {"max_inflight": 32, "rate_per_s": 2.5, "bulkheads": [{"task_type": "render"}]}
    await store.record_file_settings("gpu", gpu)
    await store.record_file_settings("default", {"strategy": "round_robin"})
    gpu["max_inflight"] = 1  # the store kept a snapshot
    assert await store.load_file_settings() == {
        "default": {"strategy": "round_robin"},
        "gpu": {"max_inflight": 32, "rate_per_s": 2.5, "bulkheads": [{"task_type": "render"}]},
    }
    await store.record_file_settings("gpu", {"max_inflight": 100, "fairness_weights": {"a": 2}})
    settings = await store.load_file_settings()
    assert settings["gpu"] == {"max_inflight": 100, "fairness_weights": {"a": 2}}
    settings["gpu"]["max_inflight"] = 7  # a read is a copy
    assert (await store.load_file_settings())["gpu"]["max_inflight"] == 100


async def test_api_tokens_round_trip_and_a_revocation_replaces_the_token(store: Store) -> None:
    assert await store.load_tokens() == []
    ci = ApiToken(
        name="ci",
        roles=("read", "submit"),
        pools=("tenant-a",),
        digest="ab" * 32,
        created_at=100.0,
    )
    ops = ApiToken(name="ops", roles=("admin",), pools=(), digest="cd" * 32, created_at=101.0)
    await store.save_token(ops)
    await store.save_token(ci)
    assert await store.load_tokens() == [ci, ops]  # by name
    revoked = dataclasses.replace(ci, revoked_at=200.0)
    await store.save_token(revoked)
    assert await store.load_tokens() == [revoked, ops]


async def test_idempotency_keys_find_the_earliest_task_within_the_window(
    store: Store,
) -> None:
    first = make_task(1, idempotency_key="k1", created_at=100.0)
    again = make_task(2, idempotency_key="k1", created_at=200.0)
    other_pool = make_task(3, idempotency_key="k2", pool="gpu", created_at=200.0)
    old = make_task(4, idempotency_key="k3", created_at=10.0)
    await store.insert_tasks([first, again, other_pool, old])
    found = await store.find_idempotent("default", ["k1", "k2", "k3", "nope"], since=50.0)
    assert found == {"k1": first}
    assert await store.find_idempotent("gpu", ["k2"], since=0.0) == {"k2": other_pool}


# What placement learns ----------------------------------------------------------------


async def test_sticky_keys_round_trip_and_move(store: Store) -> None:
    assert await store.load_sticky() == {}
    store.save_sticky("default", "user-1", "w1")
    store.save_sticky("default", "user-2", "w2")
    store.save_sticky("gpu", "user-1", "g1")
    store.save_sticky("default", "user-1", "w3")  # the key moved
    await store.flush()
    assert await store.load_sticky() == {
        "default": {"user-1": "w3", "user-2": "w2"},
        "gpu": {"user-1": "g1"},
    }


async def test_an_empty_worker_id_forgets_a_sticky_key(store: Store) -> None:
    store.save_sticky("default", "user-1", "w1")
    store.save_sticky("default", "user-2", "w2")
    await store.flush()
    store.save_sticky("default", "user-1", "")  # evicted by the scheduler
    await store.flush()
    assert await store.load_sticky() == {"default": {"user-2": "w2"}}


async def test_runtimes_round_trip_as_snapshots(store: Store) -> None:
    assert await store.load_runtimes() == []
    key = RuntimeKey("default", "resize", "class=fast")
    stats = RunStats()
    for run_s in (0.1, 0.2, 0.3):
        stats.add(run_s)
    stats.abs_error_s, stats.predicted = 0.25, 2
    store.save_runtime(key, stats)
    await store.flush()
    stats.add(10.0)  # a change that was never saved
    ((loaded_key, loaded),) = await store.load_runtimes()
    assert loaded_key == key
    assert loaded.count == 3
    assert loaded.mean_s == pytest.approx(0.2)
    assert loaded.variance == pytest.approx(0.01)
    assert (loaded.abs_error_s, loaded.predicted) == (0.25, 2)


async def test_arm_stats_round_trip_as_snapshots_per_pool(store: Store) -> None:
    assert await store.load_arm_stats() == {}
    main = ArmStats("least_loaded", placed=8, finished=7, failed=1, wait_s=0.5, run_s=2.25)
    split = ArmStats("predictive", placed=2, finished=2, wait_s=0.1, run_s=0.2)
    store.save_arm_stats("default", [main, split])
    store.save_arm_stats("gpu", [ArmStats("round_robin", placed=1)])
    await store.flush()
    main.placed = 99  # a change that was never saved
    loaded = await store.load_arm_stats()
    assert loaded == {
        "default": [
            ArmStats("least_loaded", placed=8, finished=7, failed=1, wait_s=0.5, run_s=2.25),
            ArmStats("predictive", placed=2, finished=2, wait_s=0.1, run_s=0.2),
        ],
        "gpu": [ArmStats("round_robin", placed=1)],
    }
    loaded["gpu"][0].placed = 5  # a read hands out copies
    store.save_arm_stats("default", [ArmStats("least_loaded", placed=9)])  # the split ended
    await store.flush()
    assert await store.load_arm_stats() == {
        "default": [ArmStats("least_loaded", placed=9)],
        "gpu": [ArmStats("round_robin", placed=1)],
    }


async def test_worker_log_connect_heartbeat_disconnect(store: Store) -> None:
    spec = WorkerSpec(
        worker_id="w1",
        pool="gpu",
        capacity=4,
        task_types=frozenset({"resize", "encode"}),
        labels={"zone": "b", "arch": "arm"},
        sdk_version="1.2.3",
    )
    store.worker_connected(spec, 100.0)
    assert await worker_log(store) == {
        "w1": WorkerRecord(spec=spec, connected_at=100.0, last_heartbeat=100.0)
    }
    store.worker_heartbeat("w1", 105.0)
    store.worker_disconnected("w1", 110.0)
    store.worker_heartbeat("ghost", 111.0)  # never connected: nothing to note
    store.worker_disconnected("ghost", 112.0)
    assert await worker_log(store) == {
        "w1": WorkerRecord(
            spec=spec, connected_at=100.0, last_heartbeat=105.0, disconnected_at=110.0
        )
    }
    store.worker_disconnected("w1", 120.0)
    store.worker_connected(spec, 121.0)  # reconnected
    assert await worker_log(store) == {
        "w1": WorkerRecord(spec=spec, connected_at=121.0, last_heartbeat=121.0)
    }


# Closing ---------------------------------------------------------------------------------

WRITES: dict[str, Callable[[Store], object]] = {
    "insert_tasks": lambda s: s.insert_tasks([make_task(2)]),
    "save": lambda s: s.save(make_task(1)),
    "upsert_pool": lambda s: s.upsert_pool(PoolConfig(name="p")),
    "record_file_settings": lambda s: s.record_file_settings("p", {"max_queue": 1}),
    "save_token": lambda s: s.save_token(
        ApiToken(name="t", roles=("read",), pools=(), digest="00" * 32, created_at=1.0)
    ),
    "worker_connected": lambda s: s.worker_connected(
        WorkerSpec(worker_id="w", pool="p", capacity=1, task_types=frozenset({"t"})), 1.0
    ),
    "worker_heartbeat": lambda s: s.worker_heartbeat("w", 1.0),
    "worker_disconnected": lambda s: s.worker_disconnected("w", 1.0),
}
READS: dict[str, Callable[[Store], Coroutine[Any, Any, object]]] = {
    "get_task": lambda s: s.get_task(1),
    "list_tasks": lambda s: s.list_tasks(TaskFilter()),
    "load_unfinished": lambda s: s.load_unfinished(),
    "max_task_id": lambda s: s.max_task_id(),
    "max_seq": lambda s: s.max_seq(),
    "count_by_pool_state": lambda s: s.count_by_pool_state(),
    "list_pools": lambda s: s.list_pools(),
    "load_file_settings": lambda s: s.load_file_settings(),
    "load_tokens": lambda s: s.load_tokens(),
}


@pytest.mark.parametrize("write", WRITES.values(), ids=WRITES.keys())
async def test_after_close_writes_and_reads_are_refused(
    store: Store, write: Callable[[Store], object]
) -> None:
    await store.insert_tasks([make_task(1)])
    await store.close()
    await store.close()  # idempotent (and the fixture closes it once more)
    with pytest.raises(Unavailable):
        result = write(store)
        if isinstance(result, Coroutine):
            await result
    for name, read in READS.items():
        with pytest.raises(Unavailable):
            await read(store)
            pytest.fail(f"{name} after close")


async def test_leaving_the_context_closes_the_store(backend: Backend, tmp_path: Path) -> None:
    async with await backend.open(tmp_path / "broker.db") as store:
        await store.insert_tasks([make_task(1)])
        assert await store.get_task(1) == make_task(1)
    with pytest.raises(Unavailable):
        await store.get_task(1)


async def test_run_in_a_task_group_returns_once_the_store_is_closed(
    backend: Backend, tmp_path: Path
) -> None:
    async with asyncio.timeout(10), asyncio.TaskGroup() as group:
        store = await backend.open(tmp_path / "broker.db")
        runner = group.create_task(store.run())
        await store.insert_tasks([make_task(1)])
        store.save(finished(make_task(1)))
        assert await store.get_task(1) == finished(make_task(1))
        await store.close()
    assert runner.done()
    with pytest.raises(Unavailable):
        await store.get_task(1)


# Metrics history ---------------------------------------------------------------------------


def rollup(start: float, worker_id: str = "w1", **fields: Any) -> RollupRow:
    """A minute row of pool p, type t; `fields` may change any column."""
    values: dict[str, Any] = {"pool": "p", "task_type": "t", "bucket_s": 60} | fields
    return RollupRow(worker_id=worker_id, start=start, **values)


T0 = 1_700_002_800.0  # a whole hour


async def test_rollups_round_trip_and_add_up_per_key(store: Store) -> None:
    assert await store.load_rollups("", "", "", 0, 2e9) == []
    first = rollup(
        T0,
        submitted=3,
        completed=2,
        failed=1,
        wait_count=2,
        wait_sum=0.5,
        run_count=2,
        run_sum=3.25,
        wait_hist=(0, 2, 0),
        run_hist=(1, 0, 1),
    )
    store.save_rollups([first])
    await store.flush()
    assert await store.load_rollups("p", "t", "w1", T0, T0 + 60) == [first]
    # The same key again, twice in one batch: added to what is stored.
    again = rollup(T0, submitted=1, completed=1, run_count=1, run_sum=1.0, run_hist=(0, 0, 1))
    store.save_rollups([again, again])
    await store.flush()
    assert await store.load_rollups("", "", "", 0, 2e9) == [
        rollup(
            T0,
            submitted=5,
            completed=4,
            failed=1,
            wait_count=2,
            wait_sum=0.5,
            run_count=4,
            run_sum=5.25,
            wait_hist=(0, 2, 0),
            run_hist=(1, 0, 3),
        )
    ]


async def test_rollup_histograms_of_different_lengths_add_as_if_padded(
    store: Store,
) -> None:
    store.save_rollups([rollup(T0, run_hist=(1, 2)), rollup(T0, run_hist=(1, 1, 1, 1))])
    store.save_rollups([rollup(T0, run_hist=(5,))])
    await store.flush()
    (row,) = await store.load_rollups("", "", "", 0, 2e9)
    assert (row.run_hist, row.wait_hist) == ((7, 3, 1, 1), ())


async def test_load_rollups_filters_and_finds_overlapping_buckets(store: Store) -> None:
    rows = [
        rollup(T0, "w1", submitted=1),
        rollup(T0, "w2", submitted=2),
        rollup(T0 + 60, "w1", task_type="u", submitted=3),
        rollup(T0 + 60, "w1", pool="q", submitted=4),
        rollup(T0 - 3600, "w1", bucket_s=3600, submitted=5),  # an hour, ending at T0
        rollup(T0 + 3600, "w1", bucket_s=3600, submitted=6),
    ]
    store.save_rollups(rows)
    await store.flush()

    async def submitted(
        pool: str = "",
        task_type: str = "",
        worker_id: str = "",
        since: float = 0,
        until: float = 2e9,
    ) -> list[int]:
        found = await store.load_rollups(pool, task_type, worker_id, since, until)
        return [row.submitted for row in found]

    # Oldest first, then by pool, type and worker.
    assert await submitted() == [5, 1, 2, 3, 4, 6]
    assert await submitted(pool="p") == [5, 1, 2, 3, 6]
    assert await submitted(task_type="u") == [3]
    assert await submitted(worker_id="w2") == [2]
    assert await submitted(pool="q", worker_id="w2") == []
    assert await submitted(since=T0, until=T0 + 60) == [1, 2]  # [since, until)
    assert await submitted(since=T0 - 1, until=T0) == [5]  # the hour overlaps
    assert await submitted(since=T0 + 3599, until=T0 + 3601) == [6]


async def test_compact_rollups_merges_narrow_rows_into_wide_ones(store: Store) -> None:
    rows = [
        rollup(T0 + m * 60, worker, submitted=1, run_count=1, run_sum=0.5, run_hist=(0, 1))
        for m in range(120)
        for worker in ("w1", "w2")
    ]
    stored_hour = rollup(T0, "w1", bucket_s=3600, submitted=10, run_hist=(3,))
    store.save_rollups([*rows, stored_hour])
    await store.flush()
    # Before T0 + 90 min: the first hour and half of the second.
    assert await store.compact_rollups(T0 + 5400, 3600) == 180
    found = await store.load_rollups("", "", "", 0, 2e9)
    hours = [
        (r.worker_id, r.start, r.submitted, r.run_sum, r.run_hist)
        for r in found
        if r.bucket_s == 3600
    ]
    assert sorted(hours) == [
        ("w1", T0, 70, 30.0, (3, 60)),
        ("w1", T0 + 3600, 30, 15.0, (0, 30)),
        ("w2", T0, 60, 30.0, (0, 60)),
        ("w2", T0 + 3600, 30, 15.0, (0, 30)),
    ]
    minutes = sorted((r.worker_id, r.start) for r in found if r.bucket_s == 60)
    assert minutes == [(w, T0 + m * 60) for w in ("w1", "w2") for m in range(90, 120)]
    assert sum(r.submitted for r in found) == 250
    assert await store.compact_rollups(T0 + 5400, 3600) == 0


async def test_delete_rollups_deletes_what_starts_before(store: Store) -> None:
    store.save_rollups(
        [rollup(T0 - 3600, bucket_s=3600), rollup(T0 - 60), rollup(T0), rollup(T0 + 60)]
    )
    await store.flush()
    assert await store.delete_rollups(T0) == 2
    assert [r.start for r in await store.load_rollups("", "", "", 0, 2e9)] == [T0, T0 + 60]
    assert await store.delete_rollups(T0) == 0


async def test_after_close_the_metrics_history_is_refused(store: Store) -> None:
    await store.close()
    with pytest.raises(Unavailable):
        store.save_rollups([rollup(T0)])
    with pytest.raises(Unavailable):
        await store.load_rollups("", "", "", 0, 2e9)
    with pytest.raises(Unavailable):
        await store.compact_rollups(T0, 3600)
    with pytest.raises(Unavailable):
        await store.delete_rollups(T0)


# Retention ----------------------------------------------------------------------------

DEAD_LETTER = TaskState.DEAD_LETTER
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, DEAD_LETTER})


async def test_purge_deletes_only_finished_tasks_of_the_pool_older_than_the_cutoff(
    store: Store,
) -> None:
    def done(task_id: int, state: TaskState, at: float, **changes: Any) -> Task:
        return dataclasses.replace(finished(make_task(task_id, **changes), state), finished_at=at)

    old = [done(1, SUCCEEDED, 10.0), done(2, FAILED, 11.0), done(3, CANCELLED, 12.0)]
    old.append(done(4, DEAD_LETTER, 13.0, idempotency_key="k"))
    new = done(5, SUCCEEDED, 100.0)
    other_pool = done(6, SUCCEEDED, 10.0, pool="gpu")
    unfinished = [make_task(7), make_task(8, state=ASSIGNED), make_task(9, state=RUNNING)]
    await store.insert_tasks([*old, new, other_pool, *unfinished])

    assert await store.purge_tasks("default", 50.0, TERMINAL, limit=1000) == {
        SUCCEEDED: 1,
        FAILED: 1,
        CANCELLED: 1,
        DEAD_LETTER: 1,
    }
    left = await store.list_tasks(TaskFilter(limit=100))
    assert sorted(t.id for t in left) == [5, 6, 7, 8, 9]
    assert await store.get_task(1) is None
    assert await store.find_idempotent("default", ["k"], since=0.0) == {}
    counts = await store.count_by_pool_state()
    assert counts[("default", SUCCEEDED)] == 1
    assert ("default", FAILED) not in counts
    # Nothing more is old enough; unfinished tasks never go, whatever their times.
    assert await store.purge_tasks("default", 1e12, TERMINAL, limit=1000) == {SUCCEEDED: 1}
    assert sorted(t.id for t in await store.load_unfinished()) == [7, 8, 9]


async def test_purge_takes_the_states_asked_for_oldest_first_up_to_the_limit(
    store: Store,
) -> None:
    tasks = [
        dataclasses.replace(
            finished(make_task(i), FAILED if i % 2 else SUCCEEDED), finished_at=float(100 - i)
        )
        for i in range(1, 11)
    ]
    await store.insert_tasks(tasks)
    # The oldest succeeded ones first: ids 10, 8, 6 finished at 90, 92, 94.
    assert await store.purge_tasks("default", 1e9, {SUCCEEDED}, limit=3) == {SUCCEEDED: 3}
    left = {t.id for t in await store.list_tasks(TaskFilter(limit=100))}
    assert left == {1, 2, 3, 4, 5, 7, 9}
    assert await store.purge_tasks("default", 1e9, {SUCCEEDED, FAILED}, limit=100) == {
        SUCCEEDED: 2,
        FAILED: 5,
    }


async def test_a_save_after_a_purge_does_not_bring_the_task_back(store: Store) -> None:
    task = finished(make_task(1))
    await store.insert_tasks([task])
    assert await store.purge_tasks("default", 1e12, TERMINAL, limit=10) == {SUCCEEDED: 1}
    store.save(task)
    await store.flush()
    assert await store.get_task(1) is None


@pytest.mark.parametrize(
    ("states", "limit"),
    [(set(), 10), ({PENDING}, 10), ({SUCCEEDED, RUNNING}, 10), ({SUCCEEDED}, 0)],
)
async def test_purge_refuses_unfinished_states_and_bad_limits(
    store: Store, states: set[TaskState], limit: int
) -> None:
    await store.insert_tasks([make_task(1), finished(make_task(2))])
    with pytest.raises(InvalidArgument):
        await store.purge_tasks("default", 1e12, states, limit=limit)
    assert len(await store.list_tasks(TaskFilter(limit=10))) == 2
