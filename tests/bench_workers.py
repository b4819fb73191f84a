"""Many connected workers: `python -m tests.bench_workers` (`--quick`: 1,000 of them).

Starts a broker process on a fresh SQLite file, then client processes that each open
many raw worker streams (Register, then a Heartbeat at the interval the broker asks for
of a worker holding no task, its idle heartbeat interval; no tasks). Prints, one
`NAME VALUE UNIT` a line:
- workers_registered / workers_register_s: how many registered, and how long it took
  until they all had (or until the deadline);
- workers_broker_rss / workers_broker_rss_added: the broker's resident memory with them
  all connected, and how much they added to the idle broker's;
- workers_heartbeat_cpu: the broker's CPU use, in % of one core, with nothing but
  heartbeats to handle, over one idle heartbeat interval (30 s by default; `--quick`:
  5 s, in which the beats, spread evenly, come at the same rate).
Registration is bounded by a deadline, the heartbeat window by its length.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from tests.bench import _cpu_seconds, _emit, _spawn, _stop, _wait_for_file
from worker_sdk._pb import worker_pb2 as _worker
from worker_sdk._pb import worker_pb2_grpc as _worker_grpc

# Streams per connection: several connections, as many separate workers would have. A
# worker on a connection of its own costs the broker more (gRPC's per-connection state).
STREAMS_PER_CHANNEL = 250
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from the stubs


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def _one_worker(
    stub: _worker_grpc.WorkerServiceStub, registered: list[int], done: asyncio.Event, total: int
) -> None:
    """One simulated worker: register (again after a pause if the stream fails, as the
    SDK's workers do), then heartbeat at the interval the broker asks for."""
    pause = 0.2
    while True:
        try:
            call: Any = stub.Connect()  # type: ignore[call-arg]  # written and read by hand
            register = _worker.Register(pool="default", capacity=1, task_types=["noop"])
            await call.write(_worker.WorkerMessage(register=register))
            reply = await call.read()
            if reply is _EOF or not reply.HasField("register_ack"):
                raise ConnectionError("no register ack")
        except (grpc.aio.AioRpcError, ConnectionError):
            await asyncio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 5.0)
            continue
        break
    registered[0] += 1
    if registered[0] == total:
        done.set()
    ack = reply.register_ack
    # They hold no task: the idle interval, if the broker has one.
    interval = ack.idle_heartbeat_interval_s or ack.heartbeat_interval_s or 5.0
    beat = _worker.WorkerMessage(heartbeat=_worker.Heartbeat(in_flight=0))
    # Spread the heartbeats over the interval, as workers started at different times do.
    await asyncio.sleep(interval * random.random())
    with contextlib.suppress(grpc.aio.AioRpcError):
        while True:
            await call.write(beat)
            await asyncio.sleep(interval)


async def _run_streams(address: str, count: str, deadline_s: str) -> None:
    """Open `count` worker streams; print `registered N` once all have (or, if not all
    have, after `deadline_s` seconds), and keep them open until SIGTERM."""
    total = int(count)
    registered = [0]
    done = asyncio.Event()
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, -(-total // STREAMS_PER_CHANNEL)))
    ]
    stubs = [_worker_grpc.WorkerServiceStub(channel) for channel in channels]
    workers = [
        asyncio.ensure_future(_one_worker(stubs[i % len(stubs)], registered, done, total))
        for i in range(total)
    ]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(float(deadline_s)):
            await done.wait()
    print(f"registered {registered[0]}", flush=True)
    await stop.wait()
    for worker in workers:
        worker.cancel()
    for channel in channels:
        await channel.close(None)


def _spawn_streams(address: str, count: int, deadline_s: float) -> subprocess.Popen[bytes]:
    args = ["streams", address, str(count), str(deadline_s)]
    command = [sys.executable, "-m", "tests.bench_workers", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def measure(workers: int, processes: int, deadline_s: float, window_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "address")
        broker = _spawn("broker", os.path.join(tmp, "bench.db"), port_file)
        procs = [broker]
        try:
            address = _wait_for_file(port_file, broker, "broker")
            time.sleep(1)
            idle_rss = _rss_mib(broker.pid)
            started = time.monotonic()
            shares = [workers // processes + (i < workers % processes) for i in range(processes)]
            streams = [_spawn_streams(address, share, deadline_s) for share in shares]
            procs += streams
            finished = _registered(streams, started + deadline_s + 10)
            elapsed = time.monotonic() - started
            count = sum(finished)
            _emit("workers_registered", count, "workers")
            _emit("workers_register_s", elapsed, "s", 1)
            _emit("workers_broker_rss", _rss_mib(broker.pid), "MiB")
            _emit("workers_broker_rss_added", _rss_mib(broker.pid) - idle_rss, "MiB")
            cpu_before, at = _cpu_seconds(broker.pid), time.monotonic()
            time.sleep(window_s)
            cpu = (_cpu_seconds(broker.pid) - cpu_before) / (time.monotonic() - at)
            _emit("workers_heartbeat_cpu", cpu * 100, "%", 1)
        finally:
            _stop(procs)


def _registered(streams: list[subprocess.Popen[bytes]], deadline: float) -> list[int]:
    """How many workers each stream process registered, waiting until `deadline`."""
    import selectors

    counts = [0] * len(streams)
    pending = set(range(len(streams)))
    with selectors.DefaultSelector() as selector:
        for i, proc in enumerate(streams):
            assert proc.stdout is not None
            selector.register(proc.stdout, selectors.EVENT_READ, i)
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                i = key.data
                line = streams[i].stdout.readline() if streams[i].stdout else b""
                selector.unregister(key.fileobj)
                pending.discard(i)
                if line.startswith(b"registered "):
                    counts[i] = int(line.split()[1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1,000 workers, shorter windows")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--processes", type=int, default=4, help="stream processes")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds to register")
    parser.add_argument("role", nargs="?", default="main", choices=["main", "streams"])
    parser.add_argument("args", nargs="*")
    options = parser.parse_args()
    if options.role == "streams":
        asyncio.run(_run_streams(*options.args))
        return
    workers = options.workers or (1_000 if options.quick else 10_000)
    measure(workers, options.processes, options.deadline, 5.0 if options.quick else 30.0)


if __name__ == "__main__":
    main()
