"""Idempotency keys: a submit that repeats a key gets the task the key made before.

A key is remembered in the store for the retention window. While one submit looks a
key up or makes its task, the key is claimed (a future per key): a concurrent submit
with the same key waits for that future instead of making a second task.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from broker.clock import Clock
from broker.domain import Task, TaskSpec
from broker.errors import Unavailable

Key = tuple[str, str]  # (pool, idempotency key)
Claimed = dict[Key, asyncio.Future[Task]]


class KeyLookup(Protocol):
    """Where idempotency keys are remembered (the store)."""

    async def find_idempotent(
        self, pool: str, keys: Sequence[str], since: float
    ) -> dict[str, Task]: ...


class Claims:
    """The keys claimed by submits in progress."""

    def __init__(self, store: KeyLookup, clock: Clock, retention_s: float) -> None:
        self._store = store
        self._clock = clock
        self._retention_s = retention_s
        self._claims: Claimed = {}

    async def find_existing(self, specs: Sequence[TaskSpec]) -> tuple[dict[int, Task], Claimed]:
        """The earlier task of each spec whose idempotency key was seen, by index; and the
        keys this submit claimed (it resolves them with the tasks it creates)."""
        found: dict[int, Task] = {}
        claimed: Claimed = {}
        others: dict[int, asyncio.Future[Task]] = {}
        lookups: dict[str, list[str]] = defaultdict(list)
        loop = asyncio.get_running_loop()
        for index, spec in enumerate(specs):
            if not spec.idempotency_key:
                continue
            key = (spec.pool, spec.idempotency_key)
            if key in claimed:
                continue  # the same key twice in one batch: the first one's task
            pending_claim = self._claims.get(key)
            if pending_claim is not None:
                others[index] = pending_claim
                continue
            claimed[key] = self._claims[key] = loop.create_future()
            lookups[spec.pool].append(spec.idempotency_key)
        try:
            since = self._clock.now() - self._retention_s
            stored: dict[Key, Task] = {}
            for pool, keys in lookups.items():
                matches = await self._store.find_idempotent(pool, keys, since)
                for idempotency_key, task in matches.items():
                    stored[(pool, idempotency_key)] = task
            for index, pending_claim in others.items():
                found[index] = await asyncio.shield(pending_claim)
        except BaseException as exc:
            for key, claim in claimed.items():
                self._claims.pop(key, None)
                claim.set_exception(Unavailable(f"idempotency lookup failed: {exc}"))
                claim.exception()
            raise
        for key, task in stored.items():
            claimed[key].set_result(task)
        for index, spec in enumerate(specs):
            key = (spec.pool, spec.idempotency_key)
            if spec.idempotency_key and index not in found and key in stored:
                found[index] = stored[key]
        return found, claimed

    def fail(self, claimed: Claimed, exc: BaseException) -> None:
        """The submit that claimed these keys failed: so do the submits waiting for them."""
        for claim in claimed.values():
            if not claim.done():
                claim.set_exception(
                    Unavailable(f"a submit with the same idempotency key failed: {exc}")
                )
                claim.exception()  # retrieved: nobody else may wait for it

    def release(self, claimed: Claimed) -> None:
        """The submit is over: its keys are no longer claimed."""
        for key in claimed:
            self._claims.pop(key, None)

    @staticmethod
    def resolve(claimed: Claimed, tasks: Sequence[Task]) -> None:
        """Give the submits waiting for these keys the tasks that were made for them."""
        for task in tasks:
            made = claimed.get((task.spec.pool, task.spec.idempotency_key))
            if made is not None and not made.done():
                made.set_result(task)
