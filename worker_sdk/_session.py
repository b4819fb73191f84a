"""One connection to the broker: registration, then a reader, a writer and a heartbeat; it
runs the handlers of the tasks assigned on it and sends their outcomes."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio

from worker_sdk import _convert
from worker_sdk._context import TaskContext
from worker_sdk._errors import TaskbrokerError, WorkerError
from worker_sdk._messages import (
    Assignment,
    AssignmentsReceived,
    CancelRequested,
    DrainRequested,
    RegisterAcked,
    ResultsDropped,
    TaskOutcome,
)
from worker_sdk._payload import bound_traceback, encode_result
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._types import TaskErrorInfo
from worker_sdk._version import __version__

if TYPE_CHECKING:
    from worker_sdk._worker import Worker

_log = logging.getLogger("taskbroker.worker")

# Refusals that will not change by trying again.
_FATAL_REGISTRATION_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)
_DEFAULT_HEARTBEAT_S: Final = 5.0
# A heartbeat renews the leases on the tasks a worker holds: at least this many beat within
# a lease (and within the heartbeat timeout), whatever interval the broker asks for.
_HEARTBEATS_PER_LEASE: Final = 2
# After we half-close, how long the broker gets to end the stream before we cancel it.
_CLOSE_TIMEOUT_S: Final = 5.0
# Results above this many bytes go out in more than one message (gRPC's default limit is 4 MiB).
_MAX_MESSAGE_RESULT_BYTES: Final = 1 << 20

_Stream = grpc.aio.StreamStreamCall[_worker.WorkerMessage, _worker.BrokerMessage]


def _ignore(_: int) -> None:
    pass


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class _Handler:
    function: Callable[[TaskContext], Any]
    is_async: bool


@dataclass(frozen=True, slots=True)
class _Running:
    task: asyncio.Task[None]
    context: TaskContext


class _StreamLost(Exception):
    """The stream to the broker broke; the worker reconnects (to `redirect`, if the broker
    named the one that schedules its pool)."""

    def __init__(self, message: str, redirect: str = "") -> None:
        super().__init__(message)
        self.redirect = redirect


# The trailing metadata key by which a broker that does not schedule a pool names the
# address of the one that does (several brokers on one database).
OWNER_KEY = "taskbroker-owner"


class _Held:
    """The tasks this worker holds and what it owes the broker for them: the handlers
    running, results and start notices not yet sent. It outlives a stream that broke,
    so the next stream can resume the session with them (see `Carried`)."""

    def __init__(self) -> None:
        self.running: dict[str, _Running] = {}
        self.outcomes: list[TaskOutcome] = []
        self.started: list[str] = []
        # Results written but not yet seen by the broker: by the seq of their message,
        # with when they were written. A write that succeeded is lost if the connection
        # breaks before it arrives, and a resumed stream sends them again (only kept if
        # the broker acknowledges results, and no longer than it could resume).
        self.results_seq = 0
        self.unconfirmed: deque[tuple[int, float, list[TaskOutcome]]] = deque()
        self.idle = asyncio.Event()
        self.idle.set()
        self.wake: Callable[[], None] = _nothing  # the current stream's writer

    def cancel_all(self) -> list[asyncio.Task[None]]:
        """Cancel every handler; their tasks, to await."""
        for running in self.running.values():
            running.context._cancel()
            running.task.cancel()
        self.outcomes.clear()
        self.started.clear()
        self.unconfirmed.clear()
        return [running.task for running in self.running.values()]

    def seen(self, results_seen: int, written_before: float = 0.0) -> None:
        """The broker took the results messages up to `results_seen`: forget them, and
        those written before `written_before` (monotonic time; by then the broker has
        either taken them or given the session up)."""
        unconfirmed = self.unconfirmed
        while unconfirmed and (
            unconfirmed[0][0] <= results_seen or unconfirmed[0][1] < written_before
        ):
            unconfirmed.popleft()

    def resend_unseen(self, results_seen: int) -> None:
        """A resumed stream: what the broker did not see of the results written on the
        last one is owed again, ahead of the rest."""
        self.seen(results_seen)
        lost = [outcome for _, _, outcomes in self.unconfirmed for outcome in outcomes]
        self.unconfirmed.clear()
        self.outcomes[:0] = lost


@dataclass(slots=True)
class Carried:
    """What a broken stream leaves for the next: the held tasks, and the token that
    resumes the session they belong to."""

    held: _Held
    resume_token: str


def _nothing() -> None:
    pass


class _Session:
    """One connection: registration, then reader, writer and heartbeat until it ends."""

    def __init__(
        self,
        worker: Worker,
        call: _Stream,
        executor: ThreadPoolExecutor,
        address: str,
    ) -> None:
        self._worker = worker
        self._call = call
        self._messages = aiter(call)
        self._executor = executor
        self._address = address
        self._loop = asyncio.get_running_loop()
        self.registered = False
        self._worker_id = ""
        self._heartbeat_s = _DEFAULT_HEARTBEAT_S
        # Holding no task: how often to beat (the same as _heartbeat_s if the broker did
        # not say), and what wakes the heartbeat up to its usual pace (a task coming).
        self._idle_heartbeat_s = _DEFAULT_HEARTBEAT_S
        self._work_came = asyncio.Event()
        self.lease_s: float | None = None  # as the broker told it at registration
        self._held = _Held()
        self._resume_token = ""  # as the broker gave it at registration
        # How long results written stay kept for a resume (0: not at all): until the
        # broker has either taken them or given the session up.
        self._keep_unconfirmed_s = 0.0
        self._keep_held = False  # the stream broke: the handlers run on, for a resume
        self._drain = asyncio.Event()
        self._drain_request: DrainRequested | None = None
        # The writer's buffers: everything queued while it writes goes out in one message
        # (results and start notices wait in self._held).
        self._control: list[_worker.WorkerMessage] = []
        self._heartbeat_due = False
        self._wake = asyncio.Event()
        self._half_close = False
        # The seq of the last Assignments message on this stream, echoed in heartbeats.
        self._assignments_seen = 0

    def is_handler_task(self, task: asyncio.Task[Any] | None) -> bool:
        return any(running.task is task for running in self._held.running.values())

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, registered_before: bool) -> None:
        """Serve until drained or stopped (returns) or until the stream breaks (_StreamLost)."""
        stop_wait = asyncio.create_task(self._worker._stop.wait())
        background: list[asyncio.Task[Any]] = [stop_wait]
        try:
            register = asyncio.create_task(self._register(registered_before))
            background.append(register)
            await asyncio.wait({register, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if not register.done():
                return  # shut down before the broker answered
            register.result()
            slots = self._worker._processes
            if slots is not None:
                slots.on_available = self._offer
                if slots.available < self._worker._capacity:
                    self._offer(slots.available)
            reader = asyncio.create_task(self._read_loop(), name="taskbroker-worker-reader")
            writer = asyncio.create_task(self._write_loop(), name="taskbroker-worker-writer")
            heartbeat = asyncio.create_task(self._heartbeat_loop(), name="taskbroker-heartbeat")
            drain_wait = asyncio.create_task(self._drain.wait())
            background += [reader, writer, heartbeat, drain_wait]
            # The heartbeat never ends by itself: if it does, it failed, and the session
            # starts again rather than go on silently without heartbeats.
            await asyncio.wait(
                {reader, writer, heartbeat, stop_wait, drain_wait},
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopping = self._worker._stop.is_set()
            if not (stopping or self._drain.is_set()):
                self._keep_for_resume()
                raise _StreamLost(self._loss_reason(reader, writer, heartbeat))
            # A drain (or shutdown) counts even if the broker ended the stream right after it.
            drain = self._drain_request
            if stopping:
                _log.info("worker %s shutting down", self._worker_id)
                self._send_control(_convert.credit_message(0))
                grace: float | None = self._worker._grace
            elif drain is not None and drain.deadline is not None:
                grace = max(0.0, drain.deadline.timestamp() - time.time())
            else:
                grace = None
            await self._finish_in_flight(grace, reader, writer)
            await self._close(reader, writer)
            if not stopping and drain is not None and drain.stopping:
                # The broker is going away, not sending us away: connect again (to it
                # restarted, or whatever answers at its address).
                raise _StreamLost(f"the broker at {self._address} is stopping")
        finally:
            if self._worker._processes is not None:
                self._worker._processes.on_available = _ignore
            handlers = [] if self._keep_held else self._held.cancel_all()
            self._call.cancel()
            for task in background:
                task.cancel()
            await asyncio.gather(*handlers, *background, return_exceptions=True)

    def _keep_for_resume(self) -> None:
        """The stream broke: if the broker gave a resume token and tasks are held, leave
        them running for the next stream to resume the session with."""
        held = self._held
        if self._resume_token and (held.running or held.outcomes or held.unconfirmed):
            self._keep_held = True
            held.wake = _nothing
            self._worker._carried = Carried(held, self._resume_token)

    def _offer(self, available: int) -> None:
        """Tell the broker how many slots it may fill: fewer while a killed handler process
        is being replaced."""
        if self._worker._stop.is_set() or self._drain.is_set() or self._half_close:
            return  # the worker already told the broker it takes no more
        self._send_control(_convert.credit_message(available))

    async def _register(self, registered_before: bool) -> None:
        worker = self._worker
        carried = worker._carried
        try:
            await self._call.write(
                _convert.register_message(
                    worker_id=worker._worker_id or "",
                    pool=worker._pool,
                    labels=worker._labels,
                    capacity=worker._capacity,
                    task_types=worker._handlers,
                    sdk_version=__version__,
                    resume_token=carried.resume_token if carried is not None else "",
                )
            )
            first = await anext(self._messages, None)
        except grpc.RpcError as exc:
            error = _convert.rpc_error(exc, self._address)
            code = exc.code()
            # Re-registering the same id may race the broker noticing the old stream is gone.
            retry_conflict = registered_before and code is grpc.StatusCode.ALREADY_EXISTS
            if code in _FATAL_REGISTRATION_CODES and not retry_conflict:
                _log.error("broker at %s refused registration: %s", self._address, error)
                raise error from None
            owner = ""
            if isinstance(exc, grpc.aio.AioRpcError):
                pairs: Any = exc.trailing_metadata() or ()
                owner = next((str(v) for k, v in pairs if k == OWNER_KEY), "")
            raise _StreamLost(f"registration failed: {error}", owner) from None
        except asyncio.InvalidStateError as exc:
            raise _StreamLost(f"registration failed: {exc}") from None
        if first is None:
            raise _StreamLost(f"broker at {self._address} closed the stream before registering")
        event = _convert.broker_event(first)
        if not isinstance(event, RegisterAcked):
            raise TaskbrokerError(
                f"broker at {self._address} answered the registration with {event!r}"
            )
        self._worker_id = event.worker_id or worker._worker_id or ""
        worker._worker_id = self._worker_id
        self._heartbeat_s = heartbeat_interval(event)
        self._idle_heartbeat_s = idle_heartbeat_interval(event, self._heartbeat_s)
        self.lease_s = worker._lease_s = event.lease_s or None
        self._resume_token = event.resume_token
        if event.acks_results and event.resume_window_s:
            self._keep_unconfirmed_s = event.heartbeat_timeout_s + event.resume_window_s
        worker._carried = None
        if carried is not None:
            if event.resumed:
                self._held = carried.held
                self._held.resend_unseen(event.results_seen)
                _log.info(
                    "resumed the session of worker %s with %d tasks held",
                    self._worker_id,
                    len(self._held.running) + len(self._held.outcomes),
                )
            else:  # the broker has requeued them: they would run twice
                if carried.held.running:
                    _log.warning(
                        "the broker did not resume the session; cancelling %d tasks it requeued",
                        len(carried.held.running),
                    )
                worker._abandoned.extend(carried.held.cancel_all())
        self._held.wake = self._wake.set
        if self._held.outcomes or self._held.started:
            self._wake.set()  # what the handlers finished while we were away
        self.registered = True
        _log.info(
            "registered with %s as %s (pool %s, capacity %d, types %s)",
            self._address,
            self._worker_id,
            worker._pool,
            worker._capacity,
            ", ".join(worker._handlers),
        )

    def _loss_reason(
        self, reader: asyncio.Task[None], writer: asyncio.Task[None], heartbeat: asyncio.Task[None]
    ) -> str:
        if heartbeat.done() and not heartbeat.cancelled() and (exc := heartbeat.exception()):
            return f"the heartbeat failed: {type(exc).__name__}: {exc}"
        for task in (reader, writer):
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                if isinstance(exc, grpc.RpcError):
                    return f"lost the stream: {_convert.rpc_error(exc, self._address)}"
                return f"lost the stream to {self._address}: {type(exc).__name__}: {exc}"
        return f"broker at {self._address} ended the stream"

    async def _finish_in_flight(
        self, grace: float | None, reader: asyncio.Task[None], writer: asyncio.Task[None]
    ) -> None:
        """Wait for in-flight handlers, at most `grace` seconds, then cancel the rest."""
        idle = asyncio.create_task(self._held.idle.wait())
        try:
            await asyncio.wait(
                {idle, reader, writer}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            idle.cancel()
        if self._held.running:
            _log.warning(
                "cancelling %d unfinished tasks; the broker requeues them", len(self._held.running)
            )
            for running in self._held.running.values():
                running.context._cancel()
                running.task.cancel()

    async def _close(self, reader: asyncio.Task[None], writer: asyncio.Task[None]) -> None:
        """Flush what is buffered, half-close, and give the broker a moment to end the call."""
        self._half_close = True
        self._wake.set()
        await asyncio.wait({reader, writer}, timeout=_CLOSE_TIMEOUT_S)
        if not writer.done():
            _log.warning("broker at %s did not take our last results in time", self._address)

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        async for message in self._messages:
            event = _convert.broker_event(message)
            if isinstance(event, AssignmentsReceived):
                self._held.seen(event.results_seen)
                # With no await in between, every task of a message up to the seq a
                # heartbeat reports is in _running (or finished) when that heartbeat is built.
                self._assignments_seen = event.seq
                for assignment in event.assignments:
                    self._start(assignment)
                if event.assignments:
                    self._work_came.set()
            elif isinstance(event, CancelRequested):
                self._cancel(event.task_ids, event.attempts)
            elif isinstance(event, DrainRequested):
                _log.info("broker drains worker %s: %s", self._worker_id, event.reason or "-")
                self._drain_request = event
                self._drain.set()
            elif isinstance(event, ResultsDropped):
                for task_id, attempt, why in event.results:
                    _log.info(
                        "the broker dropped the result of task %s (attempt %d): %s",
                        task_id,
                        attempt,
                        why,
                    )
            elif isinstance(event, RegisterAcked):
                _log.debug("ignoring a second register_ack")

    def _start(self, assignment: Assignment) -> None:
        if assignment.task_id in self._held.running:
            _log.warning("task %s assigned again while running; ignored", assignment.task_id)
            return
        context = TaskContext(
            task_id=assignment.task_id,
            task_type=assignment.task_type,
            attempt=assignment.attempt,
            priority=assignment.priority,
            payload=assignment.payload,
            worker_id=self._worker_id,
            deadline=assignment.deadline,
        )
        task = asyncio.create_task(self._execute(assignment, context))
        running = _Running(task, context)
        self._held.running[assignment.task_id] = running
        self._held.idle.clear()
        task.add_done_callback(lambda _: self._forget(assignment.task_id, running))

    def _forget(self, task_id: str, running: _Running) -> None:
        if self._held.running.get(task_id) is running:
            del self._held.running[task_id]
        if not self._held.running:
            self._held.idle.set()
        task = running.task
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("handler of task %s raised %r", task_id, exc)

    def _cancel(self, task_ids: list[str], attempts: Mapping[str, int]) -> None:
        held = self._held
        for task_id in task_ids:
            attempt = attempts.get(task_id, 0)  # 0: whichever attempt it is
            running = held.running.get(task_id)
            if running is not None and attempt and running.context.attempt != attempt:
                _log.debug("ignoring a cancel of attempt %d of task %s", attempt, task_id)
                continue
            if running is None:
                stale = [
                    o
                    for o in held.outcomes
                    if o.task_id == task_id and (not attempt or o.attempt == attempt)
                ]
                if stale:
                    # Finished, result not sent yet: the broker no longer wants it.
                    held.outcomes[:] = [o for o in held.outcomes if o not in stale]
                else:  # e.g. its result crossed the cancel on the wire
                    _log.debug(
                        "ignoring a cancel of task %s, which this worker does not hold", task_id
                    )
                continue
            running.context._cancel()
            handler = self._worker._handlers.get(running.context.task_type)
            if handler is not None and (handler.is_async or self._worker._processes is not None):
                running.task.cancel()  # in a child process, that kills the child
            # A sync handler's thread cannot be interrupted: it sees ctx.cancelled, and its
            # result is dropped; it keeps its slot until it returns.

    # -- running a task ----------------------------------------------------------------

    async def _execute(self, assignment: Assignment, context: TaskContext) -> None:
        started_ms = _now_ms()
        handler = self._worker._handlers.get(assignment.task_type)
        if handler is None:
            error = TaskErrorInfo(
                "UnknownTaskType",
                f"worker {self._worker_id} has no handler for task type {assignment.task_type!r}",
                "",
            )
            self._report(context, assignment, None, error, started_ms)
            return
        slots = None if handler.is_async else self._worker._processes

        def started() -> None:
            nonlocal started_ms
            started_ms = _now_ms()
            self._held.started.append(assignment.task_id)
            self._held.wake()

        if slots is None:
            started()
        with self._worker._tracing.execute_span(assignment, context) as span:
            try:
                if handler.is_async:
                    result, content_type = encode_result(await handler.function(context))
                elif slots is not None:
                    # In a child process, which is only started on once it has one free.
                    encoded, failure = await slots.run(
                        self._executor, assignment.task_type, context, started
                    )
                    if encoded is None:
                        self._report(context, assignment, None, failure, started_ms)
                        return
                    result, content_type = encoded
                else:
                    function = span.in_context(handler.function)
                    value = await self._loop.run_in_executor(self._executor, function, context)
                    result, content_type = encode_result(value)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if context.cancelled or (task is not None and task.cancelling()):
                    raise
                # The handler raised CancelledError itself (e.g. an inner timeout): a failure.
                span.failed(exc)
                self._report(context, assignment, None, _error_info(exc), started_ms)
            except Exception as exc:
                span.failed(exc)
                self._report(context, assignment, None, _error_info(exc), started_ms)
            else:
                self._report(context, assignment, result, None, started_ms, content_type)

    def _report(
        self,
        context: TaskContext,
        assignment: Assignment,
        result: bytes | None,
        error: TaskErrorInfo | None,
        started_ms: int,
        content_type: str = "",
    ) -> None:
        if context.cancelled or self._half_close:
            return  # the broker no longer wants it, or can no longer be told
        self._held.outcomes.append(
            TaskOutcome(
                task_id=assignment.task_id,
                attempt=assignment.attempt,
                success=error is None,
                result=result or b"",
                error=error,
                started_at_ms=started_ms,
                finished_at_ms=_now_ms(),
                content_type=content_type,
            )
        )
        self._held.wake()

    # -- writing -----------------------------------------------------------------------

    def _send_control(self, message: _worker.WorkerMessage) -> None:
        self._control.append(message)
        self._wake.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            if self._idle_heartbeat_s > self._heartbeat_s and self._holds_nothing():
                # Beat seldom, until a task comes: then at the usual pace, the first beat
                # within one usual interval (the broker's timeout runs from the sending).
                self._work_came.clear()
                if await _first_of(
                    self._worker._heartbeat_sleep(self._idle_heartbeat_s), self._work_came.wait()
                ):
                    continue
            else:
                await self._worker._heartbeat_sleep(self._heartbeat_s)
            self._heartbeat_due = True
            self._wake.set()

    def _holds_nothing(self) -> bool:
        """No handler running, and no result or start notice waiting to be sent."""
        held = self._held
        return not held.running and not held.outcomes and not held.started

    def _heartbeat(self) -> _worker.WorkerMessage:
        """A heartbeat, built by the writer as it sends it, so the tasks it lists as held are
        exactly those whose results have not gone out on the stream before it."""
        in_flight = len(self._held.running)
        if self._keep_unconfirmed_s:
            self._held.seen(0, time.monotonic() - self._keep_unconfirmed_s)
        return _convert.heartbeat_message(
            in_flight,
            in_flight / self._worker._capacity,
            self._held_task_ids(),
            self._assignments_seen,
        )

    def _held_task_ids(self) -> list[str]:
        """Tasks assigned here whose result has not been written yet: running (unless the
        broker cancelled them) or finished with the result still in the buffer."""
        held = {
            task_id: None
            for task_id, running in self._held.running.items()
            if not running.context.cancelled
        }
        held.update((outcome.task_id, None) for outcome in self._held.outcomes)
        return list(held)

    def _take_outcomes(self) -> list[TaskOutcome]:
        size = 0
        count = 0
        for outcome in self._held.outcomes:
            size += len(outcome.result) + (len(outcome.error.traceback) if outcome.error else 0)
            if count and size > _MAX_MESSAGE_RESULT_BYTES:
                break
            count += 1
        return self._held.outcomes[:count]

    def _sent(self, outcomes: list[TaskOutcome], started: list[str], seq: int) -> None:
        """These results and start notices are written in the `seq`th message: no longer
        owed, the results kept until the broker says it saw them. (Until then they stay
        held, so a stream that breaks under the write leaves them for the next.)"""
        held = self._held
        if outcomes:
            written = {id(outcome) for outcome in outcomes}
            held.outcomes[:] = [o for o in held.outcomes if id(o) not in written]
            if self._keep_unconfirmed_s:
                now = time.monotonic()
                held.seen(0, now - self._keep_unconfirmed_s)
                held.unconfirmed.append((seq, now, outcomes))
        if started:
            del held.started[: len(started)]

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._control or self._heartbeat_due or self._held.outcomes or self._held.started:
                if self._control:
                    await self._call.write(self._control.pop(0))
                    continue
                if self._heartbeat_due:
                    self._heartbeat_due = False
                    await self._call.write(self._heartbeat())
                    continue
                outcomes = self._take_outcomes()
                started = list(self._held.started)
                seq = self._held.results_seq = self._held.results_seq + 1
                await self._call.write(_convert.results_message(outcomes, started, seq))
                self._sent(outcomes, started, seq)
            if self._half_close:
                await self._call.write(_convert.leave_message())  # we will not resume
                await self._call.done_writing()
                return


MAX_ERROR_TYPE_CHARS = 200


def _error_info(error: BaseException) -> TaskErrorInfo:
    """The TaskError reported for a handler's exception: with its `retryable` and
    `task_fault` attributes, if it has them (bools; worker_sdk's errors do)."""
    retryable = getattr(error, "retryable", None)
    task_fault = getattr(error, "task_fault", False)
    return TaskErrorInfo(
        type=("WorkerError" if isinstance(error, WorkerError) else type(error).__name__)[
            :MAX_ERROR_TYPE_CHARS
        ],  # the broker's limit
        message=str(error),
        traceback=bound_traceback("".join(traceback.format_exception(error))),
        retryable=retryable if isinstance(retryable, bool) else None,
        task_fault=task_fault if isinstance(task_fault, bool) else False,
    )


def idle_heartbeat_interval(ack: RegisterAcked, heartbeat_s: float) -> float:
    """How often to beat while holding no task: the idle interval the broker asks for, no
    more often than `heartbeat_s` and no more seldom than _HEARTBEATS_PER_LEASE beats
    within the idle timeout it told; `heartbeat_s` if it asks for none."""
    interval = max(ack.idle_heartbeat_interval_s, heartbeat_s)
    if ack.idle_heartbeat_timeout_s > 0:
        interval = min(interval, ack.idle_heartbeat_timeout_s / _HEARTBEATS_PER_LEASE)
    return max(interval, heartbeat_s)


async def _first_of(sleep: Awaitable[None], woken: Awaitable[bool]) -> bool:
    """Wait for the sleep or the wake-up, whichever ends first; whether it was woken."""
    sleeper = asyncio.ensure_future(sleep)
    waker = asyncio.ensure_future(woken)
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (sleeper, waker):
            if not pending.done():
                pending.cancel()
    if sleeper.done() and not sleeper.cancelled():
        sleeper.result()  # its error, if it failed
    return waker.done() and not waker.cancelled()


def heartbeat_interval(ack: RegisterAcked) -> float:
    """How often to beat: the interval the broker asks for, but never so seldom that fewer
    than _HEARTBEATS_PER_LEASE beats fall within the lease or the heartbeat timeout it
    told (a broker that says neither gets the interval it asks for)."""
    interval = ack.heartbeat_interval_s if ack.heartbeat_interval_s > 0 else _DEFAULT_HEARTBEAT_S
    for limit in (ack.lease_s, ack.heartbeat_timeout_s):
        if limit > 0:
            interval = min(interval, limit / _HEARTBEATS_PER_LEASE)
    return interval
