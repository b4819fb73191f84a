"""The gRPC TaskService: submit, read, wait for, cancel and retry tasks.

Each handler converts the request to domain types, calls one BrokerService method and
converts the answer back; a BrokerError becomes its status code (broker.server.status).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence

from broker.core.validation import MAX_TASK_IDS
from broker.domain import Task, TaskId
from broker.errors import BrokerError, InvalidArgument, ResourceExhausted
from broker.server import convert, paging
from broker.server.parsing import Malformed, client_identity, submitter
from broker.server.status import Context, abort, edge, retry_after_ms, status_of
from broker.service import BrokerService
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc

COMPLETIONS_PER_MESSAGE = 1000
# Payloads plus results in one Completions message, so it stays far below 4 MiB.
COMPLETION_BYTES_PER_MESSAGE = 1024 * 1024
# Room in a message for a task's other fields (an error's traceback, placement notes).
COMPLETION_HEADROOM_BYTES = 256 * 1024


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
                await abort(context, session.failed)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await session.close()

    @edge
    async def Get(self, request: _tasks.GetTaskRequest, context: Context) -> _tasks.Task:
        view = paging.view_from_pb(request.view)
        task = await self._service.get(convert.task_id_from_pb(request.task_id))
        return convert.task_to_pb(task, view)

    @edge
    async def Wait(self, request: _tasks.WaitRequest, context: Context) -> _tasks.WaitResponse:
        ids = convert.task_ids_from_pb(request.task_ids)
        timeout = convert.wait_timeout_from_pb(request.timeout_s)
        view = paging.view_from_pb(request.view)
        remaining = context.time_remaining()
        if remaining is not None:  # answer before the caller's deadline does
            timeout = min(timeout, max(0.0, remaining - 0.05))
        tasks = await self._service.wait(ids, timeout)
        return _tasks.WaitResponse(
            tasks=tasks_within(tasks, view, self._service.max_response_bytes)
        )

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
        flt = convert.filter_from_pb(request)
        view = paging.view_from_pb(request.view)
        size = paging.page_size(request.page_size, flt.limit)
        if size > paging.MAX_PAGE_SIZE:
            raise InvalidArgument(f"limit must be 1..1000, got {size}", field="limit")
        filters = paging.fingerprint(flt.pool, sorted(flt.states), flt.task_type)
        after = paging.read_token(request.page_token, "tasks", filters)
        if after is not None:
            flt = dataclasses.replace(flt, before_id=int(after))
        # One more than a page, to know whether another follows.
        flt = dataclasses.replace(flt, limit=min(size + 1, paging.MAX_PAGE_SIZE))
        tasks = await self._service.list_tasks(flt)
        page = [convert.task_to_pb(t, view) for t in tasks[:size]]
        count = paging.fitting(page, _tasks.Task.ByteSize, self._service.max_response_bytes)
        del page[count:]
        more = count < min(size, len(tasks)) or len(tasks) > size or len(tasks) == flt.limit
        token = paging.make_token("tasks", filters, int(page[-1].id)) if more and page else ""
        return _tasks.ListTasksResponse(tasks=page, next_page_token=token)

    @edge
    async def Retry(self, request: _tasks.RetryRequest, context: Context) -> _tasks.RetryResponse:
        tasks = await self._service.retry(
            convert.task_ids_from_pb(request.task_ids),
            request.dead_letter_pool,
            request.limit or 1000,
        )
        return _tasks.RetryResponse(tasks=[convert.task_to_pb(t) for t in tasks])


def tasks_within(
    tasks: Sequence[Task], view: _tasks.TaskView.ValueType, budget: int
) -> list[_tasks.Task]:
    """The tasks in `view`, as many in full as fit `budget` bytes (in order), the rest in
    the BASIC view (without payload and result), so the answer stays within it."""
    used = paging.RESPONSE_OVERHEAD_BYTES
    out = []
    for task in tasks:
        msg = convert.task_to_pb(task, view)
        size = paging.entry_size(msg.ByteSize())
        if msg.view == convert.FULL and used + size > budget:
            msg = convert.task_to_pb(task, convert.BASIC)
            size = paging.entry_size(msg.ByteSize())
        used += size
        out.append(msg)
    return out


class _SubmitSession:
    """One SubmitStream: batches are handled concurrently (so they share group commits),
    acks and completion notices are sent as they come, completions coalesced."""

    def __init__(self, service: BrokerService, client: str) -> None:
        self._service = service
        self._client = client
        self._submitter = submitter()
        # Each ack in the response that carries it (a message given to a constructor is
        # copied into it, so responses are built in place).
        self._acks: list[_tasks.SubmitStreamResponse] = []
        self._completed: list[Task] = []
        self._not_found: list[str] = []  # watched ids the broker does not know
        self._watched: set[TaskId] = set()
        self._views: dict[TaskId, _tasks.TaskView.ValueType] = {}  # other than FULL
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
                yield ack
            if self._completed or self._not_found:
                for completions in self._take_completions():
                    yield completions
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

    def _take_completions(self) -> list[_tasks.SubmitStreamResponse]:
        """What finished since the last write, in messages of bounded count and size."""
        completed, self._completed = self._completed, []
        messages = [_completions()]
        messages[0].completions.not_found.extend(self._not_found)
        self._not_found = []
        size = 0
        for task in completed:
            view = self._views.pop(task.id, convert.FULL)
            task_size = len(task.spec.payload) + len(task.result) if view == convert.FULL else 0
            if task_size > self._service.max_response_bytes - COMPLETION_HEADROOM_BYTES:
                view, task_size = convert.BASIC, 0  # too big for any message: Get reads it
            if len(messages[-1].completions.tasks) >= COMPLETIONS_PER_MESSAGE or (
                size and size + task_size > COMPLETION_BYTES_PER_MESSAGE
            ):
                messages.append(_completions())
                size = 0
            convert.task_to_pb(task, view, messages[-1].completions.tasks.add)
            size += task_size
        return messages

    async def close(self) -> None:
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._service.unwatch(self._watched, self._on_completed)
        self._watched.clear()
        self._views.clear()

    def _ack(self, response: _tasks.SubmitStreamResponse, error: BrokerError | None = None) -> None:
        if error is not None:
            ack = response.ack
            ack.error_code = status_of(error).value[0]
            ack.error_message = str(error)
            if isinstance(error, ResourceExhausted) and error.retry_after_s is not None:
                ack.retry_after_ms = retry_after_ms(error.retry_after_s)
        self._acks.append(response)
        self._wake.set()

    async def _handle(self, request: _tasks.SubmitStreamRequest) -> None:
        """Submit the message's tasks and watch what it asks; every message gets one ack
        (one without tasks once its watches are in place)."""
        watch: list[TaskId] = []
        response = _tasks.SubmitStreamResponse()
        ack = response.ack
        ack.SetInParent()
        ack.batch_id = request.batch_id
        try:
            view = paging.view_from_pb(request.completion_view, "completion_view")
        except BrokerError as exc:
            self._ack(response, exc)
            return
        if request.tasks:
            try:
                specs = convert.specs_from_pb(request.tasks, self._submitter)
                tasks = await self._service.submit(specs, self._client)
            except BrokerError as exc:
                self._ack(response, exc)
            else:
                ack.task_ids.extend(str(t.id) for t in tasks)
                if request.watch:
                    watch.extend(t.id for t in tasks)
                self._ack(response)
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
            if view != convert.FULL:
                self._views.update(dict.fromkeys(watch, view))
            missing = await self._service.watch(watch, self._on_completed)
            if missing:
                self._watched.difference_update(missing)
                self._not_found.extend(str(i) for i in missing)
                self._wake.set()
        if not request.tasks:
            self._ack(response)

    def _on_completed(self, task: Task) -> None:
        self._watched.discard(task.id)
        self._completed.append(task)
        self._wake.set()


def _completions() -> _tasks.SubmitStreamResponse:
    response = _tasks.SubmitStreamResponse()
    response.completions.SetInParent()
    return response
