"""End-to-end benchmark: `make bench` (or `python -m tests.bench`).

Starts a broker process on a fresh SQLite file and two worker processes with a
no-op handler, then measures from this process, through the SDK client:
- e2e_throughput: N no-op tasks submitted at once, submit to result;
- e2e_latency_p50/p99: one task at a time (light load), submit to result.
Prints one figure a line, `NAME VALUE UNIT`, so runs can be compared line by line.
With --tracing, client, broker and workers record every span (OpenTelemetry SDK, 100%
sampled, batched to an exporter that drops them) and the figures end in `_traced`.
With --tls and/or --token (tests.bench_security), over TLS and/or with a token checked
on every call: the figures end in `_tls` / `_token`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tests import bench_security
from worker_sdk import Client, TaskContext, Worker

WORKER_CAPACITY = 512
TRACING_ENV = "TASKBROKER_BENCH_TRACING"


class _DropSpans(SpanExporter):
    """Spans are made, batched and handed over in full, then dropped: the cost of tracing
    without the cost of an exporter's network or disk."""

    def export(self, spans: object) -> SpanExportResult:
        assert isinstance(spans, list | tuple)
        assert all(isinstance(span, ReadableSpan) for span in spans)
        return SpanExportResult.SUCCESS


def _tracer_provider() -> TracerProvider | None:
    if os.environ.get(TRACING_ENV) != "1":
        return None
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DropSpans()))
    return provider


def _noop_worker() -> Worker:
    worker = Worker(
        capacity=WORKER_CAPACITY,
        tracer_provider=_tracer_provider(),
        **bench_security.connection(),
    )

    @worker.task("noop")
    async def noop(ctx: TaskContext) -> None:
        return None

    return worker


async def _run_broker(db_path: str, port_file: str) -> None:
    from broker import Broker, load_config

    config = load_config(None, os.environ, port=0, db_path=db_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with Broker(config, tracer_provider=_tracer_provider()) as broker:
        Path(port_file).write_text(broker.address)
        await stop.wait()


async def _run_worker(address: str) -> None:
    worker = _noop_worker()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.shutdown(5)))
    await worker.run(address)


async def _throughput(client: Client, count: int) -> float:
    async def one() -> None:
        task_id = await client.submit("noop")
        await client.wait(task_id)

    started = time.perf_counter()
    async with asyncio.timeout(300):  # one deadline for the run, not a timer per task
        await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - started)


async def _latencies(client: Client, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        task_id = await client.submit("noop")
        await client.wait(task_id, timeout=30)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return ordered[index]


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(
    address: str, tasks: int, latency_samples: int, broker_pid: int, worker_pids: list[int]
) -> None:
    security = bench_security.connection()
    async with Client(address, tracer_provider=_tracer_provider(), **security) as client:
        async with asyncio.timeout(60):
            while len(await client.list_workers()) < 2:
                await asyncio.sleep(0.05)
        await _throughput(client, 2000)  # warm up
        pids = [broker_pid, *worker_pids]
        cpu_before = [_cpu_seconds(pid) for pid in pids] + [time.process_time()]
        throughput = await _throughput(client, tasks)
        cpu_after = [_cpu_seconds(pid) for pid in pids] + [time.process_time()]
        samples = await _latencies(client, latency_samples)
    spent = zip(cpu_before, cpu_after, strict=True)
    cpu = [(after - before) * 1e6 / tasks for before, after in spent]
    suffix = "_traced" if os.environ.get(TRACING_ENV) == "1" else ""
    suffix += bench_security.suffix()
    print(f"e2e_throughput{suffix} {throughput:.0f} tasks/s")
    print(f"cpu_per_task_broker{suffix} {cpu[0]:.0f} us")
    print(f"cpu_per_task_workers{suffix} {sum(cpu[1:-1]):.0f} us")
    print(f"cpu_per_task_client{suffix} {cpu[-1]:.0f} us")
    print(f"e2e_latency_p50{suffix} {statistics.median(samples):.2f} ms")
    print(f"e2e_latency_p99{suffix} {_percentile(samples, 99):.2f} ms")


def _spawn(*args: str, profile: str | None = None) -> subprocess.Popen[bytes]:
    runner = ["-m", "cProfile", "-o", profile] if profile else []
    return subprocess.Popen([sys.executable, *runner, "-m", "tests.bench", *args])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--profile-broker", metavar="FILE", help="write the broker's cProfile")
    parser.add_argument(
        "--tracing", action="store_true", help="trace everything (100%% sampled) everywhere"
    )
    parser.add_argument("--tls", action="store_true", help="the broker serves TLS")
    parser.add_argument("--token", action="store_true", help="the broker checks a token")
    parser.add_argument("role", nargs="?", default="main", choices=["main", "broker", "worker"])
    parser.add_argument("args", nargs="*")
    options = parser.parse_args()
    if options.tracing:
        os.environ[TRACING_ENV] = "1"  # for this process and the ones it starts
    if options.role == "main" and (options.tls or options.token):
        bench_security.enable(tls=options.tls, token=options.token)
    if options.role == "broker":
        asyncio.run(_run_broker(*options.args))
        return
    if options.role == "worker":
        asyncio.run(_run_worker(*options.args))
        return
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "address")
        db_path = os.path.join(tmp, "bench.db")
        procs = [_spawn("broker", db_path, port_file, profile=options.profile_broker)]
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(port_file) or not Path(port_file).read_text():
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise SystemExit("the broker did not start")
                time.sleep(0.05)
            address = Path(port_file).read_text()
            procs += [_spawn("worker", address), _spawn("worker", address)]
            asyncio.run(
                _measure(
                    address,
                    options.tasks,
                    options.latency_samples,
                    procs[0].pid,
                    [p.pid for p in procs[1:]],
                )
            )
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
            for proc in reversed(procs):
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)


if __name__ == "__main__":
    main()
