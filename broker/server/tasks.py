"""The gRPC TaskService: submit, read, wait for, cancel and retry tasks.

Each handler converts the request to domain types, calls one BrokerService method and
converts the answer back; a BrokerError becomes its status code (broker.server.status).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from broker.core.validation import MAX_TASK_IDS
from broker.domain import Task, TaskId
from broker.errors import BrokerError, InvalidArgument, ResourceExhausted
from broker.server import convert
from broker.server.parsing import Malformed, client_identity, submitter
from broker.server.status import Context, edge, retry_after_ms, status_of
from broker.service import BrokerService
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc

COMPLETIONS_PER_MESSAGE = 1000
# Payloads plus results in one Completions message, so it stays far below 4 MiB.
COMPLETION_BYTES_PER_MESSAGE = 1024 * 1024


class TaskService(_tasks_grpc.TaskServiceServicer):
    """Submit, read, wait for and cancel tasks."""

    def __init__(self, service: BrokerService) -> None:
        self._service = service

    @edge
    async def Submit(
        self, request: _tasks.SubmitRequest, context: Context
    ) -> _tasks.SubmitResponse:
        specs = [convert.spec_from_pb(request.task, submitter())]
        ((task, existing),) = await self._service.submit_detailed(specs, client_identity(context))
        return _tasks.SubmitResponse(task_id=str(task.id), existing=existing)

    @edge
    async def SubmitBatch(
        self, request: _tasks.SubmitBatchRequest, context: Context
    ) -> _tasks.SubmitBatchResponse:
        specs = convert.specs_from_pb(request.tasks, submitter())
        tasks = await self._service.submit(specs, client_identity(context))
        return _tasks.SubmitBatchResponse(task_ids=[str(t.id) for t in tasks])

    async def SubmitStream(
        self, request_iterator: AsyncIterator[_tasks.SubmitStreamRequest], context: Context
    ) -> AsyncIterator[_tasks.SubmitStreamResponse]:
        session = _SubmitSession(self._service, client_identity(context))
        reader = asyncio.create_task(session.read(request_iterator))
        try:
            async for message in session.messages():
                yield message
            if session.failed is not None:
                await context.abort(status_of(session.failed), str(session.failed))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await session.close()

    @edge
    async def Get(self, request: _tasks.GetTaskRequest, context: Context) -> _tasks.Task:
        task = await self._service.get(convert.task_id_from_pb(request.task_id))
        return convert.task_to_pb(task)

    @edge
    async def Wait(self, request: _tasks.WaitRequest, context: Context) -> _tasks.WaitResponse:
        ids = convert.task_ids_from_pb(request.task_ids)
        timeout = convert.wait_timeout_from_pb(request.timeout_s)
        remaining = context.time_remaining()
        if remaining is not None:  # answer before the caller's deadline does
            timeout = min(timeout, max(0.0, remaining - 0.05))
        tasks = await self._service.wait(ids, timeout)
        return _tasks.WaitResponse(tasks=[convert.task_to_pb(t) for t in tasks])

    @edge
    async def Cancel(
        self, request: _tasks.CancelRequest, context: Context
    ) -> _tasks.CancelResponse:
        task = await self._service.cancel(convert.task_id_from_pb(request.task_id))
        return _tasks.CancelResponse(task=convert.task_to_pb(task))

    @edge
    async def List(
        self, request: _tasks.ListTasksRequest, context: Context
    ) -> _tasks.ListTasksResponse:
        tasks = await self._service.list_tasks(convert.filter_from_pb(request))
        return _tasks.ListTasksResponse(tasks=[convert.task_to_pb(t) for t in tasks])

    @edge
    async def Retry(self, request: _tasks.RetryRequest, context: Context) -> _tasks.RetryResponse:
        tasks = await self._service.retry(
            convert.task_ids_from_pb(request.task_ids),
            request.dead_letter_pool,
            request.limit or 1000,
        )
        return _tasks.RetryResponse(tasks=[convert.task_to_pb(t) for t in tasks])


class _SubmitSession:
    """One SubmitStream: batches are handled concurrently (so they share group commits),
    acks and completion notices are sent as they come, completions coalesced."""

    def __init__(self, service: BrokerService, client: str) -> None:
        self._service = service
        self._client = client
        self._submitter = submitter()
        self._acks: list[_tasks.SubmitAck] = []
        self._completed: list[Task] = []
        self._not_found: list[str] = []  # watched ids the broker does not know
        self._watched: set[TaskId] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._reading = True
        self._wake = asyncio.Event()
        self.failed: BrokerError | None = None

    async def read(self, requests: AsyncIterator[_tasks.SubmitStreamRequest]) -> None:
        try:
            async for request in requests:
                if isinstance(request, Malformed):
                    self.failed = request.error()  # no batch id to answer: end the stream
                    return
                handler = asyncio.create_task(self._handle(request))
                self._handlers.add(handler)
                handler.add_done_callback(self._handlers.discard)
            if self._handlers:
                await asyncio.gather(*self._handlers)
        finally:
            self._reading = False
            self._wake.set()

    async def messages(self) -> AsyncIterator[_tasks.SubmitStreamResponse]:
        """Acks and completions until the client is done sending and nothing is watched."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            acks, self._acks = self._acks, []
            for ack in acks:
                yield _tasks.SubmitStreamResponse(ack=ack)
            if self._completed or self._not_found:
                for completions in self._take_completions():
                    yield _tasks.SubmitStreamResponse(completions=completions)
            if self.failed is not None:
                return
            if not (
                self._reading
                or self._watched
                or self._acks
                or self._completed
                or self._not_found  # came in while the last message was being sent
            ):
                return

    def _take_completions(self) -> list[_tasks.Completions]:
        """What finished since the last write, in messages of bounded count and size."""
        completed, self._completed = self._completed, []
        messages = [_tasks.Completions(not_found=self._not_found)]
        self._not_found = []
        size = 0
        for task in completed:
            task_size = len(task.spec.payload) + len(task.result)
            if len(messages[-1].tasks) >= COMPLETIONS_PER_MESSAGE or (
                size and size + task_size > COMPLETION_BYTES_PER_MESSAGE
            ):
                messages.append(_tasks.Completions())
                size = 0
            messages[-1].tasks.append(convert.task_to_pb(task))
            size += task_size
        return messages

    async def close(self) -> None:
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._service.unwatch(self._watched, self._on_completed)
        self._watched.clear()

    async def _handle(self, request: _tasks.SubmitStreamRequest) -> None:
        watch: list[TaskId] = []
        if request.tasks:
            ack = _tasks.SubmitAck(batch_id=request.batch_id)
            try:
                specs = convert.specs_from_pb(request.tasks, self._submitter)
                tasks = await self._service.submit(specs, self._client)
            except BrokerError as exc:
                ack.error_code = status_of(exc).value[0]
                ack.error_message = str(exc)
                if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
                    ack.retry_after_ms = retry_after_ms(exc.retry_after_s)
            else:
                ack.task_ids.extend(str(t.id) for t in tasks)
                if request.watch:
                    watch.extend(t.id for t in tasks)
            self._acks.append(ack)
            self._wake.set()
        if len(request.watch_task_ids) > MAX_TASK_IDS:
            self.failed = InvalidArgument(
                f"watch_task_ids holds more than {MAX_TASK_IDS} entries "
                f"(got {len(request.watch_task_ids)})"
            )
            self._wake.set()
            return
        for text in request.watch_task_ids:
            try:
                watch.append(convert.task_id_from_pb(text))
            except BrokerError:
                self._not_found.append(text)
        if watch:
            self._watched.update(watch)
            missing = await self._service.watch(watch, self._on_completed)
            if missing:
                self._watched.difference_update(missing)
                self._not_found.extend(str(i) for i in missing)
                self._wake.set()

    def _on_completed(self, task: Task) -> None:
        self._watched.discard(task.id)
        self._completed.append(task)
        self._wake.set()
