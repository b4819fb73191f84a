"""The gRPC AuthService: API tokens for admins, and who the broker takes the caller for.

A token's secret is in the answer to CreateToken only; the broker keeps its hash.
"""

from __future__ import annotations

from broker.auth import ROLES, TokenRegistry
from broker.domain import ApiToken
from broker.server.auth import current_principal
from broker.server.status import Context, edge
from worker_sdk._pb import auth_pb2 as _auth
from worker_sdk._pb import auth_pb2_grpc as _auth_grpc


class AuthService(_auth_grpc.AuthServiceServicer):
    """Create, list and revoke API tokens; tell a caller who it is."""

    def __init__(self, registry: TokenRegistry) -> None:
        self._registry = registry

    @edge
    async def CreateToken(
        self, request: _auth.CreateTokenRequest, context: Context
    ) -> _auth.CreateTokenResponse:
        token, secret = await self._registry.create(request.name, request.roles, request.pools)
        return _auth.CreateTokenResponse(token=_token_to_pb(token, False), secret=secret)

    @edge
    async def ListTokens(
        self, request: _auth.ListTokensRequest, context: Context
    ) -> _auth.ListTokensResponse:
        return _auth.ListTokensResponse(
            tokens=[_token_to_pb(t, self._registry.from_file(t)) for t in self._registry.list()]
        )

    @edge
    async def RevokeToken(
        self, request: _auth.RevokeTokenRequest, context: Context
    ) -> _auth.ApiToken:
        return _token_to_pb(await self._registry.revoke(request.name), False)

    @edge
    async def WhoAmI(self, request: _auth.WhoAmIRequest, context: Context) -> _auth.WhoAmIResponse:
        principal = current_principal()
        if principal is None:  # not through the broker's interceptor: as if open
            return _auth.WhoAmIResponse(roles=ROLES, kind="open")
        return _auth.WhoAmIResponse(
            identity=principal.name,
            roles=sorted(principal.roles),
            pools=sorted(principal.pools),
            kind=principal.kind,
        )


def _token_to_pb(token: ApiToken, from_file: bool) -> _auth.ApiToken:
    return _auth.ApiToken(
        name=token.name,
        roles=token.roles,
        pools=token.pools,
        created_ms=round(token.created_at * 1000),
        revoked_ms=round(token.revoked_at * 1000) if token.revoked_at is not None else 0,
        from_file=from_file,
    )
