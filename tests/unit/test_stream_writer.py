"""A worker stream's outbox: written by a task made only while there is something to
write, flushed before the stream ends, and the handler's read interrupted when the
broker ends the stream."""

from __future__ import annotations

import asyncio

from broker.domain import Task, TaskSpec
from broker.errors import Unavailable
from broker.server.workers import StreamChannel
from worker_sdk._pb import worker_pb2 as _worker


def task(task_id: int) -> Task:
    return Task(id=task_id, spec=TaskSpec(task_type="t"), attempts=1)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


class Stream:
    """What a channel writes, and whether it interrupted the handler."""

    def __init__(self, fail: bool = False) -> None:
        self.written: list[_worker.BrokerMessage] = []
        self.interrupted = 0
        self.fail = fail

    async def write(self, message: _worker.BrokerMessage) -> None:
        if self.fail:
            raise ConnectionResetError("the peer went away")
        self.written.append(message)

    def interrupt(self) -> None:
        self.interrupted += 1

    def kinds(self) -> list[str]:
        return [str(m.WhichOneof("kind")) for m in self.written]


async def test_what_was_queued_before_the_ack_goes_out_when_attached() -> None:
    channel, stream = StreamChannel(), Stream()
    channel.send_assignments([task(1)])
    await settle()
    assert stream.written == []
    channel.attach(stream.write, stream.interrupt)
    await settle()
    assert [a.task_id for a in stream.written[0].assignments.assignments] == ["1"]


async def test_an_idle_stream_holds_no_task_of_its_own() -> None:
    channel, stream = StreamChannel(), Stream()
    channel.attach(stream.write, stream.interrupt)
    before = asyncio.all_tasks()
    channel.send_assignments([task(1)])
    channel.send_cancel([2])
    await settle()
    assert stream.kinds() == ["cancel", "assignments"]  # merged into as few as it can
    assert asyncio.all_tasks() == before
    assert stream.interrupted == 0


async def test_ended_by_the_broker_it_writes_what_is_queued_then_interrupts_the_read() -> None:
    channel, stream = StreamChannel(), Stream()
    channel.attach(stream.write, stream.interrupt)
    channel.send_cancel([7])
    channel.send_drain("stopping", stopping=True)
    channel.close(None)
    await settle()
    assert stream.kinds() == ["cancel", "drain"]
    assert stream.interrupted == 1
    channel.send_assignments([task(8)])  # too late: nothing more is written
    await settle()
    assert stream.kinds() == ["cancel", "drain"]


async def test_ended_with_an_error_it_sends_only_the_drain() -> None:
    channel, stream = StreamChannel(), Stream()
    channel.attach(stream.write, stream.interrupt)
    channel.send_cancel([7])
    channel.send_drain("reaped")
    channel.close(Unavailable("no heartbeat"))
    await settle()
    assert stream.kinds() == ["drain"]
    assert stream.interrupted == 1


async def test_a_handler_done_reading_waits_for_the_writes_and_is_not_interrupted() -> None:
    channel, stream = StreamChannel(), Stream()
    channel.attach(stream.write, stream.interrupt)
    channel.send_cancel([7])
    channel.close(None)  # the worker's side ended: the handler stops reading itself
    await channel.finish()
    assert stream.kinds() == ["cancel"]
    assert stream.interrupted == 0


async def test_a_failed_write_ends_the_stream_as_broken() -> None:
    channel, stream = StreamChannel(), Stream(fail=True)
    channel.attach(stream.write, stream.interrupt)
    channel.send_assignments([task(1)])
    await settle()
    assert (channel.ended, channel.broken, channel.error) == (True, True, None)
    assert stream.interrupted == 1
