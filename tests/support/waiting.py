"""Waiting for something observable to happen, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio

import pytest


async def until_logged(caplog: pytest.LogCaptureFixture, text: str, *, times: int = 1) -> None:
    """Return once `text` appears in `times` captured log records; TimeoutError after
    five seconds. The caller sets the logger's level (`caplog.at_level`)."""
    async with asyncio.timeout(5.0):
        while sum(text in record.getMessage() for record in caplog.records) < times:
            await asyncio.sleep(0.005)
