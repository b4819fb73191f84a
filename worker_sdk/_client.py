"""The async Client: submits and waits over one shared SubmitStream, the rest over unary calls."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import grpc
import grpc.aio
from opentelemetry.trace import TracerProvider

from worker_sdk import _convert, _tracing
from worker_sdk._channel import open_channel
from worker_sdk._errors import (
    RESOURCE_EXHAUSTED,
    DeadlineExceeded,
    NotFound,
    ResourceExhausted,
    TaskbrokerError,
    TaskFailed,
    Unavailable,
    error_for_code,
)
from worker_sdk._messages import SubmitAcked, TasksCompleted
from worker_sdk._payload import UNSET, encode_payload
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._types import (
    DEFAULT_ADDRESS,
    DEFAULT_POOL,
    Bulkhead,
    ConfigChange,
    MetricPoint,
    PoolInfo,
    PoolRecommendation,
    PreferredLabel,
    RetryPolicy,
    Stats,
    TaskInfo,
    TaskRequest,
    TaskState,
    WorkerInfo,
)

_log = logging.getLogger("taskbroker.client")
_T = TypeVar("_T")

# One stream message stays well under gRPC's default 4 MiB receive limit on the broker.
_MAX_MESSAGE_TASK_BYTES: Final = 1 << 20
# A failed all-or-nothing batch with one of these codes is most likely the fault of one of
# its tasks, and none of them was accepted: each is sent again alone to find the culprit.
_PER_TASK_ERROR_CODES: Final = frozenset({3, 5})  # INVALID_ARGUMENT, NOT_FOUND
# The broker tells clients apart by this header, e.g. for its per-client rate limits.
CLIENT_ID_HEADER: Final = "x-taskbroker-client"
# The first resend of a refused submit waits up to this long (full jitter), doubling after.
_SUBMIT_BACKOFF_INITIAL_S: Final = 0.1


def default_client_id() -> str:
    """`hostname:pid`, made safe for a gRPC metadata value (printable ASCII)."""
    ident = f"{socket.gethostname()}:{os.getpid()}"
    return "".join(c if " " <= c <= "~" else "?" for c in ident)


class _SubmitBackoff:
    """When to resend a submit the broker refused with RESOURCE_EXHAUSTED, and the sleep.

    Only a refusal with a retry hint is resent: the broker sends one when it is overloaded
    (a full queue, a rate limit), and none for a payload over its size limit, which no wait
    cures. Resend n waits max(hint, uniform(0, min(cap, initial * 2**(n-1)))), never more
    than `max_backoff_s`.
    """

    def __init__(self, max_retries: int, max_backoff_s: float) -> None:
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s
        # Replaceable by tests, so they neither sleep for real nor depend on chance.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.random: Callable[[], float] = random.random

    def delay(self, retries: int, error: ResourceExhausted) -> float | None:
        """How long to wait before resend number `retries + 1`; None = give up."""
        if error.retry_after is None or retries >= self.max_retries:
            return None
        ceiling = min(self.max_backoff_s, _SUBMIT_BACKOFF_INITIAL_S * 2.0 ** min(retries, 30))
        return min(self.max_backoff_s, max(error.retry_after, self.random() * ceiling))

    @staticmethod
    def gave_up(error: ResourceExhausted, retries: int) -> ResourceExhausted:
        """The error to raise once resending stops; the broker's own after no resend."""
        if retries == 0:
            return error
        plural = "y" if retries == 1 else "ies"
        return ResourceExhausted(
            f"{error} (gave up after {retries} retr{plural})", error.retry_after
        )


@dataclass(slots=True)
class _PendingSubmit:
    spec: _tasks.TaskSpec  # converted by the caller, so a bad argument fails only its submit
    size: int  # bytes on the wire
    future: asyncio.Future[str]
    solo: bool = False  # send in a message of its own
    refusals: int = 0  # times its batch was refused for overload and resent


def _retrieve_exceptions(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Mark failed futures as seen, so asyncio does not log them as never retrieved."""
    for future in futures:
        if future.done() and not future.cancelled():
            future.exception()


class _SubmitStream:
    """One SubmitStream call: its writer and reader tasks and everything waiting on them.

    `submit()` and `watch()` only queue; the writer sends everything queued while its previous
    message was being written as one message, so concurrent callers share stream messages.
    """

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[_tasks.SubmitStreamRequest, _tasks.SubmitStreamResponse],
        address: str,
        batch_size: int,
        backoff: _SubmitBackoff,
    ) -> None:
        self._call = call
        self._address = address
        self._batch_size = batch_size
        self._backoff = backoff
        self._loop = asyncio.get_running_loop()
        self._submits: deque[_PendingSubmit] = deque()
        # Batches refused for overload: waiting out their backoff, then due to be resent whole.
        self._backing_off: dict[asyncio.Task[None], list[_PendingSubmit]] = {}
        self._resends: deque[list[_PendingSubmit]] = deque()
        self._unacked: dict[int, list[_PendingSubmit]] = {}
        self._watch_ids: list[str] = []
        self._watchers: dict[str, list[asyncio.Future[TaskInfo]]] = {}
        self._next_batch_id = 1
        self._wake = asyncio.Event()
        self.broken = False
        self._writer = asyncio.create_task(self._write_loop(), name="taskbroker-submit-writer")
        self._reader = asyncio.create_task(self._read_loop(), name="taskbroker-submit-reader")

    @property
    def finished(self) -> bool:
        return self._writer.done() and self._reader.done()

    def submit(self, spec: _tasks.TaskSpec) -> asyncio.Future[str]:
        future: asyncio.Future[str] = self._loop.create_future()
        self._submits.append(_PendingSubmit(spec, _convert.spec_size(spec), future))
        self._wake.set()
        return future

    def watch(self, task_id: str) -> asyncio.Future[TaskInfo]:
        future: asyncio.Future[TaskInfo] = self._loop.create_future()
        waiters = self._watchers.get(task_id)
        if waiters is None:
            self._watchers[task_id] = [future]
            self._watch_ids.append(task_id)
            self._wake.set()
        else:
            waiters.append(future)
        return future

    def unwatch(self, task_id: str, future: asyncio.Future[TaskInfo]) -> None:
        """Forget a waiter that gave up; a later completion notice is then ignored."""
        waiters = self._watchers.get(task_id)
        if waiters is None:
            return
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            del self._watchers[task_id]

    async def close(self) -> None:
        self._break("the client was closed")
        for task in (self._writer, self._reader):
            task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)
        await self._stop_backoffs()

    async def _stop_backoffs(self) -> None:
        waits = list(self._backing_off)
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    # -- writer ------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while not self.broken:
                await self._wake.wait()
                self._wake.clear()
                while (self._resends or self._submits or self._watch_ids) and not self.broken:
                    await self._write_one()
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            self._break(str(_convert.rpc_error(exc, self._address)))
        except Exception as exc:  # e.g. InvalidStateError: the call ended under us
            self._break(f"{type(exc).__name__}: {exc}")

    def _take_batch(self) -> list[_PendingSubmit]:
        batch: list[_PendingSubmit] = []
        size = 0
        queue = self._submits
        while queue and len(batch) < self._batch_size:
            pending = queue[0]
            if pending.future.done():  # its submit() was cancelled before it was sent
                queue.popleft()
                continue
            if batch and (pending.solo or size + pending.size > _MAX_MESSAGE_TASK_BYTES):
                break
            queue.popleft()
            batch.append(pending)
            size += pending.size
            if pending.solo:
                break
        return batch

    async def _write_one(self) -> None:
        batch: list[_PendingSubmit] = []
        while self._resends and not batch:
            # A refused batch goes again as it was, minus the submits whose callers left.
            batch = [p for p in self._resends.popleft() if not p.future.done()]
        if not batch:
            batch = self._take_batch()
        watch_ids = [i for i in self._watch_ids if i in self._watchers]
        self._watch_ids = []
        if not batch and not watch_ids:
            return
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        if batch:
            self._unacked[batch_id] = batch
        message = _convert.submit_stream_request(
            batch_id, [pending.spec for pending in batch], watch_ids
        )
        await self._call.write(message)

    # -- reader ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the broker ended the stream"
        try:
            async for response in self._call:
                event = _convert.submit_stream_event(response)
                if isinstance(event, SubmitAcked):
                    self._on_ack(event)
                else:
                    self._on_completions(event)
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            reason = str(_convert.rpc_error(exc, self._address))
        except TaskbrokerError as exc:  # a message we cannot make sense of
            reason = str(exc)
        self._break(reason)

    def _on_ack(self, ack: SubmitAcked) -> None:
        batch = self._unacked.pop(ack.batch_id, None)
        if batch is None:
            if ack.error_code:
                # A rejected message we cannot match (e.g. one the broker could not parse):
                # its submits would wait forever, so give up on the stream instead.
                self._break(f"broker rejected message {ack.batch_id}: {ack.error_message}")
            return
        if ack.error_code == RESOURCE_EXHAUSTED and self._resend_later(batch, ack):
            return
        if ack.error_code:
            if len(batch) > 1 and ack.error_code in _PER_TASK_ERROR_CODES:
                for pending in reversed(batch):
                    pending.solo = True
                    self._submits.appendleft(pending)
                self._wake.set()
                return
            error = error_for_code(ack.error_code, ack.error_message, ack.retry_after)
            if isinstance(error, ResourceExhausted):
                error = self._backoff.gave_up(error, max((p.refusals for p in batch), default=0))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        if len(ack.task_ids) != len(batch):
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        TaskbrokerError(
                            f"broker acked {len(ack.task_ids)} ids for {len(batch)} tasks"
                        )
                    )
            return
        for pending, task_id in zip(batch, ack.task_ids, strict=True):
            if not pending.future.done():
                pending.future.set_result(task_id)

    def _resend_later(self, batch: list[_PendingSubmit], ack: SubmitAcked) -> bool:
        """Resend a batch the broker refused for overload after its backoff, keeping it
        whole so its acks map to its callers in order; False if it is not to be resent."""
        live = [p for p in batch if not p.future.done()]
        if not live:
            return True
        refusals = max(p.refusals for p in live)
        delay = self._backoff.delay(refusals, ResourceExhausted(ack.error_message, ack.retry_after))
        if delay is None:
            return False
        for pending in live:
            pending.refusals = refusals + 1
        _log.debug("broker refused %d submits for now; resending in %.3fs", len(live), delay)
        wait = asyncio.create_task(self._wait(delay), name="taskbroker-submit-backoff")
        self._backing_off[wait] = live
        wait.add_done_callback(self._backoff_done)
        return True

    async def _wait(self, delay: float) -> None:
        await self._backoff.sleep(delay)

    def _backoff_done(self, wait: asyncio.Task[None]) -> None:
        batch = self._backing_off.pop(wait, None)
        if batch is None or self.broken or wait.cancelled():
            return
        if (exc := wait.exception()) is not None:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self._resends.append(batch)
        self._wake.set()

    def _on_completions(self, completions: TasksCompleted) -> None:
        for task in completions.tasks:
            if not task.state.terminal:
                continue  # not what a completion notice should carry; keep waiting
            for future in self._watchers.pop(task.id, ()):
                if not future.done():
                    future.set_result(task)
        for task_id in completions.not_found:
            for future in self._watchers.pop(task_id, ()):
                if not future.done():
                    future.set_exception(NotFound(f"task {task_id} not found"))

    # -- breakage ----------------------------------------------------------------------

    def _break(self, reason: str) -> None:
        """Fail everything pending with Unavailable; the client opens a new stream next time."""
        if self.broken:
            return
        self.broken = True
        self._wake.set()
        self._call.cancel()
        message = f"submit stream to broker at {self._address} broke: {reason}"
        pending_submits = [
            *self._submits,
            *(p for b in self._unacked.values() for p in b),
            *(p for b in self._resends for p in b),
            *(p for b in self._backing_off.values() for p in b),
        ]
        self._submits.clear()
        self._unacked.clear()
        self._resends.clear()
        for wait in self._backing_off:
            wait.cancel()  # the done callback finds the stream broken and leaves them be
        for pending in pending_submits:
            if not pending.future.done():
                pending.future.set_exception(Unavailable(message))
        watchers = self._watchers
        self._watchers = {}
        self._watch_ids = []
        for futures in watchers.values():
            for future in futures:
                if not future.done():
                    future.set_exception(Unavailable(message))
        if pending_submits or watchers:
            _log.warning(
                "%s; failed %d submits and %d waits", message, len(pending_submits), len(watchers)
            )


class Client:
    """An asyncio client of the broker. Use `async with Client(...) as client:`.

    `submit()`, `wait()` and `result()` share one SubmitStream, opened on first use, on which
    concurrent calls are coalesced into batches of up to `batch_size` tasks.

    Every call carries `client_id` (default `hostname:pid`) in the `x-taskbroker-client`
    header; the broker rate-limits submits per client identity. A submit the broker refuses
    for overload (RESOURCE_EXHAUSTED with a retry hint) is sent again after
    max(hint, exponential backoff with full jitter), each wait at most
    `max_submit_backoff_s`, up to `max_submit_retries` times (0 = never); then the call
    raises ResourceExhausted, whose `retry_after` is the broker's last hint.

    With OpenTelemetry (`tracer_provider`, else the application's global provider, if it
    set one) each submitted task gets a CLIENT span "taskbroker.submit" that starts its
    trace, carried to the broker and the worker in the task; unary calls carry the
    caller's trace context in their metadata.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        batch_size: int = 500,
        client_id: str | None = None,
        max_submit_retries: int = 5,
        max_submit_backoff_s: float = 10.0,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_submit_retries < 0:
            raise ValueError("max_submit_retries must be 0 (never retry) or more")
        if not max_submit_backoff_s >= 0:
            raise ValueError("max_submit_backoff_s must be 0 or more seconds")
        if client_id is None:
            client_id = default_client_id()
        if not client_id or not all(" " <= c <= "~" for c in client_id):
            raise ValueError("client_id must be a non-empty string of printable ASCII")
        self._address = address
        self._batch_size = batch_size
        self._client_id = client_id
        self._client_metadata: _tracing.Metadata = ((CLIENT_ID_HEADER, client_id),)
        self._tracing = _tracing.Tracing(tracer_provider)
        self._backoff = _SubmitBackoff(max_submit_retries, max_submit_backoff_s)
        self._channel: grpc.aio.Channel | None = None
        self._task_stub: _tasks_grpc.TaskServiceAsyncStub | None = None
        self._admin_stub: _admin_grpc.AdminServiceAsyncStub | None = None
        self._stream: _SubmitStream | None = None
        self._retired: list[_SubmitStream] = []
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    @property
    def client_id(self) -> str:
        """The identity this client sends with every call (`x-taskbroker-client`)."""
        return self._client_id

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Fail what is pending, stop the stream's tasks and close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        streams = [*self._retired, *([self._stream] if self._stream else [])]
        self._stream = None
        self._retired = []
        for stream in streams:
            await stream.close()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    # -- plumbing ----------------------------------------------------------------------

    @property
    def _metadata(self) -> _tracing.Metadata:
        """A unary call's metadata: the client id, and the caller's trace context if any."""
        return self._tracing.call_metadata(self._client_metadata)

    def _stubs(self) -> tuple[_tasks_grpc.TaskServiceAsyncStub, _admin_grpc.AdminServiceAsyncStub]:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._task_stub is None or self._admin_stub is None:
            # Created here, not in __init__, so it binds to the loop that uses it.
            self._channel = open_channel(self._address)
            self._task_stub = _tasks_grpc.TaskServiceStub(self._channel)
            self._admin_stub = _admin_grpc.AdminServiceStub(self._channel)
        return self._task_stub, self._admin_stub

    def _submit_stream(self) -> _SubmitStream:
        stream = self._stream
        if stream is None or stream.broken:
            task_stub, _ = self._stubs()
            if stream is not None:
                self._retired = [s for s in self._retired if not s.finished]
                self._retired.append(stream)
            # Shared by every caller: it carries no one's trace context (each task has its own).
            call = task_stub.SubmitStream(None, metadata=self._client_metadata)
            stream = _SubmitStream(call, self._address, self._batch_size, self._backoff)
            self._stream = stream
        return stream

    async def _unary(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except grpc.RpcError as exc:
            raise _convert.rpc_error(exc, self._address) from None

    async def _submit_unary(self, send: Callable[[], Awaitable[_T]]) -> _T:
        """A unary submit call, sent again while the broker refuses it for overload."""
        retries = 0
        while True:
            try:
                return await self._unary(send())
            except ResourceExhausted as exc:
                delay = self._backoff.delay(retries, exc)
                if delay is None:
                    raise self._backoff.gave_up(exc, retries) from None
            retries += 1
            _log.debug("broker refused a submit for now; resending in %.3fs", delay)
            await self._backoff.sleep(delay)

    # -- tasks -------------------------------------------------------------------------

    async def submit(
        self,
        task_type: str,
        payload: bytes | str | None = None,
        *,
        json: Any = UNSET,
        priority: int = 0,
        pool: str = DEFAULT_POOL,
        require: Mapping[str, str] | None = None,
        prefer: Sequence[PreferredLabel] = (),
        anti_affinity: str | None = None,
        anti_affinity_soft: bool = False,
        sticky_key: str | None = None,
        routing_key: str | None = None,
        retry: RetryPolicy | None = None,
        delay: float | None = None,
        not_before: datetime | None = None,
        start_timeout: float | None = None,
        execution_timeout: float | None = None,
        idempotency_key: str | None = None,
        fairness_key: str | None = None,
    ) -> str:
        """Submit one task and return its id. Pass `payload` (bytes or str) or `json=`.

        Placement hints: `require` runs it only on workers with all these labels (it waits
        otherwise), `prefer` favours workers with these labels by weight, and tasks of one
        `anti_affinity` group never run on one worker at the same time (with
        `anti_affinity_soft`, they are spread as well as possible instead). A task with a
        `sticky_key` goes to the worker that last ran that key if it gets a free slot within
        the pool's sticky timeout; a `routing_key` keeps tasks with one key on one worker
        in a pool whose strategy is consistent_hash.

        Delivery: `retry` says how often the broker tries it again after a failure (then
        DEAD_LETTER); `delay` (seconds from now) or `not_before` (an aware datetime) holds
        it back; it fails unless a worker takes it within `start_timeout` seconds, and an
        attempt that runs over `execution_timeout` seconds fails and is cancelled. A second
        submit with the same `idempotency_key` in the pool returns the first task's id; a
        pool shares its workers among `fairness_key`s by weighted round robin.
        """
        request = TaskRequest(
            task_type,
            encode_payload(payload, json),
            priority,
            pool,
            require=require,
            prefer=prefer,
            anti_affinity=anti_affinity,
            anti_affinity_soft=anti_affinity_soft,
            sticky_key=sticky_key,
            routing_key=routing_key,
            retry=retry,
            delay=delay,
            not_before=not_before,
            start_timeout=start_timeout,
            execution_timeout=execution_timeout,
            idempotency_key=idempotency_key,
            fairness_key=fairness_key,
        )
        with self._tracing.submit_spans((request,)) as spans:
            spec = _convert.task_spec(request, trace_context=spans.context())
            task_id = await self._submit_stream().submit(spec)
            spans.submitted((task_id,))
        return task_id

    async def submit_many(self, tasks: Iterable[TaskRequest]) -> list[str]:
        """Submit tasks as one batch, all accepted or none; their ids in order.

        A batch refused for overload is sent again whole, as `submit()` does.
        """
        requests = list(tasks)
        if not requests:
            return []
        task_stub, _ = self._stubs()
        with self._tracing.submit_spans(requests) as spans:
            message = _convert.submit_batch_request(requests, spans.contexts())
            response = await self._submit_unary(
                lambda: task_stub.SubmitBatch(message, metadata=self._metadata)
            )
            task_ids = _convert.submit_batch_ids(response)
            spans.submitted(task_ids)
        return task_ids

    async def get(self, task_id: str) -> TaskInfo:
        """The task as the broker has it now."""
        task_stub, _ = self._stubs()
        request = _convert.get_request(task_id)
        return _convert.task_info(
            await self._unary(task_stub.Get(request, metadata=self._metadata))
        )

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:  # noqa: ASYNC109
        """The task once it is terminal; DeadlineExceeded after `timeout` seconds."""
        if timeout is None:
            return await self._watch(task_id)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._watch(task_id)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise DeadlineExceeded(f"task {task_id} did not finish within {timeout}s") from None

    async def wait_many(
        self,
        task_ids: Sequence[str],
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline for the whole wait
    ) -> list[TaskInfo]:
        """The tasks, in order, once all are terminal; DeadlineExceeded after `timeout`."""
        if not task_ids:
            return []
        stream = self._submit_stream()
        futures = [stream.watch(task_id) for task_id in task_ids]
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            if not deadline.expired():
                raise
            unfinished = sum(1 for f in futures if not f.done())
            raise DeadlineExceeded(
                f"{unfinished} of {len(futures)} tasks did not finish within {timeout}s"
            ) from None
        finally:
            for task_id, future in zip(task_ids, futures, strict=True):
                if not future.done():
                    future.cancel()
                    stream.unwatch(task_id, future)
            _retrieve_exceptions(futures)

    async def _watch(self, task_id: str) -> TaskInfo:
        stream = self._submit_stream()
        future = stream.watch(task_id)
        try:
            return await future
        finally:
            if future.cancelled():
                stream.unwatch(task_id, future)

    async def result(self, task_id: str, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        """The result of a task once it succeeded; TaskFailed if it failed, was cancelled or
        dead-lettered."""
        task = await self.wait(task_id, timeout)
        if task.state is not TaskState.SUCCEEDED:
            raise TaskFailed(task)
        return task.result

    async def cancel(self, task_id: str) -> TaskInfo:
        """Cancel a task that has not finished; the task as it is afterwards."""
        task_stub, _ = self._stubs()
        request = _convert.cancel_request(task_id)
        response = await self._unary(task_stub.Cancel(request, metadata=self._metadata))
        return _convert.cancelled_task(response)

    async def retry(
        self,
        task_ids: Iterable[str] = (),
        *,
        dead_letter_pool: str | None = None,
        limit: int | None = None,
    ) -> list[TaskInfo]:
        """Send failed or dead-lettered tasks back to their queue with a fresh set of
        attempts: those of `task_ids`, and with `dead_letter_pool` also up to `limit` (the
        broker's default: 1000) dead-lettered tasks of that pool. The tasks as requeued.
        """
        if isinstance(task_ids, str):
            raise TypeError("task_ids is a sequence of task ids, not one str")
        ids = list(task_ids)
        if limit is not None:
            if dead_letter_pool is None:
                raise ValueError("limit bounds the tasks taken from dead_letter_pool; give both")
            if limit < 1:
                raise ValueError("limit must be at least 1")
        if not ids and dead_letter_pool is None:
            return []
        task_stub, _ = self._stubs()
        request = _convert.retry_request(ids, dead_letter_pool, limit)
        response = await self._unary(task_stub.Retry(request, metadata=self._metadata))
        return _convert.retried_tasks(response)

    async def list_tasks(
        self,
        *,
        pool: str | None = None,
        states: Iterable[TaskState] = (),
        task_type: str | None = None,
        limit: int = 100,
        before_id: str | None = None,
    ) -> list[TaskInfo]:
        """Tasks matching every given filter, newest first; page with `before_id`."""
        task_stub, _ = self._stubs()
        request = _convert.list_tasks_request(
            pool=pool, states=states, task_type=task_type, limit=limit, before_id=before_id
        )
        response = await self._unary(task_stub.List(request, metadata=self._metadata))
        return _convert.listed_tasks(response)

    # -- administration ----------------------------------------------------------------

    async def list_pools(self) -> list[PoolInfo]:
        _, admin_stub = self._stubs()
        request = _convert.list_pools_request()
        response = await self._unary(admin_stub.ListPools(request, metadata=self._metadata))
        return _convert.listed_pools(response)

    async def create_pool(
        self,
        name: str,
        strategy: str = "round_robin",
        *,
        ab_strategy: str = "",
        ab_percent: int = 0,
        sticky_timeout_s: float = 5.0,
        max_inflight: int = 0,
        max_queue: int = 0,
        rate_per_s: float = 0.0,
        rate_burst: int = 0,
        client_rate_per_s: float = 0.0,
        client_rate_burst: int = 0,
        rate_mode: str = "reject",
        breaker_failures: int = 0,
        breaker_failure_rate: float = 0.0,
        breaker_window: int = 0,
        breaker_cooldown_s: float = 0.0,
        lease_s: float = 0.0,
        bulkheads: Sequence[Bulkhead] = (),
        fairness_weights: Mapping[str, int] | None = None,
    ) -> PoolInfo:
        """Create a pool; AlreadyExists if there is one of that name.

        `ab_percent` (0..100) of its tasks are placed by `ab_strategy` instead of `strategy`
        ("" = no A/B split). The broker checks the names and says InvalidArgument, listing
        the strategies it knows, for an unknown one. The limits, breaker, lease, bulkhead
        and fairness settings are PoolInfo's; 0 leaves a setting at the broker's default.
        """
        _, admin_stub = self._stubs()
        request = _convert.create_pool_request(
            name,
            {
                "strategy": strategy,
                "ab_strategy": ab_strategy,
                "ab_percent": ab_percent,
                "sticky_timeout_s": sticky_timeout_s,
                "max_inflight": max_inflight,
                "max_queue": max_queue,
                "rate_per_s": rate_per_s,
                "rate_burst": rate_burst,
                "client_rate_per_s": client_rate_per_s,
                "client_rate_burst": client_rate_burst,
                "rate_mode": rate_mode,
                "breaker_failures": breaker_failures,
                "breaker_failure_rate": breaker_failure_rate,
                "breaker_window": breaker_window,
                "breaker_cooldown_s": breaker_cooldown_s,
                "lease_s": lease_s,
                "bulkheads": bulkheads,
                "fairness_weights": fairness_weights or {},
            },
        )
        response = await self._unary(admin_stub.CreatePool(request, metadata=self._metadata))
        return _convert.pool_info(response)

    async def update_pool(
        self,
        name: str,
        *,
        strategy: str | None = None,
        ab_strategy: str | None = None,
        ab_percent: int | None = None,
        sticky_timeout_s: float | None = None,
        max_inflight: int | None = None,
        max_queue: int | None = None,
        rate_per_s: float | None = None,
        rate_burst: int | None = None,
        client_rate_per_s: float | None = None,
        client_rate_burst: int | None = None,
        rate_mode: str | None = None,
        breaker_failures: int | None = None,
        breaker_failure_rate: float | None = None,
        breaker_window: int | None = None,
        breaker_cooldown_s: float | None = None,
        lease_s: float | None = None,
        bulkheads: Sequence[Bulkhead] | None = None,
        fairness_weights: Mapping[str, int] | None = None,
    ) -> PoolInfo:
        """Change the given settings of a pool, keep the others; the pool as it is now.

        `bulkheads` and `fairness_weights` replace the pool's whole list or map (pass `()`
        or `{}` to clear them). Reads the pool, changes it and sends it back whole, so a
        concurrent change to another setting can be lost. NotFound for an unknown pool;
        ValueError if no setting is given.
        """
        given: dict[str, object | None] = {
            "strategy": strategy,
            "ab_strategy": ab_strategy,
            "ab_percent": ab_percent,
            "sticky_timeout_s": sticky_timeout_s,
            "max_inflight": max_inflight,
            "max_queue": max_queue,
            "rate_per_s": rate_per_s,
            "rate_burst": rate_burst,
            "client_rate_per_s": client_rate_per_s,
            "client_rate_burst": client_rate_burst,
            "rate_mode": rate_mode,
            "breaker_failures": breaker_failures,
            "breaker_failure_rate": breaker_failure_rate,
            "breaker_window": breaker_window,
            "breaker_cooldown_s": breaker_cooldown_s,
            "lease_s": lease_s,
            "bulkheads": bulkheads,
            "fairness_weights": fairness_weights,
        }
        changes = {key: value for key, value in given.items() if value is not None}
        if not changes:
            raise ValueError("update_pool needs at least one setting to change")
        _, admin_stub = self._stubs()
        listed = await self._unary(
            admin_stub.ListPools(_convert.list_pools_request(), metadata=self._metadata)
        )
        request = _convert.update_pool_request(listed, name, changes)
        if request is None:
            raise NotFound(f"pool {name!r} does not exist")
        response = await self._unary(admin_stub.UpdatePool(request, metadata=self._metadata))
        return _convert.pool_info(response)

    async def list_workers(self, pool: str | None = None) -> list[WorkerInfo]:
        _, admin_stub = self._stubs()
        request = _convert.list_workers_request(pool)
        response = await self._unary(admin_stub.ListWorkers(request, metadata=self._metadata))
        return _convert.listed_workers(response)

    async def drain_worker(self, worker_id: str) -> WorkerInfo:
        """Ask the broker to drain a worker: it gets no more work and disconnects when idle."""
        _, admin_stub = self._stubs()
        request = _convert.drain_worker_request(worker_id)
        response = await self._unary(admin_stub.DrainWorker(request, metadata=self._metadata))
        return _convert.drained_worker(response)

    async def cordon_worker(self, worker_id: str) -> WorkerInfo:
        """Cordon a worker: it gets no new work, keeps what it holds and stays connected."""
        return await self._cordon(worker_id, cordon=True)

    async def uncordon_worker(self, worker_id: str) -> WorkerInfo:
        """Let a cordoned worker take new work again."""
        return await self._cordon(worker_id, cordon=False)

    async def _cordon(self, worker_id: str, *, cordon: bool) -> WorkerInfo:
        _, admin_stub = self._stubs()
        request = _convert.cordon_worker_request(worker_id, cordon)
        response = await self._unary(admin_stub.CordonWorker(request, metadata=self._metadata))
        return _convert.worker_info(response)

    async def stats(self) -> Stats:
        _, admin_stub = self._stubs()
        request = _convert.stats_request()
        return _convert.stats(await self._unary(admin_stub.Stats(request, metadata=self._metadata)))

    async def metrics_history(
        self,
        *,
        pool: str | None = None,
        task_type: str | None = None,
        worker_id: str | None = None,
        since: datetime | timedelta | None = None,
        until: datetime | None = None,
        bucket_s: int = 0,
    ) -> list[MetricPoint]:
        """The broker's metrics history, oldest first: per-minute rollups (hourly once
        compacted) of the pool, task type and worker given (None = all, and the task types
        and workers summed over), merged into buckets of `bucket_s` seconds (0 = as stored).

        `since` is an aware datetime or a timedelta back from now (None = an hour ago),
        `until` an aware datetime (None = now).
        """
        _, admin_stub = self._stubs()
        request = _convert.metrics_history_request(
            pool=pool,
            task_type=task_type,
            worker_id=worker_id,
            since=since,
            until=until,
            bucket_s=bucket_s,
        )
        response = await self._unary(admin_stub.MetricsHistory(request, metadata=self._metadata))
        return _convert.metric_points(response)

    async def recommend(
        self,
        *,
        pool: str | None = None,
        target_wait_s: float = 1.0,
        horizon_s: float = 900.0,
    ) -> list[PoolRecommendation]:
        """How many workers each pool (or just `pool`) needs so that a task waits
        `target_wait_s` on average, for the arrival rate the broker forecasts over the next
        `horizon_s` seconds from the pool's history (an M/M/c queue, Erlang C)."""
        _, admin_stub = self._stubs()
        request = _convert.recommend_request(pool, target_wait_s, horizon_s)
        response = await self._unary(admin_stub.Recommend(request, metadata=self._metadata))
        return _convert.recommendations(response)

    async def reload_config(self) -> list[ConfigChange]:
        """Make the broker re-read its config file and apply what changed in its pools;
        the changes, empty if there were none."""
        _, admin_stub = self._stubs()
        request = _convert.reload_config_request()
        response = await self._unary(admin_stub.ReloadConfig(request, metadata=self._metadata))
        return _convert.config_changes(response)

    async def config_history(
        self, *, pool: str | None = None, limit: int = 100
    ) -> list[ConfigChange]:
        """The audited changes of pool settings (of `pool` only if given), newest first,
        at most `limit`."""
        _, admin_stub = self._stubs()
        request = _convert.config_history_request(pool, limit)
        response = await self._unary(admin_stub.ConfigHistory(request, metadata=self._metadata))
        return _convert.config_changes(response)
