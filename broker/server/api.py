"""The gRPC edge for clients and operators: TaskService and AdminService.

Each handler converts the request to domain types, calls the engine, and
converts the answer back; a BrokerError becomes its status code (broker.server.status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from opentelemetry.trace import Tracer

from broker.domain import ConfigChange, Task, TaskId, TaskSpec
from broker.errors import BrokerError, NotFound, ResourceExhausted
from broker.observability import tracing
from broker.observability.capacity import DEFAULT_HORIZON_S, DEFAULT_TARGET_WAIT_S, recommend_pools
from broker.observability.rollups import MetricsHistory
from broker.runtime.engine import Engine
from broker.server import convert
from broker.server.parsing import Malformed
from broker.server.status import status_of
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc

log = logging.getLogger("taskbroker.api")

Context = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, Context], Awaitable[Response]]

COMPLETIONS_PER_MESSAGE = 1000
# Payloads plus results in one Completions message, so it stays far below 4 MiB.
COMPLETION_BYTES_PER_MESSAGE = 1024 * 1024


# The trailing metadata of a RESOURCE_EXHAUSTED answer that says when to try again, in
# milliseconds: the name gRPC's own retry machinery reads as server pushback.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
# The request metadata naming the caller, for per-client rate limits.
CLIENT_ID_KEY = "x-taskbroker-client"
MAX_CLIENT_ID_LENGTH = 200


def retry_after_ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def client_identity(context: Context) -> str:
    """Who is calling: the client id it sends, else its address."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ID_KEY and isinstance(value, str) and value:
            return value[:MAX_CLIENT_ID_LENGTH]
    return context.peer() or ""


def edge(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn a BrokerError raised by a unary handler into its gRPC status."""

    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        try:
            if isinstance(request, Malformed):
                raise request.error()
            return await handler(self, request, context)
        except BrokerError as exc:
            if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
                context.set_trailing_metadata(
                    ((RETRY_PUSHBACK_KEY, str(retry_after_ms(exc.retry_after_s))),)
                )
            await context.abort(status_of(exc), str(exc))
            raise  # abort() raises; this is for the type checker

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def _traced(specs: list[TaskSpec], tracer: Tracer | None) -> list[TaskSpec]:
    """The specs with the trace context to store with each task, when tracing."""
    return specs if tracer is None else tracing.with_trace_context(specs, tracer)


class TaskApi(_tasks_grpc.TaskServiceServicer):
    """Submit, read, wait for and cancel tasks."""

    def __init__(self, engine: Engine, tracer: Tracer | None = None) -> None:
        self._engine = engine
        self._tracer = tracer

    @edge
    async def Submit(
        self, request: _tasks.SubmitRequest, context: Context
    ) -> _tasks.SubmitResponse:
        specs = _traced([convert.spec_from_pb(request.task)], self._tracer)
        ((task, existing),) = await self._engine.submit_detailed(specs, client_identity(context))
        return _tasks.SubmitResponse(task_id=str(task.id), existing=existing)

    @edge
    async def SubmitBatch(
        self, request: _tasks.SubmitBatchRequest, context: Context
    ) -> _tasks.SubmitBatchResponse:
        specs = _traced(convert.specs_from_pb(request.tasks), self._tracer)
        tasks = await self._engine.submit(specs, client_identity(context))
        return _tasks.SubmitBatchResponse(task_ids=[str(t.id) for t in tasks])

    async def SubmitStream(
        self, request_iterator: AsyncIterator[_tasks.SubmitStreamRequest], context: Context
    ) -> AsyncIterator[_tasks.SubmitStreamResponse]:
        session = _SubmitSession(self._engine, client_identity(context), self._tracer)
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
        task = await self._engine.get(convert.task_id_from_pb(request.task_id))
        return convert.task_to_pb(task)

    @edge
    async def Wait(self, request: _tasks.WaitRequest, context: Context) -> _tasks.WaitResponse:
        ids = convert.task_ids_from_pb(request.task_ids)
        timeout = request.timeout_s if request.timeout_s > 0 else float("inf")
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(0.0, remaining - 0.05))
        tasks = await self._engine.wait(ids, timeout)
        return _tasks.WaitResponse(tasks=[convert.task_to_pb(t) for t in tasks])

    @edge
    async def Cancel(
        self, request: _tasks.CancelRequest, context: Context
    ) -> _tasks.CancelResponse:
        task = await self._engine.cancel(convert.task_id_from_pb(request.task_id))
        return _tasks.CancelResponse(task=convert.task_to_pb(task))

    @edge
    async def List(
        self, request: _tasks.ListTasksRequest, context: Context
    ) -> _tasks.ListTasksResponse:
        tasks = await self._engine.list_tasks(convert.filter_from_pb(request))
        return _tasks.ListTasksResponse(tasks=[convert.task_to_pb(t) for t in tasks])

    @edge
    async def Retry(self, request: _tasks.RetryRequest, context: Context) -> _tasks.RetryResponse:
        tasks = await self._engine.retry(
            convert.task_ids_from_pb(request.task_ids),
            request.dead_letter_pool,
            request.limit or 1000,
        )
        return _tasks.RetryResponse(tasks=[convert.task_to_pb(t) for t in tasks])


class _SubmitSession:
    """One SubmitStream: batches are handled concurrently (so they share group commits),
    acks and completion notices are sent as they come, completions coalesced."""

    def __init__(self, engine: Engine, client: str, tracer: Tracer | None = None) -> None:
        self._engine = engine
        self._client = client
        self._tracer = tracer
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
        self._engine.unwatch(self._watched, self._on_completed)
        self._watched.clear()

    async def _handle(self, request: _tasks.SubmitStreamRequest) -> None:
        watch: list[TaskId] = []
        if request.tasks:
            ack = _tasks.SubmitAck(batch_id=request.batch_id)
            try:
                specs = _traced(convert.specs_from_pb(request.tasks), self._tracer)
                tasks = await self._engine.submit(specs, self._client)
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
        for text in request.watch_task_ids:
            try:
                watch.append(convert.task_id_from_pb(text))
            except BrokerError:
                self._not_found.append(text)
        if watch:
            self._watched.update(watch)
            missing = await self._engine.watch(watch, self._on_completed)
            if missing:
                self._watched.difference_update(missing)
                self._not_found.extend(str(i) for i in missing)
                self._wake.set()

    def _on_completed(self, task: Task) -> None:
        self._watched.discard(task.id)
        self._completed.append(task)
        self._wake.set()


class AdminApi(_admin_grpc.AdminServiceServicer):
    """Pools, workers and statistics for operators."""

    def __init__(
        self,
        engine: Engine,
        history: MetricsHistory,
        broker_state: Callable[[], str],
        reload_config: Callable[[str], Awaitable[list[ConfigChange]]],
    ) -> None:
        self._engine = engine
        self._history = history
        self._broker_state = broker_state
        self._reload_config = reload_config

    @edge
    async def ListPools(
        self, request: _admin.ListPoolsRequest, context: Context
    ) -> _admin.ListPoolsResponse:
        return _admin.ListPoolsResponse(pools=[convert.pool_to_pb(p) for p in self._engine.pools()])

    @edge
    async def CreatePool(self, request: _admin.CreatePoolRequest, context: Context) -> _admin.Pool:
        pool = await self._engine.create_pool(
            convert.pool_from_pb(request.pool), who=client_identity(context)
        )
        return convert.pool_to_pb(pool)

    @edge
    async def UpdatePool(self, request: _admin.UpdatePoolRequest, context: Context) -> _admin.Pool:
        pool = await self._engine.update_pool(
            convert.pool_from_pb(request.pool), who=client_identity(context)
        )
        return convert.pool_to_pb(pool)

    @edge
    async def ListWorkers(
        self, request: _admin.ListWorkersRequest, context: Context
    ) -> _admin.ListWorkersResponse:
        workers = self._engine.workers(request.pool)
        return _admin.ListWorkersResponse(workers=[convert.worker_status_to_pb(w) for w in workers])

    @edge
    async def DrainWorker(
        self, request: _admin.DrainWorkerRequest, context: Context
    ) -> _admin.DrainWorkerResponse:
        status = self._engine.drain_worker(request.worker_id)
        return _admin.DrainWorkerResponse(worker=convert.worker_status_to_pb(status))

    @edge
    async def CordonWorker(
        self, request: _admin.CordonWorkerRequest, context: Context
    ) -> _admin.WorkerStatus:
        status = self._engine.cordon_worker(request.worker_id, request.cordon)
        return convert.worker_status_to_pb(status)

    @edge
    async def ReloadConfig(
        self, request: _admin.ReloadConfigRequest, context: Context
    ) -> _admin.ReloadConfigResponse:
        changes = await self._reload_config(client_identity(context))
        return _admin.ReloadConfigResponse(
            changes=[convert.config_change_to_pb(c) for c in changes]
        )

    @edge
    async def ConfigHistory(
        self, request: _admin.ConfigHistoryRequest, context: Context
    ) -> _admin.ConfigHistoryResponse:
        changes = await self._engine.config_history(request.pool, request.limit or 100)
        return _admin.ConfigHistoryResponse(
            changes=[convert.config_change_to_pb(c) for c in changes]
        )

    @edge
    async def Stats(self, request: _admin.StatsRequest, context: Context) -> _admin.StatsResponse:
        stats = await self._engine.stats()
        oldest = {b.pool: b.oldest_age_s for b in self._engine.backlog() if not b.task_type}
        answer = convert.stats_to_pb(stats, self._broker_state())
        for pool in answer.pools:
            convert.live_to_pb(self._history.live(pool.pool), oldest.get(pool.pool, 0.0), pool)
        return answer

    @edge
    async def MetricsHistory(
        self, request: _admin.MetricsHistoryRequest, context: Context
    ) -> _admin.MetricsHistoryResponse:
        if request.pool and request.pool not in {p.name for p in self._engine.pools()}:
            raise NotFound(f"pool {request.pool!r} does not exist")
        points = await self._history.history(
            request.pool,
            request.task_type,
            request.worker_id,
            since=request.since_ms / 1000 or None,
            until=request.until_ms / 1000 or None,
            bucket_s=request.bucket_s,
        )
        return _admin.MetricsHistoryResponse(points=[convert.metric_point_to_pb(p) for p in points])

    @edge
    async def Recommend(
        self, request: _admin.RecommendRequest, context: Context
    ) -> _admin.RecommendResponse:
        recommendations = await recommend_pools(
            self._engine,
            self._history,
            now=self._engine.now(),
            retention_s=self._engine.config.metrics_retention_s,
            pool=request.pool,
            target_wait_s=request.target_wait_s or DEFAULT_TARGET_WAIT_S,
            horizon_s=request.horizon_s or DEFAULT_HORIZON_S,
        )
        return _admin.RecommendResponse(
            pools=[convert.recommendation_to_pb(r) for r in recommendations]
        )
