"""What one collection of the broker's metrics reads: a snapshot of the engine and the counts.

`Snapshots` hands every instrument of a collection the same snapshot, so the gauges and
counters of one export agree, and takes it on the broker's event loop: a collection from
another thread (the Prometheus endpoint's, a periodic exporter's) never sees the engine
mid-change. `broker.observability.metrics` turns a snapshot into observations.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from broker.domain import Backlog, WorkerStatus
from broker.errors import BrokerError

log = logging.getLogger("taskbroker.metrics")

BacklogSource = Callable[[], Sequence[Backlog]]
WorkersSource = Callable[[], Sequence[WorkerStatus]]
FlowSource = Callable[[], Mapping[tuple[str, str], int]]  # (pool, event) -> tasks
Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Counter:
    """A counter kept in plain ints on the loop, reported by an observable counter."""

    name: str
    keys: tuple[str, ...]  # attribute names, in the order of a Key
    description: str
    counts: dict[Key, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one collection reports: taken at once, on the loop."""

    backlog: Sequence[Backlog] = ()
    workers: Sequence[WorkerStatus] = ()
    counts: Mapping[str, Mapping[Key, int]] = field(default_factory=dict)


class Snapshots:
    """The snapshot of the current collection, for instruments that read it by name.

    `counters` are copied into each snapshot; `flow`, if given, refills `flow_counter`
    (one of them) first. Without a running `loop`, snapshots are taken directly.
    """

    def __init__(
        self,
        *,
        backlog: BacklogSource,
        workers: WorkersSource,
        counters: Sequence[Counter],
        flow: FlowSource | None = None,
        flow_counter: Counter | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._backlog = backlog
        self._workers = workers
        self._counters = tuple(counters)
        self._flow = flow
        self._flow_counter = flow_counter
        self._loop = loop
        # One snapshot serves every instrument of a collection; an instrument that asks
        # twice starts the next collection.
        self._lock = threading.Lock()
        self._snapshot = Snapshot()
        self._readers: set[str] = {counter.name for counter in self._counters}
        self._final: Snapshot | None = None  # set by close()

    def read(self, reader: str, timeout_s: float) -> Snapshot:
        """The snapshot of the current collection; a fresh one when `reader` has read
        the last one already (it is the next collection)."""
        with self._lock:
            if reader not in self._readers:
                self._readers.add(reader)
                return self._snapshot
        # Not under the lock: the loop may be collecting too, and would wait for it.
        snapshot = self._take(timeout_s)
        with self._lock:
            self._snapshot = snapshot
            self._readers = {reader}
        return snapshot

    def close(self) -> None:
        """Serve from now on what the engine and the counts are now (call it on the loop)."""
        snapshot = self._take_here()
        with self._lock:
            self._final = snapshot

    def _take(self, timeout_s: float) -> Snapshot:
        """Read the engine and copy the counts, on the loop that owns them."""
        if self._final is not None:
            return self._final
        loop = self._loop
        # The engine changes only on its loop: with the loop idle, or from it, read here.
        if loop is None or not loop.is_running() or running_loop() is loop:
            return self._take_here()
        future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def take() -> None:
            if not future.set_running_or_notify_cancel():
                return  # the collection gave up waiting
            try:
                future.set_result(self._take_here())
            except BaseException as exc:
                future.set_exception(exc)
                raise

        try:
            loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop closed meanwhile
            return self._take_here()
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerError(
                f"the broker's event loop did not answer in {timeout_s:g} s"
            ) from None

    def _take_here(self) -> Snapshot:
        if self._flow is not None and self._flow_counter is not None:
            try:
                flow = self._flow_counter.counts
                flow.clear()
                for key, value in self._flow().items():
                    flow[key] = value
            except Exception:
                log.exception("could not read the engine's flow-control counts for metrics")
        counts = {counter.name: dict(counter.counts) for counter in self._counters}
        try:
            backlog = list(self._backlog())
            workers = list(self._workers())
        except Exception:
            log.exception("could not read the backlog and workers for metrics")
            return Snapshot(counts=counts)
        return Snapshot(backlog=backlog, workers=workers, counts=counts)


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
