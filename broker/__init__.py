"""Taskbroker's broker: the gRPC server, the scheduler and the SQLite store."""

from broker.app import Broker
from broker.config import BrokerConfig, load_config
from broker.domain import PoolConfig
from broker.errors import BrokerError, ConfigError

__all__ = ["Broker", "BrokerConfig", "BrokerError", "ConfigError", "PoolConfig", "load_config"]
