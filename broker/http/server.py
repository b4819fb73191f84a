"""Serving the dashboard inside the broker's event loop: uvicorn on a socket the broker
binds at start, run as one of the broker's background jobs and stopped gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger("taskbroker.dashboard")

SHUTDOWN_GRACE_S = 2  # open requests get this long to finish at shutdown


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling (the broker's process has it) and without
    its ten wake-ups a second: it wakes once a second, or at once when asked to stop."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stop_requested = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864_000  # on_tick's counter is in tenths of a second
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), 1.0)
            if self.stop_requested.is_set():
                self.should_exit = True


class DashboardServer:
    """The dashboard's HTTP server: `bind` (at start, so that a taken port fails early),
    then `run` until `stop`."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._done = asyncio.Event()

    def bind(self) -> int:
        """Bind the listening socket; returns its port."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._requested_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        return int(sock.getsockname()[1])

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1]) if self._socket is not None else 0

    async def run(self) -> None:
        """Serve until `stop`."""
        if self._socket is None:
            raise RuntimeError("bind the dashboard's socket first")
        config = uvicorn.Config(
            self._app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        self._server = _EmbeddedServer(config)
        log.info("dashboard on http://%s:%d/", self._host, self.port)
        try:
            await self._server.serve(sockets=[self._socket])
        except SystemExit:  # uvicorn's answer to a server it could not start
            raise RuntimeError("the dashboard's HTTP server did not start") from None
        finally:
            self._done.set()
        if not self._server.stop_requested.is_set():
            raise RuntimeError("the dashboard's HTTP server stopped by itself")

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (SHUTDOWN_GRACE_S), close the socket."""
        if self._server is not None:
            self._server.stop_requested.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), SHUTDOWN_GRACE_S + 1.0)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
