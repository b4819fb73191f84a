"""AuthService messages: API tokens and the caller's identity."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from worker_sdk._pb import auth_pb2 as _auth
from worker_sdk._token_types import Identity, TokenInfo


def create_token_request(
    name: str, roles: Iterable[str], pools: Iterable[str]
) -> _auth.CreateTokenRequest:
    return _auth.CreateTokenRequest(name=name, roles=list(roles), pools=list(pools))


def list_tokens_request() -> _auth.ListTokensRequest:
    return _auth.ListTokensRequest()


def revoke_token_request(name: str) -> _auth.RevokeTokenRequest:
    return _auth.RevokeTokenRequest(name=name)


def whoami_request() -> _auth.WhoAmIRequest:
    return _auth.WhoAmIRequest()


def _time(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def token_info(message: _auth.ApiToken) -> TokenInfo:
    return TokenInfo(
        name=message.name,
        roles=tuple(message.roles),
        pools=tuple(message.pools),
        created_at=_time(message.created_ms),
        revoked_at=_time(message.revoked_ms),
        from_file=message.from_file,
    )


def created_token(message: _auth.CreateTokenResponse) -> tuple[TokenInfo, str]:
    return token_info(message.token), message.secret


def listed_tokens(message: _auth.ListTokensResponse) -> list[TokenInfo]:
    return [token_info(t) for t in message.tokens]


def identity(message: _auth.WhoAmIResponse) -> Identity:
    return Identity(
        name=message.identity,
        roles=tuple(message.roles),
        pools=tuple(message.pools),
        kind=message.kind,
    )
