"""What the broker says about API tokens and callers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An API token as the broker lists it: never its secret."""

    name: str
    roles: tuple[str, ...]
    pools: tuple[str, ...]  # () = every pool
    created_at: datetime | None
    revoked_at: datetime | None
    from_file: bool  # from the broker's tokens file: revoked there


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the broker takes the caller for."""

    name: str  # a token's name or a certificate's subject; "" when no one is authenticated
    roles: tuple[str, ...]
    pools: tuple[str, ...]
    kind: str  # token, certificate, or open (the broker authenticates no one)
