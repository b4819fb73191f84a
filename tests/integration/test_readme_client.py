"""The README's client SDK examples, run as written against a real broker."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import Broker, load_config
from tests.support.workers import start_worker
from worker_sdk import SyncClient, Worker

README = Path(__file__).resolve().parents[2] / "README.md"
README_ADDRESS = '"127.0.0.1:50051"'


def _python_block(first_line: str) -> str:
    """The README's one ```python block that holds `first_line`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    found = [b for b in blocks if first_line in b.splitlines()]
    assert len(found) == 1, first_line
    return str(found[0])


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A broker as `taskbroker serve` starts it (its pools: just "default"), on a free port."""
    config = load_config(None, {}, port=0, db_path=str(tmp_path / "broker.db"))
    async with Broker(config) as running:
        yield running


@pytest.fixture
async def readme_worker(broker: Broker, tmp_path: Path) -> AsyncIterator[None]:
    """The Quick start's `myworker.py`, running."""
    path = tmp_path / "myworker.py"
    path.write_text(_python_block('worker = Worker(pool="default", capacity=8)'))
    spec = importlib.util.spec_from_file_location("readme_myworker", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    worker = module.worker
    assert isinstance(worker, Worker)
    run = await start_worker(worker, broker.address)
    yield
    await worker.shutdown(grace=1)
    await run


async def _run_script(source: str, address: str, tmp_path: Path) -> tuple[int, str, str]:
    assert README_ADDRESS in source
    script = tmp_path / "client_example.py"
    script.write_text(source.replace(README_ADDRESS, repr(address)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBROKER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await proc.communicate()
    return await proc.wait(), stdout.decode(), stderr.decode()


async def test_readme_async_client_runs_as_a_script(
    broker: Broker, readme_worker: None, tmp_path: Path
) -> None:
    source = _python_block("from worker_sdk import Client")
    code, stdout, stderr = await _run_script(source, broker.address, tmp_path)
    assert code == 0, stderr
    # What the comments in the example say it prints.
    assert stdout == "TaskState.SUCCEEDED {'sum': 5}\nb'{\"sum\":5}'\n"


async def test_sync_client_in_a_running_event_loop_says_to_use_client(broker: Broker) -> None:
    with pytest.raises(RuntimeError) as raised, SyncClient(broker.address) as client:
        client.submit("echo", b"x")
    message = str(raised.value)
    assert "SyncClient cannot be used inside a running event loop" in message
    assert "worker_sdk.Client" in message
    assert raised.value.__context__ is None  # the only error, not one raised while closing


async def test_readme_sync_client_prints_what_its_comments_say(
    broker: Broker, readme_worker: None, tmp_path: Path
) -> None:
    source = _python_block("from worker_sdk import SyncClient")
    code, stdout, stderr = await _run_script(source, broker.address, tmp_path)
    assert code == 0, stderr
    expected = [
        line.partition("  # ")[2]
        for line in source.splitlines()
        if line.lstrip().startswith("print(")
    ]
    assert stdout.splitlines() == expected
