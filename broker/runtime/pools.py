"""Pools at run time: created, reconfigured and audited.

A change of a pool's settings is validated (a bad value changes nothing), stored,
applied to the lifecycle at once, and recorded in the store's audit log with who
asked and through what.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from broker.clock import Clock
from broker.config import validate_pool
from broker.core.lifecycle import TaskLifecycle
from broker.domain import ConfigChange, PoolConfig
from broker.errors import AlreadyExists, ConfigError, InvalidArgument, NotFound
from broker.storage.codec import pool_settings, settings_json

log = logging.getLogger("taskbroker.engine")

_UNSET = object()


class PoolLog(Protocol):
    """Where pools and their audited changes are kept (the store)."""

    async def upsert_pool(self, pool: PoolConfig) -> None: ...
    async def record_config_change(self, change: ConfigChange) -> None: ...
    async def config_history(self, pool: str = "", limit: int = 100) -> list[ConfigChange]: ...


class PoolAdmin:
    """Creates and reconfigures the lifecycle's pools, stored and audited."""

    def __init__(
        self,
        core: TaskLifecycle,
        store: PoolLog,
        clock: Clock,
        request_dispatch: Callable[[Iterable[str]], None],
    ) -> None:
        self._core = core
        self._store = store
        self._clock = clock
        self._request_dispatch = request_dispatch

    async def create(self, pool: PoolConfig, who: str, source: str) -> ConfigChange | None:
        _validate(pool, self._core.config.heartbeat_interval_s)
        if pool.name in self._core.pools:
            raise AlreadyExists(f"pool {pool.name!r} exists already")
        await self._store.upsert_pool(pool)
        self._core.add_pool(pool)
        log.info("pool %s created with strategy %s", pool.name, pool.strategy)
        return await self.audit(None, pool, who, source)

    async def update(self, pool: PoolConfig, who: str, source: str) -> ConfigChange | None:
        _validate(pool, self._core.config.heartbeat_interval_s)
        scheduler = self._core.pools.get(pool.name)
        if scheduler is None:
            raise NotFound(f"pool {pool.name!r} does not exist")
        old = scheduler.config
        await self._store.upsert_pool(pool)
        self._core.reconfigure(pool, self._clock.now())
        change = await self.audit(old, pool, who, source)
        log.info(
            "pool %s reconfigured by %s (%s): %s",
            pool.name,
            who or "unknown",
            source,
            ", ".join(change.fields) if change else "no change",
        )
        self._request_dispatch([pool.name])
        return change

    async def apply(self, pool: PoolConfig, who: str, source: str) -> ConfigChange | None:
        """Create the pool, or change its settings to these; the audited change, if any."""
        if pool.name in self._core.pools:
            return await self.update(pool, who, source)
        return await self.create(pool, who, source)

    async def history(self, pool: str, limit: int) -> list[ConfigChange]:
        """Audited changes of pool settings, newest first."""
        if pool and pool not in self._core.pools:
            raise NotFound(f"pool {pool!r} does not exist")
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be 1..10000, got {limit}")
        return await self._store.config_history(pool, limit)

    async def audit(
        self, old: PoolConfig | None, new: PoolConfig, who: str, source: str
    ) -> ConfigChange | None:
        """Record a change of a pool's settings (none if nothing changed)."""
        after = pool_settings(new)
        before = pool_settings(old) if old is not None else {}
        fields = tuple(sorted(k for k in after if before.get(k, _UNSET) != after[k]))
        if not fields:
            return None
        change = ConfigChange(
            at=self._clock.now(),
            who=who or "unknown",
            source=source,
            pool=new.name,
            before=settings_json(before) if old is not None else "",
            after=settings_json(after),
            fields=fields,
        )
        await self._store.record_config_change(change)
        return change


def _validate(pool: PoolConfig, heartbeat_interval_s: float) -> None:
    try:
        validate_pool(pool, heartbeat_interval_s)
    except ConfigError as exc:
        raise InvalidArgument(str(exc)) from None
