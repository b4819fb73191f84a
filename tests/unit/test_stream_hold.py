"""A worker stream holds new assignments while the worker's earlier results are not
durable: what a worker was sent and is not durably done stays within its capacity plus
one commit's worth of its results."""

from __future__ import annotations

import asyncio

from broker.domain import Task, TaskSpec
from broker.server.workers import StreamChannel
from worker_sdk._pb import worker_pb2 as _worker


def task(task_id: int) -> Task:
    return Task(id=task_id, spec=TaskSpec(task_type="t"), attempts=1)


def commit() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


def attached() -> tuple[StreamChannel, asyncio.Queue[_worker.BrokerMessage]]:
    """A channel attached to a stream that records what is written to it."""
    written: asyncio.Queue[_worker.BrokerMessage] = asyncio.Queue()

    async def write(message: _worker.BrokerMessage) -> None:
        written.put_nowait(message)

    channel = StreamChannel()
    channel.attach(write)
    return channel, written


async def sent(written: asyncio.Queue[_worker.BrokerMessage]) -> list[str]:
    message = await asyncio.wait_for(written.get(), 1)
    return [a.task_id for a in message.assignments.assignments]


async def still_held(written: asyncio.Queue[_worker.BrokerMessage]) -> bool:
    for _ in range(10):
        await asyncio.sleep(0)
    return written.empty()


async def test_a_slots_next_task_leaves_while_the_result_that_freed_it_commits() -> None:
    channel, written = attached()
    channel.send_assignments([task(1)])
    assert await sent(written) == ["1"]
    # Task 1's result came back (its slot is free), and its commit is still running.
    channel.results_pending(commit())
    channel.send_assignments([task(2)])  # the broker placed the next task on the slot
    assert await sent(written) == ["2"]
    channel.close(None)


async def test_no_assignment_leaves_while_the_results_before_those_that_freed_it_commit() -> None:
    channel, written = attached()
    first_commit, second_commit = commit(), commit()
    channel.results_pending(first_commit)  # task 1's result
    channel.results_pending(second_commit)  # task 2's, while task 1's still commits
    channel.send_assignments([task(3)])  # placed on the slot task 2 freed
    assert await still_held(written), "task 3 left before task 1's result was durable"
    assert channel.in_transit(0) == {3}
    first_commit.set_result(None)
    assert await sent(written) == ["3"]
    channel.close(None)


async def test_results_in_one_commit_hold_what_follows_them_until_it_is_done() -> None:
    """Two messages of results that go into the same group commit: the second one's
    earlier results are the first one's, in that commit, so the next task waits for it."""
    channel, written = attached()
    shared = commit()
    channel.results_pending(shared)
    channel.results_pending(shared)
    channel.send_assignments([task(1)])
    assert await still_held(written)
    shared.set_result(None)
    assert await sent(written) == ["1"]
    channel.close(None)


async def test_an_assignment_waits_only_for_the_commit_before_the_results_that_freed_it() -> None:
    """Under a steady flow of results, an assignment leaves once the commit of the results
    before those that freed its slot is done, whatever newer results still commit."""
    channel, written = attached()
    first, second, third = commit(), commit(), commit()
    channel.results_pending(first)
    channel.results_pending(second)
    channel.send_assignments([task(1)])  # waits for the first commit
    channel.results_pending(third)
    channel.send_assignments([task(2)])  # waits for the second
    assert channel.in_transit(0) == {1, 2}
    first.set_result(None)
    assert await sent(written) == ["1"]
    assert await still_held(written)
    second.set_result(None)
    assert await sent(written) == ["2"]
    channel.close(None)


async def test_a_failed_commit_releases_what_waits_for_it() -> None:
    """A commit that fails is the watchers' and the broker's news: the stream goes on."""
    channel, written = attached()
    failed, later = commit(), commit()
    channel.results_pending(failed)
    channel.results_pending(later)
    channel.send_assignments([task(1)])
    failed.set_exception(OSError("disk full"))
    assert await sent(written) == ["1"]
    channel.close(None)
