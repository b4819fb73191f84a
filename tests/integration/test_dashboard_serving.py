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


def _sign_in(port: int, token: str) -> int:
    """The status of signing in to the dashboard with `token` (after the redirect)."""
    import http.cookiejar
    import re
    import urllib.parse

    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(f"http://127.0.0.1:{port}/login", timeout=5) as response:
        form = response.read().decode()
    match = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert match, form
    body = urllib.parse.urlencode({"csrf_token": match.group(1), "token": token}).encode()
    try:
        with opener.open(f"http://127.0.0.1:{port}/login", data=body, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_with_token_auth_the_dashboard_signs_in_with_the_brokers_api_tokens(
    tmp_path: Path,
) -> None:
    from broker.auth import digest
    from worker_sdk import Client

    admin_secret = "tbk_dashboard-admin"
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "ops"\nroles = ["admin"]\nsha256 = "{digest(admin_secret)}"\n'
    )
    port = free_port()
    config = make_config(tmp_path, dashboard_port=port, auth="token", tokens_file=str(tokens))
    async with Broker(config) as broker, Client(broker.address, token=admin_secret) as admin:
        _, reader = await admin.create_token("viewer", ["read"])
        _, scoped = await admin.create_token("tenant", ["read"], pools=["default"])
        _, submitter = await admin.create_token("ci", ["submit"])
        assert await asyncio.to_thread(_sign_in, port, admin_secret) == 200
        assert await asyncio.to_thread(_sign_in, port, reader) == 200
        # The dashboard shows every pool: a token limited to some, or without a role that
        # sees, does not sign in; nor does a revoked one.
        assert await asyncio.to_thread(_sign_in, port, scoped) == 401
        assert await asyncio.to_thread(_sign_in, port, submitter) == 401
        await admin.revoke_token("viewer")
        assert await asyncio.to_thread(_sign_in, port, reader) == 401
