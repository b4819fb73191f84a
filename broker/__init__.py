"""Taskbroker's broker: the gRPC server, the scheduler and the SQLite store."""

from broker.config import BrokerConfig, load_config
from broker.domain import PoolConfig
from broker.errors import BrokerError, ConfigError
from broker.server import Broker

__all__ = ["Broker", "BrokerConfig", "BrokerError", "ConfigError", "PoolConfig", "load_config"]
