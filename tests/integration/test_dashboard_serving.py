"""The broker serves its dashboard in its own event loop when dashboard_port is set, and
stops it with itself."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from broker import Broker
from broker.http import hash_token
from tests.support.config import make_config
from tests.support.dashboard import free_port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _tokens(tmp_path: Path) -> str:
    path = tmp_path / "tokens"
    path.write_text(f"{hash_token('t')} admin ops\n")
    return str(path)


async def test_the_dashboard_is_served_while_the_broker_runs_and_stops_with_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = make_config(tmp_path, dashboard_port=port, dashboard_tokens=_tokens(tmp_path))
    broker = Broker(config)
    await broker.start()
    try:
        assert broker.dashboard_port == port
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/login")
        assert status == 200
        assert "Sign in" in body
    finally:
        await broker.shutdown()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=2),
    ):
        pass


async def test_a_taken_dashboard_port_fails_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = make_config(tmp_path, dashboard_port=port, dashboard_tokens=_tokens(tmp_path))
        with pytest.raises(OSError, match="in use"):
            await Broker(config).start()


async def test_without_dashboard_port_there_is_no_dashboard(broker: Broker) -> None:
    assert broker.dashboard_port == 0
