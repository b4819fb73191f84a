"""Sync handlers in child processes (`Worker(sync_handlers="process")`): one child per slot,
killed and replaced when the broker cancels its task, so an execution timeout is a hard
limit even for a handler that never looks at `ctx.cancelled`."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from worker_sdk._context import TaskContext
from worker_sdk._payload import encode_result
from worker_sdk._session import _error_info
from worker_sdk._types import TaskErrorInfo

_log = logging.getLogger("taskbroker.worker")

# spawn: a fresh interpreter, never a fork of a process that runs gRPC threads.
_CONTEXT = multiprocessing.get_context("spawn")

# What a child answers a task with.
# The encoded result and its media type, or the error.
Outcome = tuple[tuple[bytes, str] | None, TaskErrorInfo | None]


def pickled_handlers(handlers: Mapping[str, Callable[[TaskContext], Any]]) -> bytes:
    """The handlers as a child gets them; a clear TypeError for one that does not pickle."""
    for task_type, function in handlers.items():
        try:
            pickle.dumps(function)
        except Exception as exc:
            raise TypeError(
                f"the handler of task type {task_type!r} ({function!r}) cannot run in a child "
                f"process: it must be a module-level function that pickle can find by name "
                f"(not a lambda, closure or method of a local object): {exc}"
            ) from None
    return pickle.dumps(dict(handlers))


def _child_main(conn: Connection, handlers_blob: bytes) -> None:
    """A child's life: load the handlers, say ready, then run one task at a time."""
    # Ctrl-C reaches the whole process group; the parent decides what a signal means.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handlers: dict[str, Callable[[TaskContext], Any]] = pickle.loads(handlers_blob)
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            task_type, fields = conn.recv()
        except EOFError:
            return  # the parent is gone
        try:
            value = handlers[task_type](TaskContext(**fields))
            answer: Outcome = (encode_result(value), None)
        except Exception as exc:
            answer = (None, _error_info(exc))
        conn.send(answer)


class _Child:
    """One handler process and our end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def call(self, task_type: str, fields: dict[str, Any]) -> Outcome:
        """Run one task in the child and wait for its answer (in a thread)."""
        self.conn.send((task_type, fields))
        answer: Outcome = self.conn.recv()
        return answer

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()

    def reap(self) -> None:
        """Wait for the (killed) child to be gone (in a thread). Our end of the pipe closes
        when the last reference goes: the thread that waited on it may still hold one."""
        self.process.join()


def _spawn(handlers_blob: bytes) -> _Child:
    """Start a child and wait until it has loaded the handlers (in a thread)."""
    ours, theirs = _CONTEXT.Pipe()
    process = _CONTEXT.Process(
        target=_child_main, args=(theirs, handlers_blob), name="taskbroker-handler", daemon=True
    )
    process.start()
    theirs.close()
    try:
        status, detail = ours.recv()
    except EOFError:
        process.join()
        ours.close()
        raise RuntimeError(
            f"a handler process exited (code {process.exitcode}) before it was ready"
        ) from None
    if status != "ready":
        process.join()
        ours.close()
        raise RuntimeError(f"a handler process could not load the handlers: {detail}")
    return _Child(process, ours)


class HandlerDied(Exception):
    """The child running a handler exited without answering (killed, crashed)."""


class ProcessSlots:
    """`capacity` child processes, each running one sync handler at a time.

    A task whose asyncio task is cancelled (the broker cancelled it, or the worker gives
    up on it) has its child killed; the child is replaced in the background, and
    `on_available` is told how many slots are usable meanwhile and again once the new
    child is ready, so the broker offers the slot again only then.
    """

    def __init__(self, handlers_blob: bytes, capacity: int) -> None:
        self._blob = handlers_blob
        self._capacity = capacity
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._replacing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.on_available: Callable[[int], None] = lambda _: None

    @property
    def available(self) -> int:
        """Slots with a live child (busy or idle), i.e. capacity minus those being replaced."""
        return self._capacity - len(self._replacing)

    @property
    def pids(self) -> list[int]:
        return [pid for child in self._children if (pid := child.pid) is not None]

    async def start(self) -> None:
        spawned = await asyncio.gather(
            *(asyncio.to_thread(_spawn, self._blob) for _ in range(self._capacity)),
            return_exceptions=True,
        )
        for child in spawned:
            if isinstance(child, _Child):
                self._children.add(child)
                self._idle.put_nowait(child)
        errors = [error for error in spawned if isinstance(error, BaseException)]
        if errors:
            await self.close()
            raise errors[0]

    async def run(
        self, executor: Executor, task_type: str, context: TaskContext, started: Callable[[], None]
    ) -> Outcome:
        """Run the handler of `task_type` in an idle child; `started` is called once it has one."""
        child = await self._idle.get()
        started()
        fields = _fields(context)
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(executor, child.call, task_type, fields)
        except asyncio.CancelledError:
            _log.warning(
                "task %s cancelled: killing its handler process %s", context.task_id, child.pid
            )
            self._replace(child)
            raise
        except (EOFError, OSError) as exc:
            self._replace(child)
            raise HandlerDied(
                f"the handler process {child.pid} died running task {context.task_id} "
                f"(exit code {child.process.exitcode})"
            ) from exc
        self._idle.put_nowait(child)
        return answer

    def _replace(self, child: _Child) -> None:
        child.kill()
        self._children.discard(child)
        if self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._respawn(child))
        self._replacing.add(task)
        self.on_available(self.available)

    async def _respawn(self, old: _Child) -> None:
        try:
            await asyncio.to_thread(old.reap)
            while not self._closed:
                try:
                    child = await asyncio.to_thread(_spawn, self._blob)
                except RuntimeError as exc:
                    _log.error("could not replace a handler process: %s; trying again", exc)
                    await asyncio.sleep(1.0)
                    continue
                if self._closed:
                    child.kill()
                    await asyncio.to_thread(child.reap)
                    return
                self._children.add(child)
                self._idle.put_nowait(child)
                return
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._replacing.discard(current)
            if not self._closed:
                self.on_available(self.available)

    def kill_all(self) -> None:
        """SIGKILL every child now (no waiting): for a process about to exit at once."""
        self._closed = True
        for child in list(self._children):
            child.kill()

    async def close(self) -> None:
        """Kill every child and wait until they are gone."""
        self.kill_all()
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        children, self._children = list(self._children), set()
        for child in children:
            await asyncio.to_thread(child.reap)


def _fields(context: TaskContext) -> dict[str, Any]:
    deadline: datetime | None = context.deadline
    return {
        "task_id": context.task_id,
        "task_type": context.task_type,
        "attempt": context.attempt,
        "priority": context.priority,
        "payload": context.payload,
        "worker_id": context.worker_id,
        "deadline": deadline,
    }
