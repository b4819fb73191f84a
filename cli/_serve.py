"""`taskbroker serve`: run the broker in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from cli._errors import CliError
from cli._logs import to_stderr

if TYPE_CHECKING:
    from broker import BrokerConfig

logger = logging.getLogger("taskbroker.cli")


def serve(
    config_path: Path | None,
    *,
    host: str | None,
    port: int | None,
    db_path: str | None,
    log_level: str = "info",
) -> None:
    """Load the configuration (file, then TASKBROKER_* env, then flags) and run the broker."""
    # Imported here so that client commands never load the broker.
    from broker import load_config
    from broker.errors import BrokerError

    try:
        config = load_config(config_path, os.environ, host=host, port=port, db_path=db_path)
    except BrokerError as exc:
        raise CliError(f"configuration: {exc}") from None
    to_stderr(log_level)
    try:
        asyncio.run(_run(config))
    except BrokerError as exc:
        raise CliError(str(exc)) from None
    except (OSError, sqlite3.Error) as exc:
        raise CliError(f"cannot start the broker (db {config.db_path}): {exc}") from None


async def _run(config: BrokerConfig) -> None:
    from broker import Broker

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop(signum: int) -> None:
        if not stop.is_set():
            logger.info("%s received: shutting down", signal.Signals(signum).name)
        stop.set()

    broker = Broker(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    try:
        await broker.start()
        print(f"taskbroker listening on {broker.address} (db {config.db_path})", flush=True)
        # Until a signal, or until the broker stops by itself.
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(broker.wait_stopped())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    finally:
        try:
            await broker.shutdown()  # idempotent; also releases a half-started broker
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
