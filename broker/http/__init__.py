"""The web dashboard: pages over the service layer, served by the broker on
`dashboard_port` (see broker.http.app)."""

from broker.http.app import DashboardSettings, create_app
from broker.http.auth import (
    AnyOf,
    BrokerTokens,
    Identity,
    Role,
    StaticTokens,
    TokenVerifier,
    hash_token,
)
from broker.http.server import DashboardServer

__all__ = [
    "AnyOf",
    "BrokerTokens",
    "DashboardServer",
    "DashboardSettings",
    "Identity",
    "Role",
    "StaticTokens",
    "TokenVerifier",
    "create_app",
    "hash_token",
]
