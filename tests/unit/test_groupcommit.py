"""The group commit on a fake backend: batching, snapshots, and a writer that its owner runs."""

from __future__ import annotations

import asyncio

import pytest

from broker.clock import FakeClock
from broker.domain import PoolConfig, Task, TaskSpec, TaskState
from broker.errors import StorageError, Unavailable
from broker.storage.groupcommit import GroupCommit, WriteBatch

Row = tuple[str, int, TaskState]


class RecordingBackend:
    """Keeps every committed batch; fails the next commit when told to."""

    def __init__(self) -> None:
        self.batches: list[WriteBatch[Row]] = []
        self.fail_next: Exception | None = None
        self.closed = False
        self.committed = asyncio.Condition()  # notified after each commit

    def inserted_row(self, task: Task) -> Row:
        return ("insert", task.id, task.state)

    def saved_row(self, task: Task) -> Row:
        return ("save", task.id, task.state)

    async def commit(self, batch: WriteBatch[Row]) -> None:
        await asyncio.sleep(0)  # like a real backend, let others run meanwhile
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.batches.append(batch)
        async with self.committed:
            self.committed.notify_all()

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def store(backend: RecordingBackend) -> GroupCommit[Row]:
    return GroupCommit(backend, FakeClock())


def task(task_id: int, state: TaskState = TaskState.PENDING) -> Task:
    return Task(id=task_id, spec=TaskSpec(task_type="t"), state=state)


def crash_once(store: GroupCommit[Row], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the writer itself fail (a bug, not a failed commit) the next time it commits."""
    commit_queued = store._commit_queued

    async def broken() -> None:
        monkeypatch.setattr(store, "_commit_queued", commit_queued)
        raise RuntimeError("bug in the writer")

    monkeypatch.setattr(store, "_commit_queued", broken)


async def test_a_batch_carries_snapshots_the_last_save_winning(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    running = task(1)
    store.save(running)
    running.state = TaskState.RUNNING
    store.save(running)
    running.state = TaskState.SUCCEEDED  # in place, never saved
    store.save(task(2))
    await store.flush()
    (batch,) = backend.batches
    assert batch.saves == {
        1: ("save", 1, TaskState.RUNNING),
        2: ("save", 2, TaskState.PENDING),
    }
    await store.close()


async def test_concurrent_writers_share_one_commit(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    await asyncio.gather(
        store.insert_tasks([task(1)]),
        store.insert_tasks([task(2), task(3)]),
        store.upsert_pool(PoolConfig(name="p")),
    )
    assert len(backend.batches) == store.commits == 1
    assert [row[1] for row in backend.batches[0].inserts] == [1, 2, 3]
    assert list(backend.batches[0].pools) == ["p"]
    await store.close()


async def test_a_write_made_a_turn_after_the_one_that_woke_the_writer_shares_its_commit(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    """A message takes a turn or two of the loop from the socket to its write: the writer
    lets GATHER_TURNS turns run before it commits, so what already arrived joins."""

    def end(task_id: int) -> None:
        store.save(task(task_id, TaskState.SUCCEEDED))
        done.append(store.durable())

    done: list[asyncio.Future[None]] = []
    end(1)  # wakes the writer
    asyncio.get_running_loop().call_soon(end, 2)
    while len(done) < 2:
        await asyncio.sleep(0)
    await asyncio.gather(*done)
    assert len(backend.batches) == 1
    assert sorted(backend.batches[0].saves) == [1, 2]
    await store.close()


async def test_a_failed_commit_fails_its_waiters_and_the_writer_goes_on(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    backend.fail_next = OSError("disk full")
    with pytest.raises(StorageError, match="could not commit: disk full") as failed:
        await store.insert_tasks([task(1)])
    assert isinstance(failed.value.__cause__, OSError)
    await store.insert_tasks([task(2)])
    assert [[row[1] for row in b.inserts] for b in backend.batches] == [[2]]
    await store.close()


async def test_without_run_the_first_write_starts_the_writer(store: GroupCommit[Row]) -> None:
    assert store._writer is None  # opening started nothing
    store.save_sticky("p", "k", "w1")  # rides along: starts nothing either
    assert store._writer is None
    store.save(task(1))
    assert store._writer is not None
    await store.flush()
    await store.close()
    assert store._writer.done()


async def test_run_in_a_task_group_returns_once_the_store_is_closed(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        runner = group.create_task(store.run())
        await store.insert_tasks([task(1)])
        store.save(task(1, TaskState.RUNNING))
        await store.close()
    assert runner.done()
    assert backend.closed
    assert [len(b.inserts) + len(b.saves) for b in backend.batches] == [1, 1]


async def test_a_writer_that_dies_surfaces_in_its_task_group(
    store: GroupCommit[Row], backend: RecordingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_once(store, monkeypatch)
    waiting: list[asyncio.Future[None]] = []
    with pytest.raises(ExceptionGroup) as raised:
        async with asyncio.timeout(5), asyncio.TaskGroup() as group:
            group.create_task(store.run())
            store.save(task(1))
            waiting.append(store.durable())
            await asyncio.Event().wait()  # until the group is cancelled by the crash
    assert raised.group_contains(RuntimeError, match="bug in the writer")
    (durable,) = waiting
    with pytest.raises(Unavailable, match="writer stopped"):
        await durable  # its waiter is told, not left hanging
    store.save(task(2))
    with pytest.raises(Unavailable, match="writer stopped"):
        await store.flush()  # nor are later ones
    await store.close()  # commits what is left here, without a writer
    assert [sorted(b.saves) for b in backend.batches] == [[1, 2]]


async def test_cancelling_run_stops_the_writer_and_close_commits_the_rest(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    runner = asyncio.create_task(store.run())
    await store.insert_tasks([task(1)])
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert store._writer is not None
    assert store._writer.cancelled()
    store.save(task(1, TaskState.RUNNING))
    await store.close()
    assert [(len(b.inserts), len(b.saves)) for b in backend.batches] == [(1, 0), (0, 1)]


async def test_close_commits_writes_that_never_started_the_writer(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    store.worker_heartbeat("w1", 5.0)
    await store.close()
    assert store._writer is None
    (batch,) = backend.batches
    assert batch.heartbeats == {"w1": 5.0}
    await store.close()  # idempotent
    with pytest.raises(Unavailable):
        store.save(task(1))
    await store.run()  # closed: nothing to run


# Held tasks' saves -------------------------------------------------------------------------


def saves_of(backend: RecordingBackend, task_id: int) -> list[Row]:
    """Every save of the task the backend committed, in order."""
    return [batch.saves[task_id] for batch in backend.batches if task_id in batch.saves]


async def commit_now(store: GroupCommit[Row]) -> None:
    """One commit that somebody waits for (as a submit's or a result's)."""
    store.save(task(100))  # a pending task's save is not held back
    await store.durable()


async def test_a_held_tasks_save_waits_for_the_commit_after_next(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    store.save(task(1, TaskState.RUNNING))
    await commit_now(store)
    assert 1 not in backend.batches[-1].saves
    await commit_now(store)
    assert backend.batches[-1].saves[1] == ("save", 1, TaskState.RUNNING)


async def test_a_held_task_that_ends_in_time_has_only_its_end_written(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    store.save(task(1, TaskState.ASSIGNED))
    await commit_now(store)
    store.save(task(1, TaskState.RUNNING))  # started: still as due as the assignment
    store.save(task(2, TaskState.RUNNING))
    store.save(task(2, TaskState.SUCCEEDED))
    await commit_now(store)
    assert backend.batches[-1].saves[1] == ("save", 1, TaskState.RUNNING)
    assert backend.batches[-1].saves[2] == ("save", 2, TaskState.SUCCEEDED)
    store.save(task(1, TaskState.SUCCEEDED))
    await commit_now(store)
    await commit_now(store)
    assert saves_of(backend, 1) == [
        ("save", 1, TaskState.RUNNING),
        ("save", 1, TaskState.SUCCEEDED),
    ]
    assert saves_of(backend, 2) == [("save", 2, TaskState.SUCCEEDED)]


async def test_a_task_held_again_after_a_queued_save_keeps_that_saves_place(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    store.save(task(1, TaskState.PENDING))  # requeued...
    store.save(task(1, TaskState.ASSIGNED))  # ...and sent again before the commit
    await commit_now(store)
    assert backend.batches[-1].saves[1] == ("save", 1, TaskState.ASSIGNED)


async def test_a_requeue_replaces_a_held_save_not_yet_written(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    store.save(task(1, TaskState.RUNNING))
    store.save(task(1, TaskState.PENDING))
    await commit_now(store)
    assert backend.batches[-1].saves[1] == ("save", 1, TaskState.PENDING)
    await commit_now(store)
    assert saves_of(backend, 1) == [("save", 1, TaskState.PENDING)]


async def test_held_saves_are_written_with_nobody_waiting(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    store.save(task(1, TaskState.RUNNING))
    async with asyncio.timeout(5), backend.committed:  # two SAVE_DELAY_S timers: 0.1 s
        await backend.committed.wait_for(lambda: any(1 in batch.saves for batch in backend.batches))
    assert backend.batches[-1].saves[1] == ("save", 1, TaskState.RUNNING)


async def test_flush_and_close_write_held_saves(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    store.save(task(1, TaskState.RUNNING))
    await store.flush()
    assert backend.batches[-1].saves == {1: ("save", 1, TaskState.RUNNING)}
    store.save(task(2, TaskState.ASSIGNED))
    await store.close()
    assert backend.batches[-1].saves == {2: ("save", 2, TaskState.ASSIGNED)}


async def test_a_read_sees_held_saves(store: GroupCommit[Row], backend: RecordingBackend) -> None:
    store.save(task(1, TaskState.RUNNING))
    await store._settle()  # what every read of a backend awaits first
    assert backend.batches[-1].saves == {1: ("save", 1, TaskState.RUNNING)}


async def test_a_read_of_one_task_sees_its_held_save_and_leaves_the_others_waiting(
    store: GroupCommit[Row], backend: RecordingBackend
) -> None:
    store.save(task(1, TaskState.RUNNING))
    store.save(task(2, TaskState.RUNNING))
    await store._settle(of_tasks=(2,))  # what a read of task 2 awaits first
    assert backend.batches[-1].saves == {2: ("save", 2, TaskState.RUNNING)}
    await commit_now(store)
    assert backend.batches[-1].saves[1] == ("save", 1, TaskState.RUNNING)
