"""The async Client: submits and waits over one shared SubmitStream, the rest over unary calls."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import grpc
import grpc.aio
from opentelemetry.trace import TracerProvider

from worker_sdk import _convert, _tracing
from worker_sdk._admin_calls import AdminCalls
from worker_sdk._channel import TLSSetting, Token, open_channel, tls_of, token_of
from worker_sdk._errors import (
    DeadlineExceeded,
    ResourceExhausted,
    TaskFailed,
)
from worker_sdk._payload import UNSET, encode_payload, payload_content_type
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import auth_pb2_grpc as _auth_grpc
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._stream import StreamLost, SubmitBackoff, SubmitStream, retrieve_exceptions
from worker_sdk._tokens import TokenCalls
from worker_sdk._types import (
    DEFAULT_ADDRESS,
    DEFAULT_POOL,
    PreferredLabel,
    RetryPolicy,
    TaskInfo,
    TaskRequest,
    TaskState,
)

_log = logging.getLogger("taskbroker.client")
_T = TypeVar("_T")

# A wait whose stream is lost watches its tasks again on a new stream after this long,
# doubling each time up to the longest, until the wait's own timeout.
_REWATCH_INITIAL_S: Final = 0.05
_REWATCH_MAX_S: Final = 1.0

# The broker tells clients apart by this header, e.g. for its per-client rate limits.
CLIENT_ID_HEADER: Final = "x-taskbroker-client"


def default_client_id() -> str:
    """`hostname:pid`, made safe for a gRPC metadata value (printable ASCII)."""
    ident = f"{socket.gethostname()}:{os.getpid()}"
    return "".join(c if " " <= c <= "~" else "?" for c in ident)


class Client(AdminCalls, TokenCalls):
    """An asyncio client of the broker. Use `async with Client(...) as client:`.

    `submit()`, `wait()` and `result()` share one SubmitStream, opened on first use, on which
    concurrent calls are coalesced into batches of up to `batch_size` tasks.

    A wait (`wait`, `wait_many`, `result`) rides out a broker restart: when the stream is
    lost (UNAVAILABLE, gRPC's own INTERNAL, or the broker ends it), the client opens a new
    one, with backoff, and watches the same task ids again until the wait's own timeout. A
    submit the broker had not acknowledged when the stream broke fails with Unavailable; it
    is never resent.

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

    `tls` (a `TLS`, or True for the system's roots) reaches a broker over TLS, with a
    client certificate for mutual TLS; `token` is sent as a bearer token with every call.

    The administration calls (pools, workers, statistics, history, config) are in
    `worker_sdk._admin_calls`; the token calls in `worker_sdk._tokens`.
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
        tls: TLSSetting = None,
        token: str | Token | None = None,
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
        self._tls = tls_of(tls)
        self._token = token_of(token)
        self._batch_size = batch_size
        self._client_id = client_id
        self._client_metadata: _tracing.Metadata = ((CLIENT_ID_HEADER, client_id),)
        self._tracing = _tracing.Tracing(tracer_provider)
        self._backoff = SubmitBackoff(max_submit_retries, max_submit_backoff_s)
        self._channel: grpc.aio.Channel | None = None
        self._task_stub: _tasks_grpc.TaskServiceAsyncStub | None = None
        self._admin_stub: _admin_grpc.AdminServiceAsyncStub | None = None
        self._auth: _auth_grpc.AuthServiceAsyncStub | None = None
        self._stream: SubmitStream | None = None
        self._retired: list[SubmitStream] = []
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
            self._channel = open_channel(self._address, tls=self._tls, token=self._token)
            self._task_stub = _tasks_grpc.TaskServiceStub(self._channel)
            self._admin_stub = _admin_grpc.AdminServiceStub(self._channel)
            self._auth = _auth_grpc.AuthServiceStub(self._channel)
        return self._task_stub, self._admin_stub

    def _auth_stub(self) -> _auth_grpc.AuthServiceAsyncStub:
        self._stubs()
        assert self._auth is not None
        return self._auth

    def _submit_stream(self) -> SubmitStream:
        stream = self._stream
        if stream is None or stream.broken:
            task_stub, _ = self._stubs()
            if stream is not None:
                self._retired = [s for s in self._retired if not s.finished]
                self._retired.append(stream)
            # Shared by every caller: it carries no one's trace context (each task has its own).
            call = task_stub.SubmitStream(None, metadata=self._client_metadata)
            stream = SubmitStream(call, self._address, self._batch_size, self._backoff)
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
            content_type=payload_content_type(payload, json),
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

    async def run(self, request: TaskRequest, timeout: float | None = None) -> TaskInfo:  # noqa: ASYNC109
        """Submit one task and return it once it is terminal: `submit` then `wait`, but the
        message that submits the task asks for its completion notice too, which saves a
        message each way. `timeout` bounds the wait once the broker accepted the task, as
        for `wait` (DeadlineExceeded names the task, which carries on). A lost stream is
        ridden out as `wait` does; a submit fails as `submit` fails."""
        _check_timeout(timeout)
        with self._tracing.submit_spans((request,)) as spans:
            spec = _convert.task_spec(request, trace_context=spans.context())
            stream = self._submit_stream()
            finished: asyncio.Future[TaskInfo] = asyncio.get_running_loop().create_future()
            submitted = stream.submit(spec, finished)
            try:
                task_id = await submitted
            except BaseException:
                finished.cancel()
                raise
            spans.submitted((task_id,))
        watching = self._watch_one(task_id, (stream, finished))
        return await self._within(timeout, task_id, watching)

    async def wait(self, task_id: str, timeout: float | None = None) -> TaskInfo:  # noqa: ASYNC109
        """The task once it is terminal; DeadlineExceeded after `timeout` seconds."""
        _check_timeout(timeout)
        return await self._within(timeout, task_id, self._watch_one(task_id))

    @staticmethod
    async def _within(
        timeout: float | None,  # noqa: ASYNC109 - the deadline of the wait it runs
        task_id: str,
        waiting: Coroutine[Any, Any, TaskInfo],
    ) -> TaskInfo:
        """`waiting`, or DeadlineExceeded after `timeout` seconds (None: no limit)."""
        if timeout is None:
            return await waiting
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await waiting
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
        _check_timeout(timeout)
        if not task_ids:
            return []
        found: dict[str, TaskInfo] = {}
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._watch(task_ids, found)
        except TimeoutError:
            if not deadline.expired():
                raise
            unfinished = sum(1 for task_id in task_ids if task_id not in found)
            raise DeadlineExceeded(
                f"{unfinished} of {len(task_ids)} tasks did not finish within {timeout}s"
            ) from None

    async def _watch(
        self, task_ids: Sequence[str], found: dict[str, TaskInfo] | None = None
    ) -> list[TaskInfo]:
        """The tasks once all are terminal (each also put in `found` as it finishes).

        A lost stream fails the watches with StreamLost; the tasks not yet finished are then
        watched again on a new stream, after a backoff, until the caller gives up.
        """
        if found is None:
            found = {}
        losses = 0
        while True:
            stream = self._submit_stream()
            futures = {
                task_id: stream.watch(task_id)
                for task_id in dict.fromkeys(task_ids)
                if task_id not in found
            }
            lost: StreamLost | None = None
            try:
                await asyncio.gather(*futures.values())
            except StreamLost as exc:
                lost = exc
            finally:
                for task_id, future in futures.items():
                    if not future.done() or future.cancelled():
                        future.cancel()
                        stream.unwatch(task_id, future)
                    elif future.exception() is None:
                        found[task_id] = future.result()
                retrieve_exceptions(futures.values())
            if lost is None:
                return [found[task_id] for task_id in task_ids]
            if self._closed:
                raise lost
            _log.debug("watching %d tasks again", len(task_ids) - len(found))
            await _rewatch_pause(losses)
            losses += 1

    async def _watch_one(
        self, task_id: str, watching: tuple[SubmitStream, asyncio.Future[TaskInfo]] | None = None
    ) -> TaskInfo:
        """`_watch` of one task, without gathering: the path every `wait` takes, and `run`'s,
        which starts from the watch its submit set up (`watching`: its stream and future)."""
        losses = 0
        while True:
            if watching is None:
                stream = self._submit_stream()
                future = stream.watch(task_id)
            else:
                (stream, future), watching = watching, None
            try:
                return await future
            except StreamLost:
                if self._closed:
                    raise
            finally:
                if future.cancelled():
                    stream.unwatch(task_id, future)
            _log.debug("watching task %s again", task_id)
            await _rewatch_pause(losses)
            losses += 1

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
        payloads: bool = True,
    ) -> list[TaskInfo]:
        """Tasks matching every given filter, newest first, at most `limit`; page with
        `before_id`. With `payloads=False` the broker leaves each task's payload and result
        out (they read b""), which makes a listing of big tasks light.

        The broker answers in pages of at most its max_response_bytes; this follows them
        until it has `limit` tasks or there are no more.
        """
        task_stub, _ = self._stubs()
        tasks: list[TaskInfo] = []
        token = ""
        while True:
            request = _convert.list_tasks_request(
                pool=pool,
                states=states,
                task_type=task_type,
                limit=limit - len(tasks),
                before_id=before_id,
                payloads=payloads,
                page_token=token,
            )
            response = await self._unary(task_stub.List(request, metadata=self._metadata))
            tasks.extend(_convert.listed_tasks(response))
            token = response.next_page_token
            if not token or len(tasks) >= limit or not response.tasks:
                return tasks


def _check_timeout(timeout: float | None) -> None:
    """A wait's timeout is None (no limit) or a finite number of seconds, 0 or more."""
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise ValueError(f"timeout must be None or a finite number of seconds >= 0, got {timeout}")


async def _rewatch_pause(losses: int) -> None:
    """The backoff before watching again after `losses` lost streams."""
    await asyncio.sleep(min(_REWATCH_MAX_S, _REWATCH_INITIAL_S * 2.0 ** min(losses, 30)))
