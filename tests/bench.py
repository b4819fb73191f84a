"""End-to-end benchmark: `make bench` (or `python -m tests.bench`; `--quick` for short runs).

Starts broker processes on fresh SQLite files (synchronous = FULL) and worker processes
with a no-op handler, then measures from this process, through the SDK client:
- pingpong_p50/p99: a bare grpc.aio bidirectional stream, one message each way, against
  an echo server in its own process: the floor every other latency is compared with;
- one slot (two workers with one slot each): light-load submit → result latency, one task
  at a time, with `Client.run` (e2e_latency_p50/p99 and their ratios to the ping-pong) and
  with `submit` then `wait` (e2e_latency_p50/p99_submit_wait), and the end-to-end rate of
  many tasks submitted at once (e2e_throughput_one_slot);
- many slots (two workers with 512 slots each): the end-to-end rate with batched submits
  (e2e_throughput_batched) and with single submits pipelined (e2e_throughput);
- traced: the single-submit run again with tracing everywhere, 1 % of traces sampled
  (e2e_throughput_traced, and its cost against the untraced run).
Each throughput run also gives the CPU time per task of the broker, of the workers
together and of this client, from /proc and resource usage of the real processes.
Prints one figure a line, `NAME VALUE UNIT`, so runs can be compared line by line.
With --tls and/or --token (tests.bench_security), only the many-slot run, over TLS and/or
with a token checked on every call: its figures end in `_tls` / `_token`.
Every loop is bounded in count and in time.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

try:  # how `taskbroker serve` and `worker run` run
    from cli._common import freeze_imports, run_async
except ImportError:  # an older checkout, into which `make bench-compare` copied this file

    def freeze_imports() -> None:
        """The older commands froze nothing."""

    run_async = asyncio.run
from tests import bench_security
from worker_sdk import Client, TaskContext, TaskRequest, Worker

MANY_SLOTS = 512
TRACING_ENV = "TASKBROKER_BENCH_TRACING"
TRACE_SAMPLE = 0.01
BATCH = 500
RUN_TIMEOUT_S = 300  # one deadline for a whole run, not a timer per task
_ECHO = "/bench.Echo/Ping"
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from the stubs


@dataclass(frozen=True)
class Counts:
    """How much each measurement does: `make bench` or `make bench-quick`."""

    pingpongs: int
    latency_samples: int
    one_slot_tasks: int
    many_slot_tasks: int
    warmup: int


FULL = Counts(
    pingpongs=2000, latency_samples=500, one_slot_tasks=6000, many_slot_tasks=20_000, warmup=2000
)
QUICK = Counts(
    pingpongs=500, latency_samples=150, one_slot_tasks=1500, many_slot_tasks=4000, warmup=500
)


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
    # The client decides (1 %); broker and workers follow the trace's decision.
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(TRACE_SAMPLE)))
    provider.add_span_processor(BatchSpanProcessor(_DropSpans()))
    return provider


# -- the processes --------------------------------------------------------------------------


async def _run_broker(db_path: str, port_file: str) -> None:
    from broker import Broker, load_config

    freeze_imports()  # as `taskbroker serve` does
    config = load_config(None, os.environ, port=0, db_path=db_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with Broker(config, tracer_provider=_tracer_provider()) as broker:
        Path(port_file).write_text(broker.address)
        await stop.wait()


async def _run_worker(address: str, capacity: str) -> None:
    worker = Worker(
        capacity=int(capacity),
        tracer_provider=_tracer_provider(),
        **bench_security.connection(),
    )

    @worker.task("noop")
    async def noop(ctx: TaskContext) -> None:
        return None

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.shutdown(5)))
    freeze_imports()  # as `taskbroker worker run` does
    await worker.run(address)


async def _run_echo(port_file: str) -> None:
    """A bare grpc.aio server with one bidirectional method that sends back what it gets."""

    async def echo(requests: object, context: Any) -> None:
        while True:
            message = await context.read()
            if message is _EOF:
                return
            await context.write(message)

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Ping": grpc.stream_stream_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    Path(port_file).write_text(f"127.0.0.1:{port}")
    await stop.wait()
    await server.stop(1)


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.bench", *args]
    return subprocess.Popen(command, env={**os.environ, **(env or {})})


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _wait_for_file(path: str, proc: subprocess.Popen[bytes], what: str) -> str:
    deadline = time.monotonic() + 30
    while not os.path.exists(path) or not Path(path).read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the {what} did not start")
        time.sleep(0.02)
    return Path(path).read_text()


@contextlib.contextmanager
def cluster(capacity: int, workers: int = 2, *, tracing: bool = False) -> Iterator[Cluster]:
    """A broker on a fresh SQLite file and `workers` no-op workers of `capacity` slots."""
    env = {TRACING_ENV: "1" if tracing else "0"}
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "address")
        procs = [_spawn("broker", os.path.join(tmp, "bench.db"), port_file, env=env)]
        try:
            address = _wait_for_file(port_file, procs[0], "broker")
            for _ in range(workers):
                procs.append(_spawn("worker", address, str(capacity), env=env))
            yield Cluster(address, procs[0].pid, [proc.pid for proc in procs[1:]], workers)
        finally:
            _stop(procs)


@dataclass(frozen=True)
class Cluster:
    address: str
    broker_pid: int
    worker_pids: list[int]
    workers: int


# -- measurements ---------------------------------------------------------------------------


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return ordered[index]


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _emit(name: str, value: float, unit: str, digits: int = 0) -> None:
    print(f"{name} {value:.{digits}f} {unit}", flush=True)


async def pingpong(count: int) -> list[float]:
    """Round trips of one small message on one bidirectional stream, in milliseconds; also
    prints the echo server's CPU time per round trip, what grpc.aio itself costs."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "address")
        server = _spawn("echo", port_file)
        try:
            address = _wait_for_file(port_file, server, "echo server")
            async with grpc.aio.insecure_channel(address) as channel:
                ping: Any = channel.stream_stream(_ECHO, None, None)  # bytes as they are
                call = ping()
                samples = []
                cpu_before = _cpu_seconds(server.pid)
                async with asyncio.timeout(RUN_TIMEOUT_S):
                    for i in range(count + count // 10):  # the first tenth warms up
                        started = time.perf_counter()
                        await call.write(b"ping")
                        await call.read()
                        if i >= count // 10:
                            samples.append((time.perf_counter() - started) * 1000)
                    await call.done_writing()
                rounds = count + count // 10
                _emit(
                    "pingpong_cpu_server",
                    (_cpu_seconds(server.pid) - cpu_before) * 1e6 / rounds,
                    "us",
                )
            return samples
        finally:
            _stop([server])


async def _ready(client: Client, workers: int) -> None:
    async with asyncio.timeout(60):
        while len(await client.list_workers()) < workers:
            await asyncio.sleep(0.05)


async def _single(client: Client, count: int) -> None:
    async def one() -> None:
        task_id = await client.submit("noop")
        await client.wait(task_id)

    await asyncio.gather(*(one() for _ in range(count)))


async def _batched(client: Client, count: int) -> None:
    async def batch(size: int) -> None:
        task_ids = await client.submit_many([TaskRequest("noop") for _ in range(size)])
        await client.wait_many(task_ids)

    sizes = [min(BATCH, count - start) for start in range(0, count, BATCH)]
    await asyncio.gather(*(batch(size) for size in sizes))


async def throughput(
    client: Client, setup: Cluster, count: int, batched: bool, suffix: str
) -> float:
    """Tasks per second, submit to result, and the CPU each process spent per task."""
    run = _batched if batched else _single
    pids = [setup.broker_pid, *setup.worker_pids]
    cpu_before = [_cpu_seconds(pid) for pid in pids] + [time.process_time()]
    started = time.perf_counter()
    async with asyncio.timeout(RUN_TIMEOUT_S):
        await run(client, count)
    rate = count / (time.perf_counter() - started)
    cpu_after = [_cpu_seconds(pid) for pid in pids] + [time.process_time()]
    cpu = [
        (after - before) * 1e6 / count for before, after in zip(cpu_before, cpu_after, strict=True)
    ]
    _emit(f"e2e_throughput{suffix}", rate, "tasks/s")
    _emit(f"cpu_per_task_broker{suffix}", cpu[0], "us")
    _emit(f"cpu_per_task_workers{suffix}", sum(cpu[1:-1]), "us")
    _emit(f"cpu_per_task_client{suffix}", cpu[-1], "us")
    return rate


async def latencies(client: Client, count: int, *, run: bool = True) -> list[float]:
    """Submit → result of one task at a time, in milliseconds: with `Client.run` (submit
    and wait in one round trip), or with `submit` then `wait`."""
    samples = []
    async with asyncio.timeout(RUN_TIMEOUT_S):
        for _ in range(count):
            started = time.perf_counter()
            if run and hasattr(client, "run"):  # a checkout from before Client.run: not
                await client.run(TaskRequest("noop"), timeout=30)
            else:
                await client.wait(await client.submit("noop"), timeout=30)
            samples.append((time.perf_counter() - started) * 1000)
    return samples


async def one_slot(counts: Counts, ping: list[float]) -> None:
    with cluster(capacity=1) as setup:
        async with Client(setup.address, **bench_security.connection()) as client:
            await _ready(client, setup.workers)
            await _single(client, counts.warmup // 4)
            samples = await latencies(client, counts.latency_samples)
            p50, p99 = statistics.median(samples), _percentile(samples, 99)
            _emit("e2e_latency_p50", p50, "ms", 2)
            _emit("e2e_latency_p99", p99, "ms", 2)
            _emit("e2e_latency_p50_pingpongs", p50 / statistics.median(ping), "x", 2)
            _emit("e2e_latency_p99_pingpongs", p99 / _percentile(ping, 99), "x", 2)
            samples = await latencies(client, counts.latency_samples, run=False)
            _emit("e2e_latency_p50_submit_wait", statistics.median(samples), "ms", 2)
            _emit("e2e_latency_p99_submit_wait", _percentile(samples, 99), "ms", 2)
            await throughput(client, setup, counts.one_slot_tasks, False, "_one_slot")


async def many_slots(counts: Counts, *, tracing: bool) -> float:
    with cluster(capacity=MANY_SLOTS, tracing=tracing) as setup:
        security = bench_security.connection()
        async with Client(setup.address, tracer_provider=_tracer_provider(), **security) as client:
            await _ready(client, setup.workers)
            await _single(client, counts.warmup)
            if tracing:
                return await throughput(client, setup, counts.many_slot_tasks, False, "_traced")
            suffix = bench_security.suffix()
            await throughput(client, setup, counts.many_slot_tasks, True, "_batched" + suffix)
            return await throughput(client, setup, counts.many_slot_tasks, False, suffix)


async def measure(counts: Counts, parts: set[str]) -> None:
    if "one_slot" in parts:
        ping = await pingpong(counts.pingpongs)
        _emit("pingpong_p50", statistics.median(ping), "ms", 3)
        _emit("pingpong_p99", _percentile(ping, 99), "ms", 3)
        await one_slot(counts, ping)
    untraced = None
    if "many_slots" in parts:
        untraced = await many_slots(counts, tracing=False)
    if "traced" in parts:
        os.environ[TRACING_ENV] = "1"  # for this client
        try:
            traced = await many_slots(counts, tracing=True)
        finally:
            os.environ[TRACING_ENV] = "0"
        if untraced:
            _emit("tracing_cost", (1 - traced / untraced) * 100, "%", 1)


PARTS = ("one_slot", "many_slots", "traced")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter counts, for development")
    parser.add_argument(
        "--only", action="append", choices=PARTS, help="run only this part (repeatable)"
    )
    parser.add_argument(
        "role", nargs="?", default="main", choices=["main", "broker", "worker", "echo"]
    )
    parser.add_argument(
        "--tls", action="store_true", help="many slots only, the broker serving TLS (_tls)"
    )
    parser.add_argument(
        "--token", action="store_true", help="many slots only, a token checked (_token)"
    )
    parser.add_argument("args", nargs="*")
    options = parser.parse_args()
    if options.role == "broker":  # on the event loop of `taskbroker serve`
        run_async(_run_broker(*options.args))
    elif options.role == "worker":  # ... and of `taskbroker worker run`
        run_async(_run_worker(*options.args))
    elif options.role == "echo":
        asyncio.run(_run_echo(*options.args))  # a bare grpc.aio stream: the standard loop
    else:
        counts = QUICK if options.quick else FULL
        parts = set(options.only or PARTS)
        if options.tls or options.token:
            bench_security.enable(tls=options.tls, token=options.token)
            parts = {"many_slots"}
        asyncio.run(measure(counts, parts))


if __name__ == "__main__":
    main()
