"""The Client's AuthService calls: API tokens (admins) and who the broker takes the
caller for."""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from worker_sdk import _convert, _tracing
from worker_sdk._token_types import Identity, TokenInfo

_T = TypeVar("_T")


class TokenCalls:
    """API tokens, for Client: one unary AuthService call each."""

    # Client's plumbing, which these calls use.

    @property
    def _metadata(self) -> _tracing.Metadata:
        raise NotImplementedError

    def _auth_stub(self) -> Any:
        raise NotImplementedError

    async def _unary(self, call: Awaitable[_T]) -> _T:
        raise NotImplementedError

    async def create_token(
        self, name: str, roles: Iterable[str], pools: Iterable[str] = ()
    ) -> tuple[TokenInfo, str]:
        """A new API token (admin) and its secret, which the broker shows this once.
        `roles` of submit, read, worker, admin; `pools` limits it (() = every pool)."""
        request = _convert.create_token_request(name, roles, pools)
        response = await self._unary(
            self._auth_stub().CreateToken(request, metadata=self._metadata)
        )
        return _convert.created_token(response)

    async def list_tokens(self) -> list[TokenInfo]:
        """Every API token (admin), revoked ones too, by name."""
        request = _convert.list_tokens_request()
        call = self._auth_stub().ListTokens(request, metadata=self._metadata)
        response = await self._unary(call)
        return _convert.listed_tokens(response)

    async def revoke_token(self, name: str) -> TokenInfo:
        """Revoke an API token (admin): refused at once, its open streams ended."""
        request = _convert.revoke_token_request(name)
        response = await self._unary(
            self._auth_stub().RevokeToken(request, metadata=self._metadata)
        )
        return _convert.token_info(response)

    async def whoami(self) -> Identity:
        """Who the broker takes this client for: its identity, roles and pools."""
        request = _convert.whoami_request()
        call = self._auth_stub().WhoAmI(request, metadata=self._metadata)
        response = await self._unary(call)
        return _convert.identity(response)
