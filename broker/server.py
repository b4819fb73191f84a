"""The composition root: a Broker wires config, store, engine and gRPC server together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from broker.api import AdminApi, TaskApi
from broker.clock import Clock, SystemClock
from broker.config import BrokerConfig
from broker.engine import Engine
from broker.errors import BrokerError
from broker.parsing import TolerantRegistrar
from broker.states import BrokerState, Lifecycle
from broker.store import SQLiteStore
from broker.worker_stream import WorkerApi
from worker_sdk._pb import admin_pb2 as _admin
from worker_sdk._pb import admin_pb2_grpc as _admin_grpc
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._pb import tasks_pb2_grpc as _tasks_grpc
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc

log = logging.getLogger("taskbroker.server")

SERVICE_NAMES = (
    _tasks.DESCRIPTOR.services_by_name["TaskService"].full_name,
    _worker.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    _admin.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


class Broker:
    """A running Taskbroker: `await start()`, then `await shutdown()` (or `async with`)."""

    def __init__(self, config: BrokerConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._lifecycle = Lifecycle()
        self._store: SQLiteStore | None = None
        self._engine: Engine | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._reaper: asyncio.Task[None] | None = None
        self._port = 0
        self._stopped = asyncio.Event()

    @property
    def state(self) -> BrokerState:
        return self._lifecycle.state

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        return self._port

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self._port}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise BrokerError("the broker has not started")
        return self._engine

    async def start(self) -> None:
        """Open the store, requeue unfinished work, bind the port and start serving."""
        self._lifecycle.move(BrokerState.STARTING)
        try:
            await self._start()
        except BaseException:
            await self._close()
            self._lifecycle.move(BrokerState.STOPPED)
            self._stopped.set()
            raise
        self._lifecycle.move(BrokerState.RUNNING)

    async def _start(self) -> None:
        config = self.config
        self._store = await SQLiteStore.open(config.db_path, synchronous=config.sqlite_synchronous)
        engine = self._engine = Engine(config, self._store, self._clock)
        requeued = await engine.recover()
        message_limit = max(64 * 1024 * 1024, 2 * config.max_payload_bytes + 1024 * 1024)
        server = self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", message_limit),
                ("grpc.max_send_message_length", message_limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        registrar: Any = TolerantRegistrar(server)
        _tasks_grpc.add_TaskServiceServicer_to_server(TaskApi(engine), registrar)
        _worker_grpc.add_WorkerServiceServicer_to_server(
            WorkerApi(engine, config.heartbeat_interval_s), registrar
        )
        _admin_grpc.add_AdminServiceServicer_to_server(
            AdminApi(engine, lambda: self.state.value), registrar
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            self._port = server.add_insecure_port(f"{config.host}:{config.port}")
        except RuntimeError as exc:
            raise BrokerError(f"cannot listen on {config.host}:{config.port}: {exc}") from None
        await server.start()
        engine.start()
        self._reaper = asyncio.create_task(engine.run_reaper(), name="taskbroker-reaper")
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "taskbroker listening on %s (db %s); %d unfinished tasks requeued",
            self.address,
            config.db_path,
            requeued,
        )

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop gracefully: refuse new work, let held tasks finish within `grace` seconds,
        end the streams, write everything to the store. Idempotent."""
        if self.state in (BrokerState.DRAINING, BrokerState.STOPPED):
            await self._stopped.wait()
            return
        if self.state is BrokerState.CREATED:
            self._lifecycle.move(BrokerState.STOPPED)
            self._stopped.set()
            return
        self._lifecycle.move(BrokerState.DRAINING)
        grace = self.config.shutdown_grace_s if grace is None else grace
        log.info("taskbroker draining (grace %g s)", grace)
        try:
            await self._health.enter_graceful_shutdown()
            if self._engine is not None:
                await self._engine.drain(grace)
                self._engine.disconnect_all("the broker is shutting down")
        finally:
            await self._close()
            self._lifecycle.move(BrokerState.STOPPED)
            self._stopped.set()
            log.info("taskbroker stopped")

    async def _close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        if self._engine is not None:
            self._engine.disconnect_all("the broker is shutting down")
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()
