"""What the engine's observers cost per task: the metrics history, the OpenTelemetry
metrics and tracing, each in process, on the events one task makes.

Each task is submitted (in batches of 100, as a busy stream brings them), placed, its
attempt ends and it finishes; the observers see exactly the calls the engine makes. The
tasks are made beforehand, spread over two workers and two task types: building them is
not the observers' cost. Time is CPU time (`time.process_time`), so other work on the
machine does not skew it. Prints, in µs per task:

- `observer_cost_history`: the metrics history (always on);
- `observer_cost_otel_metrics`: the OpenTelemetry metrics (on with `prometheus_port` or
  `metric_readers`), read by an in-memory reader once at the end (not timed);
- `observer_cost_metrics`: the two together;
- `observer_cost_tracing_unsampled`: tracing on, for a task whose trace was not sampled
  (the usual one at a low sample ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from broker.clock import FakeClock
from broker.domain import Task, TaskSpec, TaskState
from broker.observability.metrics import BrokerMetrics
from broker.observability.observe import Observer
from broker.observability.rollups import MetricsHistory
from broker.observability.tracing import TracingObserver, broker_tracer
from broker.storage.memory import MemoryStore

SUBMIT_BATCH = 100
UNSAMPLED = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}


def _tasks(count: int, *, traced: bool) -> tuple[list[Task], list[Task]]:
    """Each task as it is placed (running) and as it finishes (succeeded)."""
    running, done = [], []
    for i in range(count):
        spec = TaskSpec(task_type=f"type{i % 2}", trace_context=dict(UNSAMPLED) if traced else {})
        task = Task(id=i + 1, spec=spec, state=TaskState.RUNNING, worker_id=f"w{i % 2}")
        running.append(task)
        done.append(Task(id=i + 1, spec=spec, state=TaskState.SUCCEEDED, worker_id=task.worker_id))
    return running, done


def cost(observer: Observer, count: int, *, traced: bool = False) -> float:
    """CPU µs per task of `observer` on the events of `count` tasks."""
    running, done = _tasks(count, traced=traced)
    at = 1_700_000_000.0
    started = time.process_time()
    for start in range(0, count, SUBMIT_BATCH):
        observer.submitted(running[start : start + SUBMIT_BATCH], at)
    for task in running:
        at += 0.0001
        observer.placed(task, 0.002, at)
    for task in done:
        observer.attempt_ended(task, True, 0.001, at)
        observer.finished(task)
    return (time.process_time() - started) * 1e6 / count


async def _measure(count: int) -> dict[str, float]:
    history = MetricsHistory(MemoryStore(), FakeClock())
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = BrokerMetrics(provider, backlog=list, workers=list)
    tracing = TracingObserver(broker_tracer(TracerProvider()))
    figures = {
        "observer_cost_history": cost(history, count),
        "observer_cost_otel_metrics": cost(metrics, count),
        "observer_cost_tracing_unsampled": cost(tracing, count, traced=True),
    }
    figures["observer_cost_metrics"] = (
        figures["observer_cost_history"] + figures["observer_cost_otel_metrics"]
    )
    collected = reader.get_metrics_data()  # the reader sees what was recorded
    assert collected is not None
    assert collected.resource_metrics
    provider.shutdown()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 tasks instead of 100,000")
    options = parser.parse_args()
    figures = asyncio.run(_measure(10_000 if options.quick else 100_000))
    for name in (
        "observer_cost_history",
        "observer_cost_otel_metrics",
        "observer_cost_metrics",
        "observer_cost_tracing_unsampled",
    ):
        print(f"{name} {figures[name]:.1f} us", flush=True)


if __name__ == "__main__":
    main()
