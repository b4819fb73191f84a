"""`taskbroker serve`: run the broker in the foreground until SIGTERM or SIGINT; SIGHUP
reloads its config file."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli._common import freeze_imports, run_async
from cli._errors import CliError

if TYPE_CHECKING:
    from broker import Broker, BrokerConfig

logger = logging.getLogger("taskbroker.cli")


def serve(
    config_path: Path | None,
    *,
    host: str | None,
    port: int | None,
    db_path: str | None,
    log_format: str | None = None,
    log_level: str | None = None,
) -> None:
    """Load the configuration (file, then TASKBROKER_* env, then flags; a flag left None
    keeps what came before) and run the broker."""
    # Imported here so that client commands never load the broker.
    from broker import load_config
    from broker.errors import BrokerError
    from broker.observability.logs import configure as configure_logging
    from broker.store_url import redacted

    flags = {
        "host": host,
        "port": port,
        "db_path": db_path,
        "log_format": log_format,
        "log_level": log_level,
    }
    try:
        config = load_config(config_path, os.environ, **flags)
    except BrokerError as exc:
        raise CliError(f"configuration: {exc}") from None
    configure_logging(config.log_format, config.log_level)
    freeze_imports()
    try:
        run_async(_run(config, config_path, flags))
    except BrokerError as exc:
        raise CliError(str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise CliError(f"cannot open the database {redacted(config.db_path)}: {exc}") from None


async def _run(
    config: BrokerConfig, config_path: Path | None = None, flags: dict[str, Any] | None = None
) -> None:
    from broker import Broker
    from broker.errors import BrokerError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_requested = asyncio.Event()

    def request_stop(signum: int) -> None:
        if not stop.is_set():
            logger.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    broker = Broker(config, config_path=config_path, config_overrides=flags)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    # Set before the broker starts, so that an early SIGHUP does not kill the process; the
    # reload then waits until the broker runs.
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    try:
        await broker.start()
        from broker.store_url import redacted

        db = redacted(config.db_path)
        print(f"taskbroker listening on {broker.address} (db {db})", flush=True)
        # Until a signal, or until the broker stops by itself (or the reloader fails).
        reloader = asyncio.create_task(_reload_on_sighup(broker, reload_requested))
        waiters = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(broker.wait_stopped()),
            reloader,
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if reloader.done() and not reloader.cancelled():
            reloader.result()  # a bug in reloading surfaces rather than hangs
        if broker.failure is not None:
            raise BrokerError(f"the broker stopped after a failure: {broker.failure}")
    finally:
        try:
            await broker.shutdown()  # idempotent; also releases a half-started broker
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)


async def _reload_on_sighup(broker: Broker, requested: asyncio.Event) -> None:
    """Reload the config file on each SIGHUP, one reload at a time (signals that arrive
    during one make one more). A config that does not load is logged, and the broker
    keeps its settings."""
    from broker.errors import BrokerError

    while True:
        await requested.wait()
        requested.clear()
        logger.info("SIGHUP received: reloading the config file")
        try:
            changes = await broker.reload_config(who="sighup")
        except (BrokerError, OSError) as exc:
            logger.error("SIGHUP: %s (the settings stay as they were)", exc)
            continue
        changed = sorted({change.pool for change in changes})
        logger.info(
            "SIGHUP: config reloaded, %s",
            f"pools changed: {', '.join(changed)}" if changed else "no changes",
        )
