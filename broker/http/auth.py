"""Who may use the dashboard: a token names an identity with a role.

`read` sees everything the dashboard shows; `admin` also acts (drain, cordon, retry, purge,
edit pools). The dashboard asks a `TokenVerifier`: `StaticTokens` is one from a file of
token hashes (the broker's `dashboard_tokens` setting), so that no token is stored in clear;
`BrokerTokens` takes the broker's own API tokens (`auth = "token"`); `AnyOf` asks several.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from broker.errors import ConfigError


class Role(enum.StrEnum):
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed in, and what they may do."""

    name: str
    role: Role

    @property
    def can_act(self) -> bool:
        return self.role is Role.ADMIN


class TokenVerifier(Protocol):
    """Turns a presented token into an identity, or None for a token it does not know."""

    def verify(self, token: str) -> Identity | None: ...


class _Caller(Protocol):
    """An authenticated caller of the broker's API (broker.auth.Principal)."""

    @property
    def name(self) -> str: ...

    @property
    def pools(self) -> frozenset[str]: ...

    def has(self, role: str) -> bool: ...


class _Authenticator(Protocol):
    """The broker's token registry (broker.auth.TokenRegistry)."""

    def authenticate(self, secret: str) -> _Caller | None: ...


class BrokerTokens:
    """The broker's own API tokens: one with the `admin` role acts, one with `read` sees.
    A token limited to pools is refused, since the dashboard shows every pool; a token
    revoked is refused from then on (a session it opened lasts until it expires)."""

    def __init__(self, registry: _Authenticator) -> None:
        self._registry = registry

    def verify(self, token: str) -> Identity | None:
        caller = self._registry.authenticate(token) if token else None
        if caller is None or caller.pools:
            return None
        if caller.has(Role.ADMIN.value):
            return Identity(caller.name, Role.ADMIN)
        if caller.has(Role.READ.value):
            return Identity(caller.name, Role.READ)
        return None


class AnyOf:
    """The identity the first verifier that knows the token gives."""

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self._verifiers = tuple(verifiers)

    def verify(self, token: str) -> Identity | None:
        for verifier in self._verifiers:
            if (who := verifier.verify(token)) is not None:
                return who
        return None


def hash_token(token: str) -> str:
    """The SHA-256 of a token, in hex: what a token file holds."""
    return hashlib.sha256(token.encode()).hexdigest()


class StaticTokens:
    """A fixed set of tokens, each known by its SHA-256 hash."""

    def __init__(self, identities: Mapping[str, Identity]) -> None:
        self._identities = {digest.lower(): who for digest, who in identities.items()}

    def verify(self, token: str) -> Identity | None:
        if not token:
            return None
        digest = hash_token(token)
        for known, who in self._identities.items():
            if hmac.compare_digest(known, digest):
                return who
        return None

    @classmethod
    def from_file(cls, path: Path | str) -> StaticTokens:
        """Read a token file: one token a line, `SHA256-HEX ROLE NAME`; blank lines and
        lines starting with # are skipped. ConfigError names the line at fault."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"dashboard_tokens: cannot read {path}: {exc}") from None
        identities: dict[str, Identity] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(maxsplit=2)
            where = f"dashboard_tokens: {path} line {number}"
            if len(parts) != 3:
                raise ConfigError(f"{where}: expected 'SHA256-HEX ROLE NAME'")
            digest, role, name = parts
            if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                raise ConfigError(f"{where}: the token hash must be 64 hex digits")
            if role not in {r.value for r in Role}:
                raise ConfigError(f"{where}: role must be read or admin, got {role!r}")
            identities[digest] = Identity(name=name, role=Role(role))
        if not identities:
            raise ConfigError(f"dashboard_tokens: {path} holds no token")
        return cls(identities)
