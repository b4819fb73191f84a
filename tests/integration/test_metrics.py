"""Broker metrics: exact values after known events, then through a real broker."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

from broker import Broker
from broker.domain import (
    Backlog,
    RetryPolicy,
    Task,
    TaskSpec,
    TaskState,
    WorkerSpec,
    WorkerStatus,
)
from broker.errors import BrokerError, ConfigError
from broker.observability.exporters import meter_provider
from broker.observability.metrics import (
    DURATION_BUCKETS_S,
    MAX_REASONS,
    OTHER,
    BrokerMetrics,
)
from broker.observability.observe import Observer
from tests.support.config import make_config
from tests.support.workers import start_worker
from worker_sdk import Client, TaskContext, Worker
from worker_sdk import RetryPolicy as SdkRetryPolicy

T0 = 1_700_000_000.0


# Reading what the SDK collected -------------------------------------------------


class Collected:
    """One collection's data points by metric name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        data = reader.get_metrics_data()
        assert data is not None
        self.points: dict[str, list[NumberDataPoint | HistogramDataPoint]] = {}
        self.units: dict[str, str] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.points[metric.name] = [
                        point
                        for point in metric.data.data_points
                        if isinstance(point, NumberDataPoint | HistogramDataPoint)
                    ]
                    self.units[metric.name] = metric.unit or ""

    def value(self, name: str, **attrs: str) -> float:
        """The counter or gauge value of the series with exactly these attributes."""
        point = self._point(name, attrs)
        assert isinstance(point, NumberDataPoint)
        return point.value

    def histogram(self, name: str, **attrs: str) -> HistogramDataPoint:
        point = self._point(name, attrs)
        assert isinstance(point, HistogramDataPoint)
        return point

    def series(self, name: str) -> list[dict[str, object]]:
        return [dict(point.attributes or {}) for point in self.points.get(name, [])]

    def _point(self, name: str, attrs: dict[str, str]) -> NumberDataPoint | HistogramDataPoint:
        matches = [p for p in self.points.get(name, []) if dict(p.attributes or {}) == attrs]
        assert len(matches) == 1, f"{name}{attrs}: {self.series(name)}"
        return matches[0]


# Unit level: known events, fake engine ------------------------------------------


def make_task(
    task_id: int,
    task_type: str,
    *,
    pool: str = "default",
    state: TaskState = TaskState.PENDING,
    worker_id: str = "",
    attempts: int = 0,
    created_at: float = T0,
    retry: RetryPolicy | None = None,
) -> Task:
    spec = TaskSpec(task_type=task_type, pool=pool, retry=retry or RetryPolicy())
    return Task(
        id=task_id,
        spec=spec,
        state=state,
        worker_id=worker_id,
        attempts=attempts,
        created_at=created_at,
    )


def worker_status(
    worker_id: str, pool: str, *, capacity: int, in_flight: int, breaker: str = "closed"
) -> WorkerStatus:
    spec = WorkerSpec(
        worker_id=worker_id, pool=pool, capacity=capacity, task_types=frozenset({"echo"})
    )
    return WorkerStatus(
        spec=spec,
        in_flight=in_flight,
        capacity=capacity,
        load=0.0,
        connected_at=T0,
        last_heartbeat=T0,
        draining=False,
        breaker=breaker,
    )


class FakeEngine:
    """What BrokerMetrics reads at collection time, set by the test."""

    def __init__(self) -> None:
        self.rows: list[Backlog] = []
        self.status: list[WorkerStatus] = []
        self.reads = 0
        self.read_on: set[int] = set()

    def backlog(self) -> Sequence[Backlog]:
        self.reads += 1
        self.read_on.add(threading.get_ident())
        return self.rows

    def workers(self) -> Sequence[WorkerStatus]:
        return self.status


def new_metrics(reader: InMemoryMetricReader, engine: FakeEngine) -> BrokerMetrics:
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    return BrokerMetrics(provider, backlog=engine.backlog, workers=engine.workers)


@pytest.fixture
def memory() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def test_flow_control_counts_come_from_the_engine(memory: InMemoryMetricReader) -> None:
    engine = FakeEngine()
    flow = {("default", "rejected"): 400, ("gpu", "rate_limited"): 3}
    provider = MeterProvider(metric_readers=[memory], shutdown_on_exit=False)
    BrokerMetrics(provider, backlog=engine.backlog, workers=engine.workers, flow=lambda: flow)
    got = Collected(memory)
    assert got.value("taskbroker.flow.events", pool="default", event="rejected") == 400
    assert got.value("taskbroker.flow.events", pool="gpu", event="rate_limited") == 3
    flow[("default", "rejected")] = 600  # the engine counts on; the next collection sees it
    assert Collected(memory).value("taskbroker.flow.events", pool="default", event="rejected") == (
        600
    )


def test_counters_and_histograms_after_known_events(memory: InMemoryMetricReader) -> None:
    metrics = new_metrics(memory, FakeEngine())
    observer: Observer = metrics  # it is an engine observer
    echo1 = make_task(1, "echo")
    echo2 = make_task(2, "echo")
    boom = make_task(3, "boom", retry=RetryPolicy(max_attempts=2))
    gpu = make_task(4, "render", pool="gpu")
    observer.submitted([echo1, echo2, boom], T0)
    observer.submitted([gpu], T0)

    # echo1: placed 2 s after submit (0.5 s of it in the queue), runs 0.25 s, succeeds.
    echo1.state, echo1.worker_id, echo1.attempts = TaskState.ASSIGNED, "w1", 1
    observer.placed(echo1, 0.5, T0 + 2)
    echo1.state = TaskState.SUCCEEDED
    observer.attempt_ended(echo1, True, 0.25, T0 + 2.25)
    observer.finished(echo1)

    # boom: fails, is retried after a backoff, fails again: dead letter.
    boom.state, boom.worker_id, boom.attempts = TaskState.ASSIGNED, "w1", 1
    observer.placed(boom, 0.1, T0 + 0.1)
    boom.state = TaskState.PENDING  # the engine sent it back for a retry
    observer.attempt_ended(boom, False, 1.5, T0 + 1.6)
    boom.state, boom.worker_id, boom.attempts = TaskState.ASSIGNED, "w2", 2
    observer.placed(boom, 0.2, T0 + 4.6)  # 3 s after its failure: backoff + queue
    boom.state = TaskState.DEAD_LETTER
    observer.attempt_ended(boom, False, 0.004, T0 + 4.7)
    observer.finished(boom)

    # echo2: placed, its worker is lost, placed again 4 s later, cancelled.
    echo2.state, echo2.worker_id, echo2.attempts = TaskState.ASSIGNED, "w2", 1
    observer.placed(echo2, 0.0, T0)
    observer.requeued(echo2, "missed heartbeats", T0 + 1)
    echo2.state, echo2.worker_id, echo2.attempts = TaskState.ASSIGNED, "w1", 2
    observer.placed(echo2, 1.0, T0 + 5)
    echo2.state = TaskState.CANCELLED
    observer.finished(echo2)

    # gpu: fails without retries.
    gpu.state, gpu.worker_id, gpu.attempts = TaskState.FAILED, "g1", 1
    observer.attempt_ended(gpu, False, 30.0, T0 + 40)
    observer.finished(gpu)

    observer.worker_changed("w1", "default", "connected", T0)
    observer.worker_changed("w2", "default", "connected", T0)
    observer.worker_changed("w2", "default", "disconnected", T0 + 1)

    got = Collected(memory)
    submitted = "taskbroker.tasks.submitted"
    assert got.value(submitted, pool="default", task_type="echo") == 2
    assert got.value(submitted, pool="default", task_type="boom") == 1
    assert got.value(submitted, pool="gpu", task_type="render") == 1
    completed = "taskbroker.tasks.completed"
    assert sorted((str(s["task_type"]), str(s["outcome"])) for s in got.series(completed)) == [
        ("boom", "dead_letter"),
        ("echo", "cancelled"),
        ("echo", "succeeded"),
        ("render", "failed"),
    ]
    assert got.value(completed, pool="default", task_type="echo", outcome="succeeded") == 1
    assert got.value(completed, pool="gpu", task_type="render", outcome="failed") == 1
    failed = "taskbroker.tasks.failed_attempts"
    assert got.value(failed, pool="default", task_type="boom") == 2
    assert got.value(failed, pool="gpu", task_type="render") == 1
    assert got.series("taskbroker.tasks.retried") == [{"pool": "default", "task_type": "boom"}]
    assert got.value("taskbroker.tasks.retried", pool="default", task_type="boom") == 1
    requeued = "taskbroker.tasks.requeued"
    assert got.value(requeued, pool="default", task_type="echo", reason="missed heartbeats") == 1
    events = "taskbroker.workers.events"
    assert got.value(events, pool="default", event="connected") == 2
    assert got.value(events, pool="default", event="disconnected") == 1

    wait = got.histogram("taskbroker.queue.wait", pool="default", task_type="echo")
    assert wait.count == 3
    assert wait.sum == pytest.approx(1.5)
    assert tuple(wait.explicit_bounds) == DURATION_BUCKETS_S
    boom_wait = got.histogram("taskbroker.queue.wait", pool="default", task_type="boom")
    assert boom_wait.count == 2
    assert boom_wait.sum == pytest.approx(0.3)
    # Dispatch latency: from submit (first attempt) or from going back to pending.
    latency = got.histogram("taskbroker.dispatch.latency", pool="default", task_type="boom")
    assert latency.count == 2
    assert latency.sum == pytest.approx(0.1 + 3.0)
    latency = got.histogram("taskbroker.dispatch.latency", pool="default", task_type="echo")
    assert latency.count == 3
    assert latency.sum == pytest.approx(2.0 + 0.0 + 4.0)

    run = "taskbroker.task.run_time"
    # Per pool and type, not per worker: a histogram would keep a gone worker's series.
    boom_runs = got.histogram(run, pool="default", task_type="boom")
    assert boom_runs.count == 2
    assert boom_runs.sum == pytest.approx(1.5 + 0.004)
    assert boom_runs.bucket_counts[DURATION_BUCKETS_S.index(0.005)] == 1  # 2.5 ms < 4 ms <= 5 ms
    assert got.histogram(run, pool="gpu", task_type="render").count == 1
    assert got.units[run] == "s"


def test_gauges_report_backlog_workers_credit_and_breakers(memory: InMemoryMetricReader) -> None:
    engine = FakeEngine()
    new_metrics(memory, engine)
    engine.rows = [
        Backlog(
            pool="default", task_type="echo", pending=3, delayed=1, in_flight=2, oldest_age_s=7.5
        ),
        Backlog(
            pool="default", task_type="boom", pending=2, delayed=0, in_flight=0, oldest_age_s=1.0
        ),
        Backlog(pool="default", task_type="", pending=5, delayed=1, in_flight=2, oldest_age_s=7.5),
        Backlog(pool="gpu", task_type="", pending=0, delayed=0, in_flight=0, oldest_age_s=0.0),
    ]
    engine.status = [
        worker_status("w1", "default", capacity=4, in_flight=2),
        worker_status("w2", "default", capacity=2, in_flight=0, breaker="open"),
    ]

    got = Collected(memory)
    assert engine.reads == 1  # one read of the engine serves every gauge of a collection
    pending = "taskbroker.backlog.pending"
    assert got.value(pending, pool="default") == 5  # the pool: no task_type attribute
    assert got.value(pending, pool="default", task_type="echo") == 3
    assert got.value(pending, pool="default", task_type="boom") == 2
    assert got.value(pending, pool="gpu") == 0
    assert got.value("taskbroker.backlog.delayed", pool="default", task_type="echo") == 1
    assert got.value("taskbroker.backlog.oldest_age", pool="default") == 7.5
    assert got.value("taskbroker.backlog.oldest_age", pool="default", task_type="boom") == 1.0
    assert got.units["taskbroker.backlog.oldest_age"] == "s"
    assert got.value("taskbroker.inflight", pool="default") == 2
    assert got.value("taskbroker.workers.connected", pool="default") == 2
    assert got.value("taskbroker.workers.connected", pool="gpu") == 0
    assert got.value("taskbroker.credit.capacity", pool="default") == 6
    assert got.value("taskbroker.credit.in_use", pool="default") == 2
    assert got.value("taskbroker.credit.capacity", pool="gpu") == 0
    breaker = "taskbroker.workers.breaker"
    assert got.value(breaker, pool="default", state="closed") == 1
    assert got.value(breaker, pool="default", state="open") == 1
    assert got.value(breaker, pool="default", state="half_open") == 0
    assert got.value(breaker, pool="gpu", state="closed") == 0

    # The next collection reads the engine again; a drained type reports 0, not nothing.
    engine.rows = [
        Backlog(pool="default", task_type="", pending=0, delayed=0, in_flight=0, oldest_age_s=0.0),
        Backlog(pool="gpu", task_type="", pending=0, delayed=0, in_flight=0, oldest_age_s=0.0),
    ]
    engine.status = []
    got = Collected(memory)
    assert engine.reads == 2
    assert got.value(pending, pool="default") == 0
    assert got.value(pending, pool="default", task_type="echo") == 0
    assert got.value("taskbroker.backlog.oldest_age", pool="default", task_type="boom") == 0
    assert got.value("taskbroker.workers.connected", pool="default") == 0
    assert got.value(breaker, pool="default", state="open") == 0


def test_free_text_reasons_are_bounded(memory: InMemoryMetricReader) -> None:
    metrics = new_metrics(memory, FakeEngine())
    task = make_task(1, "echo", state=TaskState.ASSIGNED, worker_id="w1", attempts=1)
    for n in range(MAX_REASONS + 8):
        metrics.requeued(task, f"reason {n}", T0)
    got = Collected(memory)
    reasons = {str(s["reason"]) for s in got.series("taskbroker.tasks.requeued")}
    assert len(reasons) == MAX_REASONS + 1
    requeued = "taskbroker.tasks.requeued"
    assert got.value(requeued, pool="default", task_type="echo", reason=OTHER) == 8


def test_an_engine_that_fails_to_answer_leaves_the_counters(
    memory: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Sequence[Backlog]:
        raise RuntimeError("engine gone")

    provider = MeterProvider(metric_readers=[memory], shutdown_on_exit=False)
    metrics = BrokerMetrics(provider, backlog=broken, workers=list)
    metrics.submitted([make_task(1, "echo")], T0)
    got = Collected(memory)
    assert got.value("taskbroker.tasks.submitted", pool="default", task_type="echo") == 1
    assert got.series("taskbroker.backlog.pending") == []
    assert "could not read the backlog" in caplog.text


async def test_a_collection_from_another_thread_reads_the_engine_on_its_loop(
    memory: InMemoryMetricReader,
) -> None:
    engine = FakeEngine()
    engine.rows = [
        Backlog(pool="default", task_type="", pending=1, delayed=0, in_flight=0, oldest_age_s=2.0)
    ]
    metrics = new_metrics(memory, engine)  # made on the loop: it remembers the loop
    metrics.submitted([make_task(1, "echo")], T0)
    got = await asyncio.to_thread(Collected, memory)
    assert engine.read_on == {threading.get_ident()}  # this test runs on the loop's thread
    assert got.value("taskbroker.backlog.pending", pool="default") == 1
    assert got.value("taskbroker.tasks.submitted", pool="default", task_type="echo") == 1


def test_after_close_a_collection_does_not_wait_for_the_loop(memory: InMemoryMetricReader) -> None:
    engine = FakeEngine()
    engine.rows = [
        Backlog(pool="default", task_type="", pending=4, delayed=0, in_flight=0, oldest_age_s=0.0)
    ]

    async def on_a_loop() -> list[Collected]:
        metrics = new_metrics(memory, engine)
        metrics.submitted([make_task(1, "echo")], T0)
        metrics.close()
        engine.rows = []  # not read again
        collected: list[Collected] = []
        # The loop is blocked, as in a provider's shutdown joining its export thread.
        thread = threading.Thread(target=lambda: collected.append(Collected(memory)))
        thread.start()
        thread.join(timeout=5)
        return collected

    [got] = asyncio.run(on_a_loop())
    assert engine.reads == 1
    assert got.value("taskbroker.backlog.pending", pool="default") == 4
    assert got.value("taskbroker.tasks.submitted", pool="default", task_type="echo") == 1


# Providers ------------------------------------------------------------------------


def test_no_provider_without_a_reader(tmp_path: Path) -> None:
    assert meter_provider(make_config(tmp_path)) is None
    memory = InMemoryMetricReader()
    provider = meter_provider(make_config(tmp_path), [memory])
    assert provider is not None
    assert provider.scrape_address is None
    provider.shutdown()
    provider.shutdown()  # idempotent


def test_prometheus_port_without_the_extra_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.prometheus", None)
    with pytest.raises(ConfigError, match=r"prometheus_port: .*prometheus extra"):
        meter_provider(make_config(tmp_path, prometheus_port=free_port()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# End to end: a real broker, worker and client ------------------------------------


def metrics_worker(worker_id: str) -> Worker:
    worker = Worker(capacity=4, worker_id=worker_id)

    @worker.task("echo")
    async def echo(ctx: TaskContext) -> bytes:
        return ctx.payload

    @worker.task("boom")
    async def boom(ctx: TaskContext) -> None:
        raise ValueError("boom")

    return worker


@pytest.fixture
async def measured(
    tmp_path: Path, memory: InMemoryMetricReader
) -> AsyncIterator[tuple[Broker, InMemoryMetricReader]]:
    provider = MeterProvider(metric_readers=[memory], shutdown_on_exit=False)
    async with Broker(make_config(tmp_path)) as broker:
        engine = broker.engine
        engine.observers.add(
            BrokerMetrics(provider, backlog=engine.backlog, workers=engine.workers)
        )
        yield broker, memory
    provider.shutdown()


async def running(worker: Worker, client: Client) -> asyncio.Task[None]:
    """Start the worker; return once the broker has it."""
    return await start_worker(worker, client.address)


async def test_a_known_workload_shows_in_the_metrics(
    measured: tuple[Broker, InMemoryMetricReader],
) -> None:
    broker, memory = measured
    worker = metrics_worker("w-metrics")
    async with Client(broker.address) as client:
        run = await running(worker, client)
        ids = [await client.submit("echo", b"x") for _ in range(6)]
        ids += [await client.submit("boom") for _ in range(2)]
        # Two attempts, then dead letter. Four failures in all: the breaker (5) stays shut.
        retry = SdkRetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
        ids.append(await client.submit("boom", retry=retry))
        infos = await client.wait_many(ids, timeout=10)
        assert [i.state.name for i in infos] == ["SUCCEEDED"] * 6 + ["FAILED"] * 2 + ["DEAD_LETTER"]

        got = Collected(memory)
        submitted = "taskbroker.tasks.submitted"
        assert got.value(submitted, pool="default", task_type="echo") == 6
        assert got.value(submitted, pool="default", task_type="boom") == 3
        completed = "taskbroker.tasks.completed"
        assert got.value(completed, pool="default", task_type="echo", outcome="succeeded") == 6
        assert got.value(completed, pool="default", task_type="boom", outcome="failed") == 2
        assert got.value(completed, pool="default", task_type="boom", outcome="dead_letter") == 1
        assert got.value("taskbroker.tasks.failed_attempts", pool="default", task_type="boom") == 4
        assert got.value("taskbroker.tasks.retried", pool="default", task_type="boom") == 1
        run_time = "taskbroker.task.run_time"
        echo_runs = got.histogram(run_time, pool="default", task_type="echo")
        assert echo_runs.count == 6
        boom_runs = got.histogram(run_time, pool="default", task_type="boom")
        assert boom_runs.count == 4
        assert got.histogram("taskbroker.queue.wait", pool="default", task_type="echo").count == 6
        assert (
            got.histogram("taskbroker.dispatch.latency", pool="default", task_type="boom").count
            == 4
        )
        assert got.value("taskbroker.backlog.pending", pool="default") == 0
        assert got.value("taskbroker.backlog.oldest_age", pool="default") == 0
        assert got.value("taskbroker.inflight", pool="default") == 0
        assert got.value("taskbroker.workers.connected", pool="default") == 1
        assert got.value("taskbroker.workers.connected", pool="other") == 0
        assert got.value("taskbroker.credit.capacity", pool="default") == 4
        assert got.value("taskbroker.credit.in_use", pool="default") == 0
        assert got.value("taskbroker.workers.breaker", pool="default", state="closed") == 1
        events = "taskbroker.workers.events"
        assert got.value(events, pool="default", event="connected") == 1
        await worker.shutdown(grace=2)
        await run


async def test_waiting_tasks_show_as_backlog_with_an_age(
    measured: tuple[Broker, InMemoryMetricReader],
) -> None:
    broker, memory = measured
    async with Client(broker.address) as client:
        for _ in range(3):
            await client.submit("render", pool="other")  # no worker in "other"
        async with asyncio.timeout(5):
            while True:
                got = Collected(memory)
                if got.value("taskbroker.backlog.oldest_age", pool="other") > 0:
                    break
                await asyncio.sleep(0.01)
    assert got.value("taskbroker.backlog.pending", pool="other") == 3
    assert got.value("taskbroker.backlog.pending", pool="other", task_type="render") == 3
    assert got.value("taskbroker.backlog.oldest_age", pool="other", task_type="render") > 0
    assert got.value("taskbroker.backlog.pending", pool="default") == 0
    assert got.value("taskbroker.workers.connected", pool="other") == 0


# Prometheus ---------------------------------------------------------------------


async def test_prometheus_endpoint_serves_the_metrics(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    pytest.importorskip("prometheus_client")
    port = free_port()
    config = make_config(tmp_path, prometheus_port=port)
    async with Broker(config) as broker:  # the broker serves /metrics itself
        async with Client(broker.address) as client:
            await client.submit("render", pool="other")
        url = f"http://127.0.0.1:{port}/metrics"
        # A scrape thread: the gauges are read on the broker's loop, which must be free.
        text = await asyncio.to_thread(_scrape, url)
    assert "taskbroker_tasks_submitted_total{" in text
    lines = [line for line in text.splitlines() if line.startswith("taskbroker_")]
    pending = [line for line in lines if line.startswith("taskbroker_backlog_pending")]
    assert any('pool="other"' in line and 'task_type="render"' in line for line in pending)
    assert any(line.startswith("taskbroker_workers_connected") for line in lines)
    assert any(line.startswith("taskbroker_backlog_oldest_age_seconds") for line in lines)
    with pytest.raises(urllib.error.URLError):  # shut down: the endpoint is gone
        _scrape(url)


async def test_worker_series_end_when_the_worker_leaves(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    pytest.importorskip("prometheus_client")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    config = make_config(tmp_path, prometheus_port=port)
    async with Broker(config) as broker, Client(broker.address) as client:
        worker = metrics_worker("w-leaves")
        run = await running(worker, client)
        task_id = await client.submit("echo", b"x")
        await client.wait_many([task_id], timeout=10)
        text = await asyncio.to_thread(_scrape, url)
        held = [line for line in text.splitlines() if 'worker_id="w-leaves"' in line]
        assert any(line.startswith("taskbroker_worker_in_flight") for line in held), held
        await worker.shutdown(grace=2)
        await run
        async with asyncio.timeout(10):  # the broker sees the stream end
            while await client.list_workers():
                await asyncio.sleep(0.01)
        text = await asyncio.to_thread(_scrape, url)
    assert "w-leaves" not in text


async def test_a_provider_reports_its_scrape_address(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    port = free_port()
    provider = meter_provider(make_config(tmp_path, prometheus_port=port))
    assert provider is not None
    try:
        assert provider.scrape_address is not None
        assert provider.scrape_address[1] == port
    finally:
        provider.shutdown()


def test_a_taken_prometheus_port_is_a_broker_error(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.exporter.prometheus")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match="cannot serve Prometheus metrics"):
            meter_provider(make_config(tmp_path, prometheus_port=port))


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()
