"""`taskbroker submit --no-retry`: a submit refused for overload fails at once."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from broker import Broker, PoolConfig
from tests.support.cli import invoke
from tests.support.config import make_config
from worker_sdk import Client


async def test_no_retry_fails_at_once_on_a_full_queue(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config = dataclasses.replace(config, pools=(PoolConfig(name="default", max_queue=1),))
    async with Broker(config) as broker, Client(broker.address) as client:
        await client.submit("nobody-runs-this")  # the queue is full now
        result = await asyncio.to_thread(
            invoke, "submit", "t", "--no-retry", "--broker", broker.address
        )
        assert result.exit_code == 1, result.output
        assert "queue" in result.stderr
        (stats,) = [p for p in (await client.stats()).pools if p.pool == "default"]
    assert stats.rejected == 1  # sent once, not again after the hint
