"""The Client's SubmitStream: one call that many submits and waits share, and how a submit the
broker refused for overload is sent again."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import grpc
import grpc.aio

from worker_sdk import _convert
from worker_sdk._errors import (
    RESOURCE_EXHAUSTED,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TaskbrokerError,
    Unauthenticated,
    Unavailable,
    error_for_code,
)
from worker_sdk._messages import SubmitAcked, TasksCompleted
from worker_sdk._pb import tasks_pb2 as _tasks
from worker_sdk._types import TaskInfo

_log = logging.getLogger("taskbroker.client")

# One stream message stays well under gRPC's default 4 MiB receive limit on the broker.
_MAX_MESSAGE_TASK_BYTES: Final = 1 << 20
_MAX_WATCH_IDS: Final = 10_000  # watch_task_ids a message may hold (the broker's MAX_TASK_IDS)
# A failed all-or-nothing batch with one of these codes is most likely the fault of one of
# its tasks, and none of them was accepted: each is sent again alone to find the culprit.
# Errors one task of a coalesced batch can cause (so its batch is resent task by task):
# INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS (an idempotency key reused for another task).
_PER_TASK_ERROR_CODES: Final = frozenset({3, 5, 6})
# The first resend of a refused submit waits up to this long (full jitter), doubling after.
_SUBMIT_BACKOFF_INITIAL_S: Final = 0.1


class SubmitBackoff:
    """When to resend a submit the broker refused with RESOURCE_EXHAUSTED, and the sleep.

    Only a refusal with a retry hint is resent: the broker sends one when it is overloaded
    (a full queue, a rate limit), and none for a payload over its size limit, which no wait
    cures. Resend n waits max(hint, uniform(0, min(cap, initial * 2**(n-1)))), never more
    than `max_backoff_s`.
    """

    def __init__(self, max_retries: int, max_backoff_s: float) -> None:
        self.max_retries = max_retries
        self.max_backoff_s = max_backoff_s
        # Replaceable by tests, so they neither sleep for real nor depend on chance.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.random: Callable[[], float] = random.random

    def delay(self, retries: int, error: ResourceExhausted) -> float | None:
        """How long to wait before resend number `retries + 1`; None = give up."""
        if error.retry_after is None or retries >= self.max_retries:
            return None
        ceiling = min(self.max_backoff_s, _SUBMIT_BACKOFF_INITIAL_S * 2.0 ** min(retries, 30))
        return min(self.max_backoff_s, max(error.retry_after, self.random() * ceiling))

    @staticmethod
    def gave_up(error: ResourceExhausted, retries: int) -> ResourceExhausted:
        """The error to raise once resending stops; the broker's own after no resend."""
        if retries == 0:
            return error
        plural = "y" if retries == 1 else "ies"
        return ResourceExhausted(
            f"{error} (gave up after {retries} retr{plural})", error.retry_after
        )


@dataclass(slots=True)
class _PendingSubmit:
    spec: _tasks.TaskSpec  # converted by the caller, so a bad argument fails only its submit
    size: int  # bytes on the wire
    future: asyncio.Future[str]
    solo: bool = False  # send in a message of its own
    refusals: int = 0  # times its batch was refused for overload and resent
    # Its completion notice, asked for in the same message (only with others that ask).
    finished: asyncio.Future[TaskInfo] | None = None


def _refusal(error: TaskbrokerError) -> type[TaskbrokerError] | None:
    """The class of an error that ends a stream for good: the caller may not."""
    return type(error) if isinstance(error, Unauthenticated | PermissionDenied) else None


class StreamLost(Unavailable):
    """A wait's stream was lost in a way a new stream may cure: the broker went away or
    restarted (UNAVAILABLE), or ended the stream. The client watches the task again."""


def retrieve_exceptions(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Mark failed futures as seen, so asyncio does not log them as never retrieved."""
    for future in futures:
        if future.done() and not future.cancelled():
            future.exception()


class SubmitStream:
    """One SubmitStream call: its writer and reader tasks and everything waiting on them.

    `submit()` and `watch()` only queue; the writer sends everything queued while its previous
    message was being written as one message, so concurrent callers share stream messages.
    """

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[_tasks.SubmitStreamRequest, _tasks.SubmitStreamResponse],
        address: str,
        batch_size: int,
        backoff: SubmitBackoff,
    ) -> None:
        self._call = call
        self._address = address
        self._batch_size = batch_size
        self._backoff = backoff
        self._loop = asyncio.get_running_loop()
        self._submits: deque[_PendingSubmit] = deque()
        # Batches refused for overload: waiting out their backoff, then due to be resent whole.
        self._backing_off: dict[asyncio.Task[None], list[_PendingSubmit]] = {}
        self._resends: deque[list[_PendingSubmit]] = deque()
        self._unacked: dict[int, list[_PendingSubmit]] = {}
        self._watch_ids: list[str] = []
        self._watchers: dict[str, list[asyncio.Future[TaskInfo]]] = {}
        self._next_batch_id = 1
        self._wake = asyncio.Event()
        self.broken = False
        self._writer = asyncio.create_task(self._write_loop(), name="taskbroker-submit-writer")
        self._reader = asyncio.create_task(self._read_loop(), name="taskbroker-submit-reader")

    @property
    def finished(self) -> bool:
        return self._writer.done() and self._reader.done()

    def submit(
        self, spec: _tasks.TaskSpec, finished: asyncio.Future[TaskInfo] | None = None
    ) -> asyncio.Future[str]:
        """The task's id once the broker accepted it. With `finished`, the message that
        submits it asks for its completion notice too, which resolves `finished`: waiting
        for it then costs no message of its own."""
        future: asyncio.Future[str] = self._loop.create_future()
        self._submits.append(
            _PendingSubmit(spec, _convert.spec_size(spec), future, finished=finished)
        )
        self._wake.set()
        return future

    def watch(self, task_id: str) -> asyncio.Future[TaskInfo]:
        future: asyncio.Future[TaskInfo] = self._loop.create_future()
        waiters = self._watchers.get(task_id)
        if waiters is None:
            self._watchers[task_id] = [future]
            self._watch_ids.append(task_id)
            self._wake.set()
        else:
            waiters.append(future)
        return future

    def unwatch(self, task_id: str, future: asyncio.Future[TaskInfo]) -> None:
        """Forget a waiter that gave up; a later completion notice is then ignored."""
        waiters = self._watchers.get(task_id)
        if waiters is None:
            return
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            del self._watchers[task_id]

    async def close(self) -> None:
        self._break("the client was closed")
        for task in (self._writer, self._reader):
            task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)
        await self._stop_backoffs()

    async def _stop_backoffs(self) -> None:
        waits = list(self._backing_off)
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    # -- writer ------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        try:
            while not self.broken:
                await self._wake.wait()
                self._wake.clear()
                while (self._resends or self._submits or self._watch_ids) and not self.broken:
                    await self._write_one()
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            error = _convert.rpc_error(exc, self._address)
            self._break(str(error), lost=isinstance(error, Unavailable), refused=_refusal(error))
        except Exception as exc:  # e.g. InvalidStateError: the call ended under us
            self._break(f"{type(exc).__name__}: {exc}", lost=True)

    def _take_batch(self) -> list[_PendingSubmit]:
        batch: list[_PendingSubmit] = []
        size = 0
        queue = self._submits
        while queue and len(batch) < self._batch_size:
            pending = queue[0]
            if pending.future.done():  # its submit() was cancelled before it was sent
                queue.popleft()
                continue
            if batch and (
                pending.solo
                or size + pending.size > _MAX_MESSAGE_TASK_BYTES
                or (pending.finished is None) != (batch[0].finished is None)  # watch or not
            ):
                break
            queue.popleft()
            batch.append(pending)
            size += pending.size
            if pending.solo:
                break
        return batch

    async def _write_one(self) -> None:
        batch: list[_PendingSubmit] = []
        while self._resends and not batch:
            # A refused batch goes again as it was, minus the submits whose callers left.
            batch = [p for p in self._resends.popleft() if not p.future.done()]
        if not batch:
            batch = self._take_batch()
        watch_ids = [i for i in self._watch_ids if i in self._watchers]
        # The rest go in the next message, which the write loop sends right after.
        self._watch_ids = watch_ids[_MAX_WATCH_IDS:]
        del watch_ids[_MAX_WATCH_IDS:]
        if not batch and not watch_ids:
            return
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        if batch:
            self._unacked[batch_id] = batch
        message = _convert.submit_stream_request(
            batch_id,
            [pending.spec for pending in batch],
            watch_ids,
            watch=bool(batch) and batch[0].finished is not None,
        )
        await self._call.write(message)

    # -- reader ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "the broker ended the stream"
        lost = True
        refused = None
        try:
            async for response in self._call:
                event = _convert.submit_stream_event(response)
                if isinstance(event, SubmitAcked):
                    self._on_ack(event)
                else:
                    self._on_completions(event)
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            error = _convert.rpc_error(exc, self._address)
            reason = str(error)
            lost = isinstance(error, Unavailable)
            refused = _refusal(error)
        except TaskbrokerError as exc:  # a message we cannot make sense of
            reason = str(exc)
            lost = False
        self._break(reason, lost=lost, refused=refused)

    def _on_ack(self, ack: SubmitAcked) -> None:
        batch = self._unacked.pop(ack.batch_id, None)
        if batch is None:
            if ack.error_code:
                # A rejected message we cannot match (e.g. one the broker could not parse):
                # its submits would wait forever, so give up on the stream instead.
                self._break(f"broker rejected message {ack.batch_id}: {ack.error_message}")
            return
        if ack.error_code == RESOURCE_EXHAUSTED and self._resend_later(batch, ack):
            return
        if ack.error_code:
            if len(batch) > 1 and ack.error_code in _PER_TASK_ERROR_CODES:
                for pending in reversed(batch):
                    pending.solo = True
                    self._submits.appendleft(pending)
                self._wake.set()
                return
            error = error_for_code(ack.error_code, ack.error_message, ack.retry_after)
            if isinstance(error, ResourceExhausted):
                error = self._backoff.gave_up(error, max((p.refusals for p in batch), default=0))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        if len(ack.task_ids) != len(batch):
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(
                        TaskbrokerError(
                            f"broker acked {len(ack.task_ids)} ids for {len(batch)} tasks"
                        )
                    )
            return
        for pending, task_id in zip(batch, ack.task_ids, strict=True):
            if pending.finished is not None and not pending.finished.done():
                # Before any later message: the completion notice can only come after this.
                self._watchers.setdefault(task_id, []).append(pending.finished)
            if not pending.future.done():
                pending.future.set_result(task_id)

    def _resend_later(self, batch: list[_PendingSubmit], ack: SubmitAcked) -> bool:
        """Resend a batch the broker refused for overload after its backoff, keeping it
        whole so its acks map to its callers in order; False if it is not to be resent."""
        live = [p for p in batch if not p.future.done()]
        if not live:
            return True
        refusals = max(p.refusals for p in live)
        delay = self._backoff.delay(refusals, ResourceExhausted(ack.error_message, ack.retry_after))
        if delay is None:
            return False
        for pending in live:
            pending.refusals = refusals + 1
        _log.debug("broker refused %d submits for now; resending in %.3fs", len(live), delay)
        wait = asyncio.create_task(self._wait(delay), name="taskbroker-submit-backoff")
        self._backing_off[wait] = live
        wait.add_done_callback(self._backoff_done)
        return True

    async def _wait(self, delay: float) -> None:
        await self._backoff.sleep(delay)

    def _backoff_done(self, wait: asyncio.Task[None]) -> None:
        batch = self._backing_off.pop(wait, None)
        if batch is None or self.broken or wait.cancelled():
            return
        if (exc := wait.exception()) is not None:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self._resends.append(batch)
        self._wake.set()

    def _on_completions(self, completions: TasksCompleted) -> None:
        for task in completions.tasks:
            if not task.state.terminal:
                continue  # not what a completion notice should carry; keep waiting
            for future in self._watchers.pop(task.id, ()):
                if not future.done():
                    future.set_result(task)
        for task_id in completions.not_found:
            for future in self._watchers.pop(task_id, ()):
                if not future.done():
                    future.set_exception(NotFound(f"task {task_id} not found"))

    # -- breakage ----------------------------------------------------------------------

    def _break(
        self, reason: str, *, lost: bool = False, refused: type[TaskbrokerError] | None = None
    ) -> None:
        """Fail everything pending with Unavailable; the client opens a new stream next time.

        With `refused` (the broker refused the caller's credentials or rights), what is
        pending fails with that error instead: trying again would not help.

        With `lost` (the broker went away or ended the stream), waits fail with StreamLost
        instead, which the client answers by watching the same tasks on a new stream.
        Submits fail either way: one that was not acknowledged is never sent again.
        """
        if self.broken:
            return
        self.broken = True
        self._wake.set()
        self._call.cancel()
        message = f"submit stream to broker at {self._address} broke: {reason}"
        pending_submits = [
            *self._submits,
            *(p for b in self._unacked.values() for p in b),
            *(p for b in self._resends for p in b),
            *(p for b in self._backing_off.values() for p in b),
        ]
        self._submits.clear()
        self._unacked.clear()
        self._resends.clear()
        for wait in self._backing_off:
            wait.cancel()  # the done callback finds the stream broken and leaves them be
        failure = refused or Unavailable
        if refused is not None:
            lost = False
            message = reason
        for pending in pending_submits:
            if not pending.future.done():
                pending.future.set_exception(failure(message))
            if pending.finished is not None:
                pending.finished.cancel()  # its submit failed: nobody waits for it
        watchers = self._watchers
        self._watchers = {}
        self._watch_ids = []
        for futures in watchers.values():
            for future in futures:
                if not future.done():
                    future.set_exception(StreamLost(message) if lost else failure(message))
        failed_waits = 0 if lost else len(watchers)
        if pending_submits or failed_waits:
            _log.warning(
                "%s; failed %d submits and %d waits", message, len(pending_submits), failed_waits
            )
        if lost and watchers:
            _log.info("%s; watching %d tasks again", message, len(watchers))
