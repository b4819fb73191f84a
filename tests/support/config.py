"""Broker configurations for tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from broker import BrokerConfig, PoolConfig, load_config


def make_config(tmp_path: Path, **overrides: object) -> BrokerConfig:
    """A config for tests: port 0, a database in tmp_path, fast heartbeats."""
    values: dict[str, object] = {
        "port": 0,
        "db_path": str(tmp_path / "broker.db"),
        "heartbeat_interval_s": 0.5,
        "heartbeat_timeout_s": 5.0,
        "shutdown_grace_s": 2.0,
    }
    values.update(overrides)
    config = load_config(None, {}, **values)
    return dataclasses.replace(config, pools=(PoolConfig(name="default"), PoolConfig(name="other")))
