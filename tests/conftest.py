"""Shared fixtures: a real broker on an ephemeral loopback port with a SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from broker import Broker
from tests.support.config import make_config
from tests.support.postgres import stop_server


@pytest.fixture(autouse=True)
def _no_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as piped output has them: COLUMNS (which pytest-xdist's workers have) would
    narrow them."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with Broker(make_config(tmp_path)) as running:
        yield running


@pytest.fixture
async def channel(broker: Broker) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(broker.address) as chan:
        yield chan


@pytest.fixture(scope="session", autouse=True)
def _postgres_server() -> Iterator[None]:
    """Stops the private PostgreSQL server (tests.support.postgres) at the end of the
    session, if a test started one."""
    yield
    stop_server()
