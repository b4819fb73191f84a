"""Worker: registers handlers, then serves the broker one session (`_session`) at a time,
reconnecting with backoff, until `shutdown()` or a drain."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from opentelemetry.trace import TracerProvider

from worker_sdk import _tracing
from worker_sdk._channel import (
    TLSSetting,
    Token,
    open_channel,
    split_addresses,
    tls_of,
    token_of,
)
from worker_sdk._context import TaskContext
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc
from worker_sdk._processes import ProcessSlots, pickled_handlers

# The session, and what it shares with the worker, moved to worker_sdk._session; every
# name stays importable from here.
from worker_sdk._session import _CLOSE_TIMEOUT_S as _CLOSE_TIMEOUT_S
from worker_sdk._session import _DEFAULT_HEARTBEAT_S as _DEFAULT_HEARTBEAT_S
from worker_sdk._session import _FATAL_REGISTRATION_CODES as _FATAL_REGISTRATION_CODES
from worker_sdk._session import _MAX_MESSAGE_RESULT_BYTES as _MAX_MESSAGE_RESULT_BYTES
from worker_sdk._session import Carried
from worker_sdk._session import _error_info as _error_info
from worker_sdk._session import _Handler as _Handler
from worker_sdk._session import _now_ms as _now_ms
from worker_sdk._session import _Running as _Running
from worker_sdk._session import _Session as _Session
from worker_sdk._session import _Stream as _Stream
from worker_sdk._session import _StreamLost as _StreamLost
from worker_sdk._types import DEFAULT_ADDRESS, DEFAULT_POOL

_log = logging.getLogger("taskbroker.worker")

_H = TypeVar("_H", bound=Callable[[TaskContext], Any])


class Worker:
    """Runs tasks for one pool: `@worker.task("type")` registers handlers, `run()` serves.

    Async handlers run as asyncio tasks, sync handlers in a thread pool of `capacity` threads.
    A thread cannot be stopped: a sync handler that ignores `ctx.cancelled` keeps its slot
    busy past its task's execution timeout. With `sync_handlers="process"` they run in
    `capacity` child processes instead (spawned, one per slot), and a cancelled task (its
    execution timeout, a cancel, a shutdown past its grace) has its child killed and
    replaced, the slot offered to the broker again once the new child is ready. The
    handlers must then be module-level functions (pickled by name: checked when `run()`
    starts), and their results are encoded in the child.
    `run()` reconnects with backoff when the stream breaks and returns after `shutdown()` or
    when the broker drains the worker. The SDK installs no signal handlers: wire SIGTERM to
    `shutdown()` in your program if you want it.

    With OpenTelemetry (`tracer_provider`, else the application's global provider, if it
    set one) each attempt runs in a span "taskbroker.execute" of the task's trace, current
    while the handler runs (in its thread, too), so the handler's own spans nest in it.
    """

    def __init__(
        self,
        pool: str = DEFAULT_POOL,
        *,
        capacity: int = 4,
        labels: Mapping[str, str] | None = None,
        worker_id: str | None = None,
        broker: str = DEFAULT_ADDRESS,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 10.0,
        tracer_provider: TracerProvider | None = None,
        sync_handlers: Literal["thread", "process"] = "thread",
        tls: TLSSetting = None,
        token: str | Token | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if sync_handlers not in ("thread", "process"):
            raise ValueError(f"sync_handlers must be 'thread' or 'process', not {sync_handlers!r}")
        self._sync_handlers = sync_handlers
        # The handler processes while run() runs with sync_handlers="process".
        self._processes: ProcessSlots | None = None
        if reconnect_initial_s <= 0 or reconnect_max_s < reconnect_initial_s:
            raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
        self._pool = pool
        self._capacity = capacity
        self._labels = dict(labels or {})
        self._worker_id = worker_id
        self._broker = broker
        self._tls = tls_of(tls)
        self._token = token_of(token)
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._handlers: dict[str, _Handler] = {}
        self._tracing = _tracing.Tracing(tracer_provider)
        self._stop_requested = False
        # Made by run(), so they belong to the loop that runs the worker.
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._grace = 30.0
        self._running = False
        self._session: _Session | None = None
        self._lease_s: float | None = None  # set by a session at registration
        # Tasks a broken stream left running, for the next stream to resume; handlers
        # of a session the broker did not resume, being cancelled.
        self._carried: Carried | None = None
        self._abandoned: list[asyncio.Task[None]] = []
        # What a session awaits between heartbeats; tests replace it to beat on demand.
        self._heartbeat_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @property
    def worker_id(self) -> str | None:
        """The id the broker acknowledged (or the one configured, before registration)."""
        return self._worker_id

    @property
    def lease_s(self) -> float | None:
        """The lease the broker gave this worker's tasks at the last registration: a task
        whose lease a heartbeat does not renew within this many seconds is taken back.
        None before registration (or if the broker did not say). The worker heartbeats at
        least twice within it."""
        return self._lease_s

    @property
    def task_types(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    @property
    def pool(self) -> str:
        return self._pool

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def labels(self) -> dict[str, str]:
        """The labels the worker registers with (a copy)."""
        return dict(self._labels)

    def configure(
        self,
        *,
        pool: str | None = None,
        capacity: int | None = None,
        labels: Mapping[str, str] | None = None,
        worker_id: str | None = None,
        tls: TLSSetting = None,
        token: str | Token | None = None,
    ) -> None:
        """Override what the worker was built with, before `run()` (as `taskbroker worker
        run --pool/--capacity/--labels/--worker-id`, and `--tls-*`/`--token`, do). An
        argument left None keeps its setting; `labels` are merged over the existing ones
        (a key given here wins)."""
        if self._running:
            raise RuntimeError("configure the worker before run()")
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be at least 1")
        if pool is not None:
            if not pool:
                raise ValueError("pool must not be empty")
            self._pool = pool
        if capacity is not None:
            self._capacity = capacity
        if labels is not None:
            self._labels.update(labels)
        if worker_id is not None:
            if not worker_id:
                raise ValueError("worker_id must not be empty")
            self._worker_id = worker_id
        if tls is not None:
            self._tls = tls_of(tls)
        if token is not None:
            self._token = token_of(token)

    def task(self, task_type: str) -> Callable[[_H], _H]:
        """Register the decorated function as the handler of `task_type`; it is returned as is.

        A handler takes a TaskContext and returns bytes (sent as is), str (UTF-8), None
        (empty) or anything else JSON can encode.
        """
        if not task_type:
            raise ValueError("task_type must not be empty")

        def register(function: _H) -> _H:
            if task_type in self._handlers:
                raise ValueError(f"task type {task_type!r} already has a handler")
            if self._running:
                raise RuntimeError("register handlers before run()")
            self._handlers[task_type] = _Handler(function, inspect.iscoroutinefunction(function))
            return function

        return register

    async def run(self, broker: str | None = None) -> None:
        """Connect to the broker and serve until `shutdown()` or a drain; then return.

        Several brokers sharing one database may be given, comma-separated: the worker
        connects to one, follows a broker that names the one scheduling its pool, and
        moves on to the next when one cannot be reached.

        Raises the matching TaskbrokerError if the broker refuses the registration.
        """
        if self._running:
            raise RuntimeError("the worker is already running")
        if not self._handlers:
            raise ValueError("no handlers: register at least one with @worker.task(...)")
        if self._stop_requested:
            return
        address = broker or self._broker
        sync = {t: h.function for t, h in self._handlers.items() if not h.is_async}
        blob = pickled_handlers(sync) if self._sync_handlers == "process" and sync else None
        self._running = True
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        if blob is not None:
            slots = ProcessSlots(blob, self._capacity)
            try:
                await slots.start()
            except BaseException:
                self._running = False
                self._finished.set()
                raise
            self._processes = slots
        executor = ThreadPoolExecutor(self._capacity, thread_name_prefix="taskbroker-handler")
        # gRPC's own reconnect backoff (1 s, growing to 120 s) would otherwise decide
        # when a worker gets back to a restarted broker: make it follow ours.
        reconnect = [
            ("grpc.initial_reconnect_backoff_ms", round(self._reconnect_initial_s * 1000)),
            ("grpc.min_reconnect_backoff_ms", round(self._reconnect_initial_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", round(self._reconnect_max_s * 1000)),
        ]
        addresses = split_addresses(address)
        at = 0  # which of the addresses (several brokers: any of them, or the one named)
        channel = open_channel(
            addresses[at], extra_options=reconnect, tls=self._tls, token=self._token
        )
        try:
            failures = 0
            registered_before = False
            while not self._stop.is_set():
                stub = _worker_grpc.WorkerServiceStub(channel)
                session = _Session(self, stub.Connect(None), executor, addresses[at])
                self._session = session
                try:
                    await session.run(registered_before)
                    return
                except _StreamLost as lost:
                    if session.registered:
                        registered_before = True
                        failures = 0
                    ceiling = min(
                        self._reconnect_max_s, self._reconnect_initial_s * 2.0 ** min(failures, 30)
                    )
                    failures += 1
                    delay = random.uniform(0, ceiling)
                    if lost.redirect or len(addresses) > 1:
                        # Sent to the broker that schedules the pool, or on to the next one.
                        if lost.redirect:
                            if lost.redirect not in addresses:
                                addresses.append(lost.redirect)
                            at = addresses.index(lost.redirect)
                            if failures <= 1:
                                delay = 0.0  # at once, unless brokers disagree for now
                        elif not session.registered:
                            at = (at + 1) % len(addresses)
                        await channel.close(None)
                        channel = open_channel(
                            addresses[at], extra_options=reconnect, tls=self._tls, token=self._token
                        )
                        _log.info("connecting to %s next", addresses[at])
                    _log.warning("%s; reconnecting in %.2fs", lost, delay)
                    await self._sleep_unless_stopped(delay)
                finally:
                    self._session = None
        finally:
            carried, self._carried = self._carried, None
            abandoned = self._abandoned + (carried.held.cancel_all() if carried else [])
            self._abandoned = []
            await asyncio.gather(*abandoned, return_exceptions=True)
            await channel.close(None)
            if self._processes is not None:
                await self._processes.close()
                self._processes = None
            executor.shutdown(wait=False, cancel_futures=True)
            self._running = False
            self._finished.set()

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop taking work, let in-flight tasks finish within `grace` seconds (then cancel
        them), send their results and disconnect. Idempotent; returns once `run()` is done.
        """
        self._grace = grace
        self._stop_requested = True
        self._stop.set()
        session = self._session
        if session is not None and session.is_handler_task(asyncio.current_task()):
            return  # called from a handler: waiting here would wait for ourselves
        if self._running:
            await self._finished.wait()

    def kill_handler_processes(self) -> None:
        """SIGKILL the handler processes now (with `sync_handlers="process"`), without
        waiting: for a program about to exit at once. Their tasks are requeued by the broker.
        """
        if self._processes is not None:
            self._processes.kill_all()

    @property
    def handler_pids(self) -> tuple[int, ...]:
        """The pids of the handler processes (with `sync_handlers="process"`, while running)."""
        return tuple(self._processes.pids) if self._processes is not None else ()

    async def _sleep_unless_stopped(self, delay: float) -> None:
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            pass
