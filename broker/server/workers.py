"""The gRPC WorkerService: one Connect stream per worker process.

The first message must be Register. After the ack, the handler feeds the worker's
heartbeats, credit changes and results to the broker (through the BrokerService's worker
calls), while what the broker sends (assignments, cancels, drain) is written by a task
made only while there is something to write, merging everything queued since the last
write into as few messages as it can. An idle stream so holds no task of its own besides
gRPC's: a broker may hold 10,000 of them.

A result frees its slot in the broker at once, and the broker may place the next task on
it. That task leaves at once too, while the result commits, unless the worker's results
before it are still not durable: then it waits for their commit. So a slot's next task
never waits for the commit of the result that freed it, yet a worker never runs more
tasks whose outcome a broker crash could lose than its capacity plus one commit's worth
of its results: the tasks run again after a crash are at most twice the worker slots
(README, Delivery semantics).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from broker.domain import Task, TaskId, TaskResult
from broker.errors import BrokerError, FailedPrecondition, InvalidArgument
from broker.server import convert
from broker.server.parsing import Malformed
from broker.server.status import Context, abort
from broker.service import BrokerService
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc

log = logging.getLogger("taskbroker.workers")

# An assignments message carries at most this many payload bytes (but always one task),
# so a batch stays far below the 4 MiB default message limit of a gRPC client.
ASSIGNMENT_BYTES_PER_MESSAGE = 1024 * 1024
# Assignments messages remembered until a heartbeat acknowledges them; past this many
# (a worker that never acknowledges), the oldest are taken as seen.
MAX_UNSEEN_MESSAGES = 10_000
# Cancelled attempts remembered per stream, to say so of a result that crossed a cancel.
MAX_RECENT_CANCELS = 10_000


class StreamChannel:
    """The broker's WorkerChannel for one stream: an outbox written to the stream."""

    def __init__(self) -> None:
        self._assigned: list[tuple[Task, int]] = []  # with the attempt as it was sent
        self._seq = 0  # Assignments messages sent on this stream
        # Sent, not yet acknowledged (made at the first Assignments message: an empty deque
        # costs about 760 bytes, and a broker may hold 10,000 idle streams).
        self._unseen: deque[tuple[int, list[TaskId]]] | None = None
        # The attempt each task was last sent as, until its result or cancel.
        self._attempts: dict[TaskId, int] = {}
        self._cancelled: list[tuple[TaskId, int]] = []
        # Attempts cancelled lately, so a result that crossed the cancel is answered so.
        self._recently_cancelled: dict[TaskId, int] = {}
        self._dropped: list[tuple[TaskResult, str]] = []
        self._drain: tuple[str, float, bool] | None = None
        # Once attached to its stream: how to write a message, the task writing while
        # there is something to write, and what to call if the broker ends the stream
        # while the handler still reads.
        self._write: Callable[[_worker.BrokerMessage], Awaitable[None]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._interrupt: Callable[[], None] | None = None
        self._woken = False  # something was queued since the writer last looked
        self._finished = False  # the last messages were taken: nothing more is written
        # The commits of the worker's last results and of those before them, while not
        # done (they finish in order: the last done means both are).
        self._results_durable: asyncio.Future[None] | None = None
        self._earlier_durable: asyncio.Future[None] | None = None
        # Assignments made while earlier results were being committed, each batch with
        # the commit it waits for (in commit order); released as those commits are done.
        # (Made when an assignment is first held.)
        self._held: deque[tuple[asyncio.Future[None], list[tuple[Task, int]]]] | None = None
        self.ended = False
        self.error: BrokerError | None = None
        # The connection failed under the stream (rather than either side ending it).
        self.broken = False
        self.left = False  # the worker said Leave: it will not resume
        # The seq of the last Results message taken from the worker's session, echoed in
        # Assignments so the worker may forget what it sent up to it.
        self.results_seen = 0

    def send_assignments(self, tasks: Sequence[Task]) -> None:
        attempts = self._attempts
        for task in tasks:
            attempts[task.id] = task.attempts
        earlier = self._earlier_durable
        if earlier is None:
            self._assigned.extend((task, task.attempts) for task in tasks)
            self._wake()
        else:
            self._hold(earlier, [(task, task.attempts) for task in tasks])

    def _wake(self) -> None:
        self._woken = True
        if self._write is not None and self._writer is None and not self._finished:
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())

    def attach(
        self,
        write: Callable[[_worker.BrokerMessage], Awaitable[None]],
        interrupt: Callable[[], None] | None = None,
    ) -> None:
        """The register ack is out: from now on what is queued is written with `write`, by
        a task made only while there is something to write (an idle stream holds none of
        its own: a broker may hold 10,000). `interrupt` is called if the broker ends the
        stream while the handler still reads."""
        self._write = write
        self._interrupt = interrupt
        if self._woken or self.ended:
            self._wake()

    async def _write_pending(self) -> None:
        try:
            while self._woken and self._write is not None:
                self._woken = False
                for message in self._pending():
                    await self._write(message)
        except Exception as exc:  # the stream failed under us: the worker may resume
            log.debug("a worker stream's write failed: %r", exc)
            self.broken = True
            self.close(None)
            self._finished = True
        finally:
            self._writer = None
        if self.ended and (interrupt := self._interrupt) is not None:
            self._interrupt = None
            interrupt()

    async def finish(self) -> None:
        """The handler is done reading: wait until what is queued is written."""
        self._interrupt = None
        while (writer := self._writer) is not None:
            await writer

    def detach(self) -> None:
        """The handler is ending: write nothing more."""
        self._interrupt = None
        self._finished = True
        self._write = None
        if self._writer is not None:
            self._writer.cancel()

    def send_cancel(self, task_ids: Sequence[TaskId]) -> None:
        recent = self._recently_cancelled
        for task_id in task_ids:
            attempt = self._attempts.pop(task_id, 0)
            self._cancelled.append((task_id, attempt))
            recent[task_id] = attempt
        while len(recent) > MAX_RECENT_CANCELS:
            del recent[next(iter(recent))]
        self._wake()

    def send_dropped(self, dropped: Sequence[tuple[TaskResult, str]]) -> None:
        recent = self._recently_cancelled
        for result, why in dropped:
            if recent.get(result.task_id) in (result.attempt, 0) and result.task_id in recent:
                why = "cancelled"
            self._dropped.append((result, why))
        self._wake()

    def results_arrived(self, results: Sequence[TaskResult]) -> None:
        """The worker sent these results: their tasks' attempts need no remembering."""
        attempts = self._attempts
        for result in results:
            if attempts.get(result.task_id) == result.attempt:
                del attempts[result.task_id]

    def results_pending(self, durable: asyncio.Future[None]) -> None:
        """The worker's results so far are durable once `durable` resolves (commits are
        in order, so it stands for every earlier one). Assignments made from now on wait
        for the commit of the results before these, if it is not done: a slot's next task
        never waits for the commit of the result that freed it, and what a worker was
        sent and is not durably done stays within its capacity plus the results of one
        commit. Those queued already have waited for what they need, and go."""
        if durable.done():
            _seen(durable)
            self._results_durable = self._earlier_durable = None
            return
        latest = self._results_durable
        self._earlier_durable = None if latest is None or latest.done() else latest
        if latest is not durable:
            self._results_durable = durable
            durable.add_done_callback(self._results_settled)

    def _hold(self, durable: asyncio.Future[None], batch: list[tuple[Task, int]]) -> None:
        held = self._held
        if held is None:
            held = self._held = deque()
        if held and held[-1][0] is durable:
            held[-1][1].extend(batch)
        else:
            held.append((durable, batch))

    def _results_settled(self, durable: asyncio.Future[None]) -> None:
        _seen(durable)  # a failed commit is the watchers' and the broker's news, not ours
        if durable is self._results_durable:
            self._results_durable = self._earlier_durable = None
        elif durable is self._earlier_durable:
            self._earlier_durable = None
        held = self._held
        released = False
        while held and held[0][0].done():  # commits finish in order
            self._assigned.extend(held.popleft()[1])
            released = True
        if released or (self._drain is not None and not held):
            self._wake()

    def send_drain(self, reason: str, deadline: float = 0.0, stopping: bool = False) -> None:
        self._drain = (reason, deadline, stopping)
        self._wake()

    def in_transit(self, seen: int) -> set[TaskId]:
        unseen = self._unseen
        if unseen is not None:
            while unseen and (unseen[0][0] <= seen or len(unseen) > MAX_UNSEEN_MESSAGES):
                unseen.popleft()
        ids = {task.id for task, _ in self._assigned}
        for _, batch in self._held or ():
            ids.update(task.id for task, _ in batch)
        for _, task_ids in unseen or ():
            ids.update(task_ids)
        return ids

    def _assignments(self, batch: list[tuple[Task, int]]) -> _worker.BrokerMessage:
        self._seq += 1
        if self._unseen is None:
            self._unseen = deque()
        self._unseen.append((self._seq, [task.id for task, _ in batch]))
        return convert.assignments_to_pb(batch, self._seq, self.results_seen)

    def close(self, error: BrokerError | None) -> None:
        """End the stream, with this error as its status (None: end it cleanly)."""
        if not self.ended:
            self.ended = True
            self.error = error
            self._wake()

    def _pending(self) -> list[_worker.BrokerMessage]:
        """The messages to send now for what was queued since the last call."""
        if self._finished:
            return []
        out: list[_worker.BrokerMessage] = []
        if self.ended:
            # Ended cleanly, what was queued goes out first; a Drain always does (the
            # broker stopping ends the streams at once if no task is held).
            self._finished = True
            if self.error is None and self._cancelled:
                out.append(convert.cancel_to_pb(self._cancelled))
            if self.error is None and self._dropped:
                out.append(convert.dropped_to_pb(self._dropped))
            if self._drain is not None:
                out.append(convert.drain_to_pb(*self._drain))
            return out
        if self._cancelled:
            cancelled, self._cancelled = self._cancelled, []
            out.append(convert.cancel_to_pb(cancelled))
        if self._dropped:
            dropped, self._dropped = self._dropped, []
            out.append(convert.dropped_to_pb(dropped))
        assigned, self._assigned = self._assigned, []
        batch: list[tuple[Task, int]] = []
        size = 0
        for task, attempt in assigned:
            if batch and size + len(task.spec.payload) > ASSIGNMENT_BYTES_PER_MESSAGE:
                out.append(self._assignments(batch))
                batch, size = [], 0
            batch.append((task, attempt))
            size += len(task.spec.payload)
        if batch:
            out.append(self._assignments(batch))
        if self._drain is not None and not self._held:  # after every assignment
            drain, self._drain = self._drain, None
            out.append(convert.drain_to_pb(*drain))
        return out


def _seen(future: asyncio.Future[None]) -> None:
    """Mark a durability future's outcome as retrieved."""
    if not future.cancelled():
        future.exception()


class WorkerService(_worker_grpc.WorkerServiceServicer):
    """Registers workers and carries their stream to and from the broker."""

    def __init__(self, service: BrokerService) -> None:
        self._service = service

    async def Connect(  # type: ignore[override]  # writes with context.write
        self, request_iterator: AsyncIterator[_worker.WorkerMessage], context: Context
    ) -> None:
        requests = aiter(request_iterator)
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        channel = StreamChannel()
        try:
            if isinstance(first, Malformed):
                raise first.error()
            if first.WhichOneof("kind") != "register":
                raise FailedPrecondition(
                    "the first message on a worker stream must be register, "
                    f"got {first.WhichOneof('kind') or 'an empty message'}"
                )
            connection = self._service.connect_worker_session(
                convert.worker_spec_from_pb(first.register),
                channel,
                first.register.resume_token,
            )
        except BrokerError as exc:
            await abort(context, exc)
            raise  # abort() raises; this is for the type checker
        spec = connection.spec
        channel.results_seen = connection.results_seen
        del first  # its parsed message (and arena) would live as long as the stream
        try:
            service = self._service
            await context.write(
                convert.register_ack_to_pb(
                    spec.worker_id,
                    service.heartbeat_interval_s,
                    service.lease_s(spec.pool),
                    service.heartbeat_timeout_s,
                    config=service.config,
                    message_limit=service.config.max_message_bytes,
                    resume_token=connection.resume_token,
                    resume_window_s=connection.resume_window_s,
                    resumed=connection.resumed,
                    results_seen=connection.results_seen,
                    idle_heartbeat=service.idle_heartbeat_s,
                )
            )
            handler = asyncio.current_task()
            assert handler is not None
            interrupted = False

            def interrupt() -> None:  # the broker ended the stream: stop reading
                nonlocal interrupted
                interrupted = True
                handler.cancel()

            channel.attach(context.write, interrupt)
            try:
                await self._read(spec.worker_id, requests, channel)
            except asyncio.CancelledError:
                # Ours, unless the call was cancelled as well: then it goes on.
                if not interrupted or handler.uncancel() > 0:
                    raise
            await channel.finish()
            if channel.error is not None:
                await abort(context, channel.error)
        finally:
            channel.detach()
            # A stream that ends without the worker's Leave may be resumed (a cancelled
            # call looks the same as a half-close here); one the broker ended with an
            # error may not.
            broken = not channel.left and (channel.error is None or channel.broken)
            channel.close(None)
            self._service.worker_stream_ended(spec.worker_id, channel, broken=broken)

    async def _read(
        self, worker_id: str, requests: AsyncIterator[_worker.WorkerMessage], channel: StreamChannel
    ) -> None:
        service = self._service
        try:
            async for message in requests:
                if channel.ended:
                    return
                if isinstance(message, Malformed):
                    raise message.error()
                kind = message.WhichOneof("kind")
                if kind == "results":
                    started, results = convert.results_from_pb(message.results)
                    channel.results_arrived(results)
                    seq = message.results.seq
                    durable = service.report(worker_id, started, results, seq)
                    channel.results_seen = max(channel.results_seen, seq)
                    if durable is not None:
                        channel.results_pending(durable)
                elif kind == "heartbeat":
                    beat = message.heartbeat
                    service.heartbeat(
                        worker_id,
                        beat.load,
                        convert.task_ids_from_pb(beat.held_task_ids),
                        beat.assignments_seen,
                    )
                elif kind == "credit":
                    service.set_capacity(worker_id, message.credit.capacity)
                elif kind == "leave":
                    channel.left = True
                elif kind == "register":
                    raise FailedPrecondition("this stream is registered already")
                else:
                    raise InvalidArgument("empty worker message")
            channel.close(None)
        except BrokerError as exc:
            log.warning("worker %s: %s", worker_id, exc)
            channel.close(exc)
        except grpc.aio.AioRpcError:
            channel.broken = True
            channel.close(None)
        except asyncio.CancelledError:
            raise
        except Exception:
            if not channel.ended:  # otherwise: the stream was ended from our side
                log.exception("worker %s: bad stream", worker_id)
                channel.close(InvalidArgument("the worker stream could not be read"))
