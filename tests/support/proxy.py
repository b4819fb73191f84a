"""A TCP proxy on loopback whose connections a test can cut, as a network fault would."""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    """Forwards each connection to `target`; `cut()` resets every open one at once, and
    `stall()` makes the open ones drop what either side sends (kept in `dropped`), as a
    connection that dies under a write would."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._stalled: set[asyncio.StreamWriter] = set()  # not written to any more
        self.dropped = bytearray()
        self.connections = 0
        self.address = ""

    @classmethod
    async def start(cls, target: str) -> CuttableProxy:
        proxy = cls(target)
        proxy._server = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        port = proxy._server.sockets[0].getsockname()[1]
        proxy.address = f"127.0.0.1:{port}"
        return proxy

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers.update((writer, upstream_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, writer)),
        ]
        self._pumps.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if writer in self._stalled:
                    self.dropped += data
                    continue
                writer.write(data)
                await writer.drain()
        writer.close()

    def stall(self) -> None:
        """From now on, drop what either side of the open connections sends."""
        self._stalled.update(self._writers)

    def cut(self) -> None:
        """Reset every open connection (both sides); new ones are forwarded as before."""
        self._stalled.clear()
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.transport.abort()
        for pump in list(self._pumps):
            pump.cancel()

    def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
