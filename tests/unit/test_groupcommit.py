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
