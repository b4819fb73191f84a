"""Configuration: TOML, environment overrides, flags, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import BrokerConfig, load_config
from broker.domain import PoolConfig
from broker.errors import ConfigError


def test_defaults() -> None:
    config = load_config()
    assert config.port == 50051
    assert config.pools == (PoolConfig(name="default"),)


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[broker]\nport = 6000\nhost = "0.0.0.0"\nmax_payload_bytes = 10\n'
        '[pools.gpu]\nstrategy = "least_loaded"\n'
    )
    config = load_config(
        path, {"TASKBROKER_PORT": "7000", "TASKBROKER_MAX_WAIT_S": "2.5"}, port=8000
    )
    assert config.port == 8000
    assert config.host == "0.0.0.0"
    assert config.max_wait_s == 2.5
    assert config.max_payload_bytes == 10
    assert PoolConfig(name="gpu", strategy="least_loaded") in config.pools
    assert load_config(path, {"TASKBROKER_PORT": "7000"}).port == 7000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[broker]\nport = 70000\n", "port: must be 0..65535"),
        ('[broker]\nport = "x"\n', "port: expected int"),
        ("[broker]\nbogus = 1\n", "bogus: unknown setting"),
        ("[broker]\nmax_payload_bytes = -1\n", "max_payload_bytes: must be positive"),
        ("[broker]\nheartbeat_timeout_s = 1\n", "heartbeat_timeout_s: must be greater"),
        ("[broker]\nidle_heartbeat_interval_s = -1\n", "idle_heartbeat_interval_s: must be"),
        ("[broker]\nidle_heartbeat_interval_s = 4000\n", "idle_heartbeat_interval_s: must be"),
        (
            "[broker]\nheartbeat_interval_s = 5\nheartbeat_timeout_s = 9\n",
            "heartbeat_timeout_s: must be greater than heartbeat_interval_s: at least 2 heartbeat",
        ),
        (
            "[pools.gpu]\nlease_s = 9\n",
            r"pools.gpu.lease_s: must be 0 \(the heartbeat timeout\) or at least 2 heartbeat",
        ),
        ('[pools.gpu]\nstrategy = "fastest"\n', "pools.gpu.strategy: unknown strategy"),
        ('[pools."bad name"]\n', "pools.bad name"),
        ("[pools.gpu]\ncolour = 1\n", "pools.gpu.colour: unknown key"),
        ('[pools.gpu]\nab_strategy = "nope"\nab_percent = 5\n', "pools.gpu.ab_strategy: unknown"),
        ('[pools.gpu]\nab_strategy = "round_robin"\nab_percent = 101\n', "must be 0..100"),
        ("[pools.gpu]\nab_percent = 5\n", "pools.gpu.ab_percent: needs an ab_strategy"),
        ("[pools.gpu]\nsticky_timeout_s = -1\n", "pools.gpu.sticky_timeout_s: must be"),
        ('[pools.gpu]\nsticky_timeout_s = "soon"\n', "pools.gpu.sticky_timeout_s: expected float"),
        ("[nonsense]\n", "nonsense: unknown section"),
        ("port = [", "not valid TOML"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(path)


def test_a_worker_holding_nothing_beats_at_the_idle_interval_never_faster() -> None:
    config = BrokerConfig()
    assert (config.idle_heartbeat_s, config.idle_heartbeat_timeout_s) == (30.0, 90.0)
    config = BrokerConfig(heartbeat_interval_s=2.0, heartbeat_timeout_s=8.0)
    assert (config.idle_heartbeat_s, config.idle_heartbeat_timeout_s) == (30.0, 120.0)
    # 0, or less than the usual interval: the usual interval and timeout.
    for idle in (0.0, 1.0):
        config = BrokerConfig(heartbeat_interval_s=2.0, idle_heartbeat_interval_s=idle)
        assert (config.idle_heartbeat_s, config.idle_heartbeat_timeout_s) == (2.0, 15.0)


def test_pool_settings_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[pools.gpu]\nstrategy = "least_loaded"\nab_strategy = "round_robin"\n'
        "ab_percent = 20\nsticky_timeout_s = 2\n"
    )
    (gpu,) = [p for p in load_config(path).pools if p.name == "gpu"]
    assert gpu == PoolConfig(
        name="gpu",
        strategy="least_loaded",
        ab_strategy="round_robin",
        ab_percent=20,
        sticky_timeout_s=2.0,
    )


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="port: expected int"):
        load_config(None, {"TASKBROKER_PORT": "eighty"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/broker.toml")
