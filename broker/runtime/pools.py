"""Pools at run time: created, reconfigured and audited.

A change of a pool's settings is validated (a bad value changes nothing), stored,
applied to the lifecycle at once, and recorded in the store's audit log with who
asked and through what.

The config file's pools are applied key by key: the store remembers the settings the
file last gave each pool, and a reload or a restart applies only the keys whose value in
the file differs from that (a pool the file names for the first time, whole). So a change
made at run time stands until the file changes that key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

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
    async def record_file_settings(self, pool: str, settings: Mapping[str, Any]) -> None: ...
    async def load_file_settings(self) -> dict[str, dict[str, Any]]: ...


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
        # The settings the config file last gave each pool (JSON values), as stored.
        self._file_seen: dict[str, dict[str, Any]] = {}

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

    async def recover_from_file(
        self, stored: Sequence[PoolConfig], pools: Sequence[PoolConfig]
    ) -> None:
        """At start, before the lifecycle has pools: store what the config file's `pools`
        change of the `stored` ones (see `from_file`), audited as found at start-up."""
        self._file_seen = await self._store.load_file_settings()
        by_name = {pool.name: pool for pool in stored}
        for pool in pools:
            old = by_name.get(pool.name)
            new = self.from_file(old, pool)
            if new != old:
                await self._store.upsert_pool(new)
                await self.audit(old, new, "config file", "startup")
            await self._remember_file(pool)

    async def apply_file(
        self, pools: Sequence[PoolConfig], who: str, source: str
    ) -> list[ConfigChange]:
        """Apply the config file's `pools` (each validated already) to the running ones,
        key by key (see `from_file`); the audited changes."""
        planned = [
            (pool, self.from_file(self._core.pools[pool.name].config, pool))
            if pool.name in self._core.pools
            else (pool, None)
            for pool in pools
        ]
        changes = []
        for pool, new in planned:
            if new is None:
                change = await self.create(pool, who, source)
            elif new != self._core.pools[pool.name].config:
                change = await self.update(new, who, source)
            else:
                change = None
            if change is not None:
                changes.append(change)
            await self._remember_file(pool)
        return changes

    def from_file(self, current: PoolConfig | None, pool: PoolConfig) -> PoolConfig:
        """The current pool with the keys whose value in the config file's `pool` differs
        from the one the file last gave (a key the file leaves out has its default there).
        A pool the file names for the first time is taken whole; so is the file's pool if
        the mix of its keys and the run-time ones is not a valid pool."""
        seen = self._file_seen.get(pool.name)
        if current is None or seen is None:
            return pool
        changed = {
            key: getattr(pool, key)
            for key, value in _file_settings(pool).items()
            if seen.get(key, _UNSET) != value
        }
        mixed = dataclasses.replace(current, **changed)
        try:
            validate_pool(mixed, self._core.config.heartbeat_interval_s)
        except ConfigError as exc:
            log.warning(
                "pool %s: the config file's changes do not fit its run-time settings (%s);"
                " applying the file's pool whole",
                pool.name,
                exc,
            )
            return pool
        return mixed

    async def _remember_file(self, pool: PoolConfig) -> None:
        settings = _file_settings(pool)
        if self._file_seen.get(pool.name) != settings:
            await self._store.record_file_settings(pool.name, settings)
            self._file_seen[pool.name] = settings

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


def _file_settings(pool: PoolConfig) -> dict[str, Any]:
    """The pool's settings as the store gives them back (JSON values), to compare."""
    settings: dict[str, Any] = json.loads(settings_json(pool_settings(pool)))
    return settings


def _validate(pool: PoolConfig, heartbeat_interval_s: float) -> None:
    try:
        validate_pool(pool, heartbeat_interval_s)
    except ConfigError as exc:
        raise InvalidArgument(str(exc)) from None
