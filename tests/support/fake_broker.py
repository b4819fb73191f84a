"""Fake brokers for testing the SDK on a real in-process gRPC server: task and admin
services that keep their state in dicts, and a worker service whose streams the test
drives (`FakeWorkerService`, `serve`), with `running` to run a Worker against one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import grpc.aio
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from worker_sdk import (
    Worker,
)
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc

_Context = grpc.aio.ServicerContext[object, object]


@dataclass(frozen=True)
class _Abort:
    """The status a stream is ended with (`FakeTaskService.break_streams`)."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...]


Outbox = asyncio.Queue[_tasks.SubmitStreamResponse | _Abort]
_TERMINAL = (_tasks.TASK_STATE_SUCCEEDED, _tasks.TASK_STATE_FAILED, _tasks.TASK_STATE_CANCELLED)


class FakeTaskService(_tasks_grpc.TaskServiceServicer):
    """Keeps tasks in a dict; the test finishes them with `finish()`.

    Pool "missing" does not exist (NOT_FOUND); priority above 1000 and a preferred label's
    weight outside 1..1000 are INVALID_ARGUMENT; `reject_all` makes every stream batch fail
    with that (code, message).
    """

    def __init__(self) -> None:
        self.tasks: dict[str, _tasks.Task] = {}
        self.stream_requests: list[_tasks.SubmitStreamRequest] = []
        self.streams_opened = 0
        self.reject_all: tuple[int, str] | None = None
        self.hold_acks = False  # receive but never answer
        self.unmatched_ack = False  # answer with an error ack carrying no batch id
        self._watchers: dict[str, list[Outbox]] = {}
        self._outboxes: list[Outbox] = []
        self._changed = asyncio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def _check(self, spec: _tasks.TaskSpec) -> tuple[int, str] | None:
        if spec.pool == "missing":
            return grpc.StatusCode.NOT_FOUND.value[0], "pool 'missing' does not exist"
        if spec.priority > 1000:
            return grpc.StatusCode.INVALID_ARGUMENT.value[0], "priority out of range"
        for preferred in spec.placement.preferred_labels:
            if not 1 <= preferred.weight <= 1000:
                message = f"preferred label {preferred.key}: weight must be 1..1000"
                return grpc.StatusCode.INVALID_ARGUMENT.value[0], message
        return None

    def _create(self, spec: _tasks.TaskSpec) -> str:
        task_id = f"{len(self.tasks) + 1:08d}"
        self.tasks[task_id] = _tasks.Task(
            id=task_id, spec=spec, state=_tasks.TASK_STATE_PENDING, created_at_ms=1_700_000_000_000
        )
        if spec.placement.required_labels:
            self.tasks[task_id].placement_note = "unschedulable: no connected worker"
            self.tasks[task_id].unschedulable = True
        return task_id

    def finish(self, task_id: str, *, result: bytes = b"", error: str = "") -> None:
        task = self.tasks[task_id]
        if error:
            task.state = _tasks.TASK_STATE_FAILED
            task.error.type, task.error.message = error, "it broke"
        else:
            task.state = _tasks.TASK_STATE_SUCCEEDED
            task.result = result
        task.finished_at_ms = 1_700_000_001_000
        for outbox in self._watchers.pop(task_id, []):
            outbox.put_nowait(
                _tasks.SubmitStreamResponse(completions=_tasks.Completions(tasks=[task]))
            )

    def break_streams(
        self,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        details: str = "fake broker restarting",
        trailers: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        """End every open stream with this status (by default, a restarting broker's)."""
        for outbox in self._outboxes:
            outbox.put_nowait(_Abort(code, details, trailers))

    async def SubmitStream(  # type: ignore[override]
        self, request_iterator: AsyncIterator[_tasks.SubmitStreamRequest], context: _Context
    ) -> None:
        self.streams_opened += 1
        outbox: Outbox = asyncio.Queue()
        self._outboxes.append(outbox)

        async def read() -> None:
            async for request in request_iterator:
                self.stream_requests.append(request)
                self._changed.set()
                self._handle(request, outbox)

        reader = asyncio.create_task(read())
        try:
            while True:
                outgoing = asyncio.create_task(outbox.get())
                await asyncio.wait({outgoing, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not outgoing.done():
                    outgoing.cancel()
                    return
                response = outgoing.result()
                if isinstance(response, _Abort):
                    await context.abort(response.code, response.details, response.trailers)
                await context.write(response)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _handle(
        self,
        request: _tasks.SubmitStreamRequest,
        outbox: Outbox,
    ) -> None:
        if self.hold_acks:
            return
        if self.unmatched_ack:
            unmatched = _tasks.SubmitAck(error_code=3, error_message="could not parse the message")
            outbox.put_nowait(_tasks.SubmitStreamResponse(ack=unmatched))
            return
        if request.tasks:
            errors = [e for e in map(self._check, request.tasks) if e is not None]
            error = self.reject_all or (errors[0] if errors else None)
            if error is not None:
                ack = _tasks.SubmitAck(
                    batch_id=request.batch_id, error_code=error[0], error_message=error[1]
                )
            else:
                ids = [self._create(spec) for spec in request.tasks]
                ack = _tasks.SubmitAck(batch_id=request.batch_id, task_ids=ids)
                if request.watch:
                    for task_id in ids:
                        self._watchers.setdefault(task_id, []).append(outbox)
            outbox.put_nowait(_tasks.SubmitStreamResponse(ack=ack))
        done = _tasks.Completions()
        for task_id in request.watch_task_ids:
            task = self.tasks.get(task_id)
            if task is None:
                done.not_found.append(task_id)
            elif task.state in _TERMINAL:
                done.tasks.append(task)
            else:
                self._watchers.setdefault(task_id, []).append(outbox)
        if done.tasks or done.not_found:
            outbox.put_nowait(_tasks.SubmitStreamResponse(completions=done))

    async def Submit(
        self, request: _tasks.SubmitRequest, context: _Context
    ) -> _tasks.SubmitResponse:
        return _tasks.SubmitResponse(task_id=self._create(request.task))

    async def Wait(self, request: _tasks.WaitRequest, context: _Context) -> _tasks.WaitResponse:
        return _tasks.WaitResponse(tasks=[self.tasks[i] for i in request.task_ids])

    async def SubmitBatch(
        self, request: _tasks.SubmitBatchRequest, context: _Context
    ) -> _tasks.SubmitBatchResponse:
        for spec in request.tasks:
            if (error := self._check(spec)) is not None:
                await context.abort(grpc.StatusCode.NOT_FOUND, error[1])
        return _tasks.SubmitBatchResponse(task_ids=[self._create(s) for s in request.tasks])

    async def Get(self, request: _tasks.GetTaskRequest, context: _Context) -> _tasks.Task:
        if request.task_id.startswith("code:"):
            # As the broker sends its errors: with their google.rpc.Status in the trailers.
            code = next(c for c in grpc.StatusCode if c.name == request.task_id[5:])
            status = Status(code=code.value[0], message=f"fake {code.name}")
            trailers = rpc_status.to_status(status).trailing_metadata
            await context.abort(code, status.message, trailers)
        if request.task_id not in self.tasks:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        return self.tasks[request.task_id]

    async def Cancel(
        self, request: _tasks.CancelRequest, context: _Context
    ) -> _tasks.CancelResponse:
        task = self.tasks.get(request.task_id)
        if task is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such task")
        if task.state in _TERMINAL:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "task already finished")
        task.state = _tasks.TASK_STATE_CANCELLED
        task.error.type = "Cancelled"
        return _tasks.CancelResponse(task=task)

    async def List(
        self, request: _tasks.ListTasksRequest, context: _Context
    ) -> _tasks.ListTasksResponse:
        tasks = sorted(self.tasks.values(), key=lambda t: t.id, reverse=True)
        tasks = [
            t
            for t in tasks
            if (not request.pool or t.spec.pool == request.pool)
            and (not request.states or t.state in request.states)
            and (not request.task_type or t.spec.task_type == request.task_type)
            and (not request.before_id or t.id < request.before_id)
        ]
        return _tasks.ListTasksResponse(tasks=tasks[: request.limit or 100])

    async def Retry(self, request: _tasks.RetryRequest, context: _Context) -> _tasks.RetryResponse:
        # What Retry does is the real broker's to show (its own tests); not faked here.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake broker")


KNOWN_STRATEGIES = ("round_robin", "least_loaded", "consistent_hash", "adaptive")


class FakeAdminService(_admin_grpc.AdminServiceServicer):
    """Pools in a dict (UpdatePool replaces one whole), one worker, fixed statistics."""

    def __init__(self) -> None:
        self.pools = {
            "default": _admin.Pool(name="default", strategy="round_robin", sticky_timeout_s=5.0)
        }
        self.update_requests: list[_admin.UpdatePoolRequest] = []
        self.workers = {
            "w-1": _admin.WorkerStatus(
                worker_id="w-1",
                pool="default",
                labels={"zone": "a"},
                capacity=4,
                task_types=["echo", "sum"],
                in_flight=1,
                load=0.25,
                connected_at_ms=1_700_000_000_000,
            )
        }

    async def ListPools(
        self, request: _admin.ListPoolsRequest, context: _Context
    ) -> _admin.ListPoolsResponse:
        return _admin.ListPoolsResponse(pools=list(self.pools.values()))

    async def CreatePool(self, request: _admin.CreatePoolRequest, context: _Context) -> _admin.Pool:
        if request.pool.name in self.pools:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"pool {request.pool.name} exists")
        await self._check_strategies(request.pool, context)
        self.pools[request.pool.name] = request.pool
        return request.pool

    async def UpdatePool(self, request: _admin.UpdatePoolRequest, context: _Context) -> _admin.Pool:
        self.update_requests.append(request)
        if request.pool.name not in self.pools:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"pool {request.pool.name!r}")
        await self._check_strategies(request.pool, context)
        self.pools[request.pool.name] = request.pool
        return request.pool

    async def _check_strategies(self, pool: _admin.Pool, context: _Context) -> None:
        for name in (pool.strategy, *([pool.ab_strategy] if pool.ab_strategy else [])):
            if name not in KNOWN_STRATEGIES:
                known = ", ".join(KNOWN_STRATEGIES)
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown strategy {name!r}; known: {known}"
                )

    async def ListWorkers(
        self, request: _admin.ListWorkersRequest, context: _Context
    ) -> _admin.ListWorkersResponse:
        workers = [w for w in self.workers.values() if request.pool in ("", w.pool)]
        return _admin.ListWorkersResponse(workers=workers)

    async def DrainWorker(
        self, request: _admin.DrainWorkerRequest, context: _Context
    ) -> _admin.DrainWorkerResponse:
        worker = self.workers.get(request.worker_id)
        if worker is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such worker")
        worker.draining = True
        return _admin.DrainWorkerResponse(worker=worker)

    async def CordonWorker(
        self, request: _admin.CordonWorkerRequest, context: _Context
    ) -> _admin.WorkerStatus:
        # What cordoning does is the real broker's to show (its own tests); not faked here.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake broker")

    # Operations (metrics history, recommendations, config) are the real broker's to show.
    async def MetricsHistory(
        self, request: _admin.MetricsHistoryRequest, context: _Context
    ) -> _admin.MetricsHistoryResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake broker")

    async def Recommend(
        self, request: _admin.RecommendRequest, context: _Context
    ) -> _admin.RecommendResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake broker")

    async def ReloadConfig(
        self, request: _admin.ReloadConfigRequest, context: _Context
    ) -> _admin.ReloadConfigResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake broker")

    async def ConfigHistory(
        self, request: _admin.ConfigHistoryRequest, context: _Context
    ) -> _admin.ConfigHistoryResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake broker")

    async def PurgeTasks(
        self, request: _admin.PurgeTasksRequest, context: _Context
    ) -> _admin.PurgeTasksResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the fake broker")

    async def Stats(self, request: _admin.StatsRequest, context: _Context) -> _admin.StatsResponse:
        return _admin.StatsResponse(
            broker_state="running",
            pools=[
                _admin.PoolStats(
                    pool="default",
                    strategy="round_robin",
                    pending=3,
                    assigned=2,
                    succeeded=10,
                    failed=1,
                    workers=1,
                    capacity=4,
                    unschedulable=2,
                    arms=[
                        _admin.ArmStats(
                            strategy="round_robin",
                            placed=8,
                            finished=7,
                            failed=1,
                            mean_wait_s=0.5,
                            mean_run_s=1.25,
                        ),
                        _admin.ArmStats(strategy="adaptive", placed=2),
                    ],
                    runtimes=[
                        _admin.RuntimeStats(
                            task_type="echo",
                            samples=9,
                            mean_run_s=0.2,
                            stddev_run_s=0.05,
                            predictions=6,
                            mean_abs_error_s=0.01,
                        )
                    ],
                    sticky_hits=3,
                    sticky_misses=1,
                )
            ],
        )


@contextlib.asynccontextmanager
async def serve_services(*servicers: object) -> AsyncIterator[str]:
    """A loopback server with these task and admin services; yields its address."""
    server = grpc.aio.server()
    for servicer in servicers:
        if isinstance(servicer, _tasks_grpc.TaskServiceServicer):
            _tasks_grpc.add_TaskServiceServicer_to_server(servicer, server)
        if isinstance(servicer, _admin_grpc.AdminServiceServicer):
            _admin_grpc.add_AdminServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


class FakeSession:
    """One Connect stream as the fake broker sees it; the test drives it."""

    def __init__(self, register: _worker.Register, worker_id: str) -> None:
        self.register = register
        self.worker_id = worker_id
        self.messages: list[_worker.WorkerMessage] = []
        self.outbox: asyncio.Queue[_worker.BrokerMessage | None] = asyncio.Queue()
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def results(self) -> dict[str, _worker.TaskResult]:
        return {
            r.task_id: r
            for m in self.messages
            if m.WhichOneof("kind") == "results"
            for r in m.results.results
        }

    @property
    def result_messages(self) -> list[_worker.Results]:
        return [m.results for m in self.messages if m.WhichOneof("kind") == "results"]

    @property
    def started(self) -> list[str]:
        return [t for r in self.result_messages for t in r.started_task_ids]

    def of_kind(self, kind: str) -> list[_worker.WorkerMessage]:
        return [m for m in self.messages if m.WhichOneof("kind") == kind]

    def record(self, message: _worker.WorkerMessage) -> None:
        self.messages.append(message)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate` holds, re-checking on every message or stream end."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def assign(self, *tasks: tuple[str, str, bytes]) -> None:
        self.outbox.put_nowait(
            _worker.BrokerMessage(
                assignments=_worker.Assignments(
                    assignments=[
                        _worker.Assignment(
                            task_id=task_id, attempt=1, task_type=task_type, payload=payload
                        )
                        for task_id, task_type, payload in tasks
                    ]
                )
            )
        )

    def cancel(self, *task_ids: str) -> None:
        self.outbox.put_nowait(
            _worker.BrokerMessage(cancel=_worker.CancelTasks(task_ids=list(task_ids)))
        )

    def drain(self) -> None:
        self.outbox.put_nowait(_worker.BrokerMessage(drain=_worker.Drain(reason="test")))

    async def consume(self, requests: AsyncIterator[_worker.WorkerMessage]) -> None:
        try:
            async for message in requests:
                self.record(message)
        finally:
            self.ended.set()
            self._changed.set()


class FakeWorkerService(_worker_grpc.WorkerServiceServicer):
    """Acks registration, then relays what the test queues and records what the worker sends."""

    def __init__(
        self,
        *,
        refuse: grpc.StatusCode | None = None,
        heartbeat_interval_s: float = 30.0,
        idle_heartbeat_interval_s: float = 0.0,
    ) -> None:
        self.refuse = refuse
        self.heartbeat_interval_s = heartbeat_interval_s
        self.idle_heartbeat_interval_s = idle_heartbeat_interval_s
        self.sessions: asyncio.Queue[FakeSession] = asyncio.Queue()
        self.connects = 0
        self.connected = asyncio.Event()

    async def Connect(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[_worker.WorkerMessage],
        context: grpc.aio.ServicerContext[_worker.WorkerMessage, _worker.BrokerMessage],
    ) -> None:
        self.connects += 1
        self.connected.set()
        requests = aiter(request_iterator)
        first = await anext(requests)
        if self.refuse is not None:
            await context.abort(self.refuse, "refused by the fake broker")
        assert first.WhichOneof("kind") == "register"
        worker_id = first.register.worker_id or f"w-{self.connects}"
        session = FakeSession(first.register, worker_id)
        await context.write(
            _worker.BrokerMessage(
                register_ack=_worker.RegisterAck(
                    worker_id=worker_id,
                    heartbeat_interval_s=self.heartbeat_interval_s,
                    idle_heartbeat_interval_s=self.idle_heartbeat_interval_s,
                    idle_heartbeat_timeout_s=3 * self.idle_heartbeat_interval_s,
                )
            )
        )
        self.sessions.put_nowait(session)
        reader = asyncio.create_task(session.consume(requests))
        try:
            while True:
                outgoing = asyncio.create_task(session.outbox.get())
                await asyncio.wait({outgoing, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not outgoing.done():
                    outgoing.cancel()
                    return  # the worker half-closed
                message = outgoing.result()
                if message is None:
                    return
                await context.write(message)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@contextlib.asynccontextmanager
async def serve(service: FakeWorkerService, port: int = 0) -> AsyncIterator[tuple[str, int]]:
    server = grpc.aio.server()
    _worker_grpc.add_WorkerServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{bound}", bound
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def running(worker: Worker, address: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run the worker in a task; shut it down (and check it ended cleanly) afterwards."""
    task = asyncio.create_task(worker.run(address))
    try:
        yield task
    finally:
        await worker.shutdown(grace=1.0)
        await task
        leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("taskbroker-")]
        assert leftovers == []
