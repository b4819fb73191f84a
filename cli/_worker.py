"""`taskbroker worker run MODULE:OBJECT`: import a Worker and run it until a signal."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import traceback
from typing import NoReturn

from cli._common import connection_settings, freeze_imports, run_async
from cli._errors import EXIT_INTERRUPTED, EXIT_USAGE, CliError
from worker_sdk import Worker

logger = logging.getLogger("taskbroker.cli")

_STOPPED = "stopped by a second signal; in-flight tasks will be retried"


def load_worker(target: str) -> Worker:
    """Import MODULE and return its OBJECT, which must be a worker_sdk.Worker.

    The current directory goes first on sys.path, as with ``python -m``, so a
    ``myworker.py`` next to the user is found.
    """
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise CliError(f"expected MODULE:OBJECT (e.g. myworker:worker), got {target!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CliError(
                f"cannot import {module_name!r}: no module named {exc.name!r} "
                f"(looked in {cwd} and on sys.path)"
            ) from None
        raise CliError(f"importing {module_name!r} failed: {_where(exc)}") from None
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {_where(exc)}") from None
    obj: object = module
    for name in attr_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not isinstance(obj, Worker):
        raise CliError(f"{target} must be a worker_sdk.Worker, not {type(obj).__name__}")
    if not obj.task_types:
        raise CliError(f"{target} has no handlers: register one with @worker.task(...)")
    return obj


def configure_worker(
    worker: Worker,
    *,
    pool: str | None,
    capacity: int | None,
    labels: dict[str, str] | None,
    worker_id: str | None,
) -> None:
    """Apply the command line's overrides to the worker (None keeps its own setting), and
    the connection's TLS and token if the command line gives them."""
    tls, token = connection_settings()
    try:
        worker.configure(
            pool=pool, capacity=capacity, labels=labels, worker_id=worker_id, tls=tls, token=token
        )
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _where(exc: BaseException) -> str:
    """The exception in one line, with the file and line it was raised at."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"SyntaxError: {exc.msg} ({exc.filename}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_worker(worker: Worker, broker: str | None) -> None:
    """Run the worker until it stops; the first SIGTERM/SIGINT shuts it down gracefully,
    a second one ends the process at once (see `_stop_now`)."""
    freeze_imports()  # the worker's module and its handlers' imports are in by now
    run_async(_run(worker, broker))


def _stop_now(worker: Worker, name: str) -> NoReturn:
    """End the process now, whatever its handlers do.

    A sync handler's thread cannot be interrupted, and the interpreter would wait for it on
    the way out, so this does not unwind: it kills the worker's handler processes (if it has
    any), says why on stderr and leaves with os._exit. The broker requeues what it held.
    """
    logger.warning("%s received again: stopping now", name)
    worker.kill_handler_processes()
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.write(f"error: {_STOPPED}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


async def _run(worker: Worker, broker: str | None) -> None:
    loop = asyncio.get_running_loop()
    shutdowns: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not shutdowns:
            logger.info("%s received: finishing in-flight tasks, then exiting", name)
            shutdowns.append(loop.create_task(worker.shutdown()))
        else:
            _stop_now(worker, name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await worker.run(broker)
        if shutdowns:
            await shutdowns[0]
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
