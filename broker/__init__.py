"""Taskbroker's broker: `Broker` (broker.app) wires the gRPC edge, the service layer, the
runtime, the scheduling core and the store together; see each package's docstring."""

from broker.app import Broker
from broker.config import BrokerConfig, load_config
from broker.domain import PoolConfig
from broker.errors import BrokerError, ConfigError

__all__ = ["Broker", "BrokerConfig", "BrokerError", "ConfigError", "PoolConfig", "load_config"]
