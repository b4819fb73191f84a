"""The composition root: a Broker wires config, store, engine, service layer and gRPC
server together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import TracerProvider

from broker.clock import Clock, SystemClock
from broker.cluster.node import ClusterNode, new_broker_id
from broker.config import BrokerConfig, load_config, validate_pool
from broker.core.states import BrokerState, Lifecycle
from broker.domain import ConfigChange
from broker.errors import BrokerError, ConfigError, FailedPrecondition, InvalidArgument
from broker.http import (
    AnyOf,
    BrokerTokens,
    DashboardServer,
    StaticTokens,
    TokenVerifier,
    create_app,
)
from broker.observability import tracing
from broker.observability.exporters import ServingMeterProvider, meter_provider
from broker.observability.logs import TaskLog
from broker.observability.metrics import BrokerMetrics
from broker.observability.rollups import MetricsHistory
from broker.runtime.engine import Engine
from broker.server.grpc_server import add_services, bind_server, health_servicer, set_serving
from broker.server.security import Security
from broker.service import BrokerService
from broker.storage import PostgresStore, Store, open_store
from broker.store_url import redacted

log = logging.getLogger("taskbroker.server")

# [broker] settings that only take effect at start (a reload logs that they changed).
_BROKER_SETTINGS = tuple(f.name for f in dataclasses.fields(BrokerConfig) if f.name != "pools")


class Broker:
    """A running Taskbroker: `await start()`, then `await shutdown()` (or `async with`)."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        clock: Clock | None = None,
        config_path: Path | str | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        metric_readers: Sequence[MetricReader] = (),
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """`metric_readers` receive the broker's OpenTelemetry metrics (besides the
        Prometheus endpoint that `prometheus_port` asks for); `tracer_provider` takes its
        spans (None: the exporter that `tracing_exporter` names, if any)."""
        self._tracer_provider = tracer_provider
        self._owns_tracer_provider = False
        self.config = config
        self._config_path = Path(config_path) if config_path is not None else None
        self._config_overrides = dict(config_overrides or {})  # flags that beat the file
        self._metric_readers = tuple(metric_readers)
        self._meter_provider: ServingMeterProvider | None = None
        self._metrics: BrokerMetrics | None = None
        self._history: MetricsHistory | None = None
        self._clock = clock or SystemClock()
        self._lifecycle = Lifecycle()
        self._store: Store | None = None
        self._engine: Engine | None = None
        self._service: BrokerService | None = None
        self._server: grpc.aio.Server | None = None
        self._security: Security | None = None
        self._dashboard: DashboardServer | None = None
        self._health = health_servicer()
        self._background: asyncio.Task[None] | None = None  # the TaskGroup of the jobs
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self.failure: BaseException | None = None  # what stopped the broker, if it crashed
        self._port = 0
        self._stopped = asyncio.Event()
        self._node: ClusterNode | None = None  # when several brokers share PostgreSQL
        self._health_task: asyncio.Future[None] | None = None

    @property
    def state(self) -> BrokerState:
        return self._lifecycle.state

    @property
    def port(self) -> int:
        """The bound port (useful when the config asked for port 0)."""
        return self._port

    @property
    def dashboard_port(self) -> int:
        """The dashboard's bound port; 0 when it is off."""
        return self._dashboard.port if self._dashboard is not None else 0

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self._port}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise BrokerError("the broker has not started")
        return self._engine

    @property
    def service(self) -> BrokerService:
        """The service layer every transport calls (the gRPC server is one)."""
        if self._service is None:
            raise BrokerError("the broker has not started")
        return self._service

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
        # A missing Prometheus package or a taken port fails before anything opens.
        self._meter_provider = meter_provider(config, self._metric_readers)
        if self._tracer_provider is None:
            self._tracer_provider = tracing.tracer_provider(config)
            self._owns_tracer_provider = self._tracer_provider is not None
        tracer = tracing.broker_tracer(self._tracer_provider) if self._tracer_provider else None
        # The port before the store: a port in use fails before a database is created.
        security = self._security = Security(config, self._clock)
        server, self._port = bind_server(config, tracer=tracer, security=security)
        self._server = server
        self._store = await open_store(config.db_path, synchronous=config.sqlite_synchronous)
        await security.attach(self._store)
        if isinstance(self._store, PostgresStore):
            await self._join_cluster(self._store)
        engine = self._engine = Engine(config, self._store, self._clock)
        if self._node is not None:
            engine.ownership = self._node
        history = self._history = MetricsHistory.from_config(config, self._store, self._clock)
        engine.observers.add(history)
        engine.observers.add(TaskLog())
        if tracer is not None:
            engine.observers.add(tracing.TracingObserver(tracer))
        if self._meter_provider is not None:
            self._metrics = BrokerMetrics(
                self._meter_provider,
                backlog=engine.backlog,
                workers=engine.workers,
                flow=engine.flow_counts,
            )
            engine.observers.add(self._metrics)
        requeued = await engine.recover()
        now = self._clock.now()
        seeded = engine.learn_run_times(
            await history.run_times(now - config.metrics_retention_s, now)
        )
        if seeded:
            log.info("run times of %d task types learned from the metrics history", seeded)
        service = self._service = BrokerService(
            engine,
            history,
            broker_state=lambda: self.state,
            reload_config=self.reload_config,
            tracer=tracer,
        )
        add_services(server, service, health_service=self._health, security=security)
        jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "store writer": self._store.run,
            "reaper": engine.run_reaper,
            "metrics history": history.run,
            "task retention": engine.run_retention,
        }
        if config.dashboard_port:
            self._dashboard = dashboard(config, service, self._clock, security)
            jobs["dashboard"] = self._dashboard.run
        await server.start()
        engine.start()
        supervising = asyncio.Event()
        node = self._node
        if node is not None:
            jobs["cluster membership"] = lambda: node.run(
                engine, lambda: [p.name for p in engine.pools()]
            )
        self._background = asyncio.create_task(
            self._supervise(jobs, supervising),
            name="taskbroker-background",
        )
        await supervising.wait()
        await set_serving(self._health)
        log.info(
            "taskbroker listening on %s (db %s); %d unfinished tasks requeued",
            self.address,
            redacted(config.db_path),
            requeued,
        )

    async def _join_cluster(self, store: PostgresStore) -> None:
        """Join the brokers sharing this database and take this broker's share of the
        pools, before the engine recovers their tasks (broker.cluster)."""
        config = self.config
        node = self._node = ClusterNode(
            store,
            broker_id=config.broker_id or new_broker_id(),
            address=config.advertise_address or self.address,
            lease_s=config.cluster_lease_s,
            on_pause=self._lost_leases,
            on_resume=self._renewed_leases,
        )
        names = {pool.name for pool in config.pools}
        names.update(pool.name for pool in await store.list_pools())
        await node.join(sorted(names))

    def _lost_leases(self, why: str) -> None:
        """No dispatch, no submits, health NOT_SERVING: this broker may not hold its
        pools any more."""
        if self._engine is not None:
            self._engine.pause()
        log.error("not serving: %s", why)
        self._health_task = asyncio.ensure_future(set_serving(self._health, serving=False))

    def _renewed_leases(self) -> None:
        if self._engine is not None and self.state is BrokerState.RUNNING:
            self._engine.start()
        self._health_task = asyncio.ensure_future(set_serving(self._health))

    async def _supervise(
        self, jobs: Mapping[str, Callable[[], Coroutine[Any, Any, None]]], started: asyncio.Event
    ) -> None:
        """Run the broker's background work in one TaskGroup for as long as the broker runs.

        Shutdown cancels the jobs but the store writer, which ends when the store is closed,
        after the last writes. If any job fails, the TaskGroup cancels the others; the
        failure is logged, kept in `failure`, and the broker shuts down as on SIGTERM, so
        that a crashed job never goes unseen while the broker carries on without it.
        """
        try:
            async with asyncio.TaskGroup() as group:
                for name, job in jobs.items():
                    self._jobs[name] = group.create_task(
                        _named(name, job()), name=f"taskbroker-{name}"
                    )
                started.set()
        except Exception as exc:  # an ExceptionGroup of what failed
            failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
            self.failure = failures[0]
            for failure in failures:
                log.critical("the broker stops: %s", failure, exc_info=failure)
            if self.state is BrokerState.RUNNING:
                await self.shutdown()

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
        if self._dashboard is not None:
            await self._dashboard.stop()
            self._dashboard = None
        for name, job in self._jobs.items():
            if name != "store writer":
                job.cancel()
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
        if self._engine is not None:
            self._engine.disconnect_all("the broker is shutting down")
            if self._store is not None:
                self._engine.save_learning()
        if self._history is not None and self._store is not None:
            try:
                await self._history.flush()
            except BrokerError as exc:
                log.error("the last metrics could not be written: %s", exc)
            self._history = None
        if self._node is not None and self._store is not None:
            membership = self._jobs.get("cluster membership")
            if membership is not None:
                await asyncio.wait([membership])  # cancelled above; it lets go of PostgreSQL
            if not self._node.stepped_down:
                with contextlib.suppress(BrokerError):
                    await self._store.flush()
                await self._node.leave()  # the pools are free for the others at once
            self._node = None
        if self._store is not None:
            try:
                await self._store.close()  # the last writes; the store writer's job then ends
            except Exception as exc:  # the broker stops all the same, and says what was lost
                log.critical("the store could not write its last changes: %s", exc)
                self.failure = self.failure or exc
            self._store = None
        background, self._background = self._background, None
        if background is not None and background is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await background
        self._jobs.clear()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._meter_provider is not None:
            await asyncio.to_thread(self._meter_provider.shutdown)  # a periodic reader exports
            self._meter_provider = None
        if self._owns_tracer_provider and self._tracer_provider is not None:
            provider, self._tracer_provider = self._tracer_provider, None
            await asyncio.to_thread(provider.shutdown)  # sends the spans still batched

    async def reload_config(self, who: str = "") -> list[ConfigChange]:
        """Re-read the config file and apply what changed in its pools, at run time: the
        keys whose value in the file differs from the one it had when last seen (a change
        made at run time stands until the file changes that key), and the pools it adds.

        Every pool of the file is validated before any is changed: a bad value raises
        InvalidArgument (naming the key) and leaves every setting as it was. Pools created
        at run time and not in the file are left alone. Changed `[broker]` settings take
        effect at the next start; they are logged.

        The TLS certificate files and the tokens file are read again first (open
        connections keep the certificates they have), with or without a config file.
        """
        if self._security is not None:
            try:
                self._security.reload()
            except ConfigError as exc:
                raise InvalidArgument(f"config not reloaded: {exc}") from None
        if self._config_path is None:
            raise FailedPrecondition("the broker was started without a config file to reload")
        try:
            fresh = load_config(self._config_path, os.environ, **self._config_overrides)
            # Checked against the heartbeat interval this broker runs with: a changed one
            # only takes effect at the next start.
            for pool in fresh.pools:
                validate_pool(pool, self.config.heartbeat_interval_s)
        except ConfigError as exc:
            raise InvalidArgument(f"config not reloaded: {exc}") from None
        changes = await self.engine.apply_file_pools(fresh.pools, who or "reload", "reload")
        restart = sorted(
            key for key in _BROKER_SETTINGS if getattr(fresh, key) != getattr(self.config, key)
        )
        if restart:
            log.warning(
                "config reload: [broker] settings %s changed; they take effect at the next start",
                ", ".join(restart),
            )
        log.info("config reloaded by %s: %d pool changes", who, len(changes))
        return changes

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


class BackgroundJobFailed(BrokerError):
    """One of the broker's background jobs (reaper, metrics history, ...) failed."""


async def _named(name: str, job: Coroutine[Any, Any, None]) -> None:
    """Run a background job; its failure says which job it was."""
    try:
        await job
    except Exception as exc:
        raise BackgroundJobFailed(f"the {name} failed: {exc!r}") from exc


def dashboard(
    config: BrokerConfig, service: BrokerService, clock: Clock, security: Security
) -> DashboardServer:
    """The web dashboard on `dashboard_port`, its socket bound (a taken port fails here).
    It signs in with the tokens of `dashboard_tokens` and, with `auth = "token"`, with the
    broker's own API tokens that have the admin or read role."""
    verifiers: list[TokenVerifier] = []
    if config.dashboard_tokens:
        verifiers.append(StaticTokens.from_file(config.dashboard_tokens))
    if config.auth == "token":
        verifiers.append(BrokerTokens(security.registry))
    server = DashboardServer(
        create_app(service, AnyOf(verifiers), clock), config.host, config.dashboard_port
    )
    server.bind()
    return server
