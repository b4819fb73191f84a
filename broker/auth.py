"""Who may call the broker: roles, tokens, certificate identities and the registry that
answers "whose credential is this?".

A caller is a `Principal`: a token's name or a client certificate's subject, its roles
and the pools it is limited to. Token secrets are never kept, only their SHA-256; a
presented secret is hashed and looked up, and the stored digest compared in constant time.

Tokens come from two places: the store (created and revoked at run time, `taskbroker
tokens`) and a static tokens file (TOML, for deployments that manage secrets outside the
broker), which may also give client-certificate subjects their roles::

    [[tokens]]
    name = "ci"
    roles = ["submit", "read"]
    pools = ["tenant-a"]          # optional; absent or empty: every pool
    sha256 = "9f86d08...."        # hex SHA-256 of the secret

    [[certificates]]
    subject = "worker-1.example"  # a SAN (DNS, email, URI) or the subject's common name
    roles = ["worker"]
    pools = ["gpu"]

No gRPC here: the interceptor (broker.server.auth) asks this module.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from broker.clock import Clock
from broker.core.validation import MAX_NAME_LENGTH, check_count, check_names
from broker.domain import ApiToken
from broker.errors import AlreadyExists, ConfigError, FailedPrecondition, InvalidArgument, NotFound
from broker.storage import Store

_log = logging.getLogger("taskbroker.auth")

SUBMIT: Final = "submit"  # submit tasks, read and wait for its own
READ: Final = "read"  # list and inspect tasks, pools, workers, statistics
WORKER: Final = "worker"  # connect as a worker
ADMIN: Final = "admin"  # everything: pools, drain, cordon, config, retry, cancel any, tokens
ROLES: Final = (SUBMIT, READ, WORKER, ADMIN)
TOKEN_PREFIX: Final = "tbk_"
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str  # the token's name or the certificate's subject
    roles: frozenset[str]
    pools: frozenset[str] = frozenset()  # empty: every pool
    kind: str = "token"  # token, certificate, or open (authentication is off)
    token: str = ""  # the token's name, when it is a revocable token

    def has(self, role: str) -> bool:
        """Whether the caller holds `role`; admin holds every role."""
        return role in self.roles or ADMIN in self.roles

    def may_use(self, pool: str) -> bool:
        """Whether the caller may use `pool`."""
        return not self.pools or pool in self.pools


def new_secret() -> str:
    """A fresh token secret: a prefix (so a leaked one is recognisable) and 32 random bytes."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The SHA-256 (hex) a token's secret is kept as."""
    return hashlib.sha256(secret.encode()).hexdigest()


MAX_TOKEN_ROLES: Final = 16  # roles named in one request (duplicates included)
MAX_TOKEN_POOLS: Final = 100  # pools one token may be limited to


def check_roles(
    roles: Iterable[str], pools: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validated, sorted roles and pools; InvalidArgument naming what is wrong."""
    role_list, pool_list = list(roles), list(pools)
    check_count(role_list, "roles", MAX_TOKEN_ROLES, path="roles")
    check_names(pool_list, "pools", MAX_TOKEN_POOLS, MAX_NAME_LENGTH, path="pools")
    role_set = sorted(set(role_list))
    if not role_set:
        raise InvalidArgument("a token needs at least one role", field="roles")
    unknown = [r for r in role_set if r not in ROLES]
    if unknown:
        raise InvalidArgument(
            f"unknown role {unknown[0]!r}; known: {', '.join(ROLES)}", field="roles"
        )
    pool_set = sorted(set(pool_list))
    if any(not p for p in pool_set):
        raise InvalidArgument("a pool name must not be empty", field="pools")
    return tuple(role_set), tuple(pool_set)


@dataclass(frozen=True, slots=True)
class _FileIdentity:
    roles: frozenset[str]
    pools: frozenset[str]


class TokenRegistry:
    """Every credential the broker accepts, in memory; tokens made at run time are also
    saved in the store. A revocation takes effect at once: for new calls, and through
    `watch`, for the streams a token has open."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._store: Store | None = None
        self._by_digest: dict[str, ApiToken] = {}
        self._by_name: dict[str, ApiToken] = {}
        self._static: dict[str, ApiToken] = {}  # from the tokens file, by digest
        self._subjects: dict[str, _FileIdentity] = {}
        self._watchers: dict[str, set[Callable[[], None]]] = {}

    async def attach(self, store: Store) -> None:
        """Load the store's tokens and keep new ones there."""
        self._store = store
        for token in await store.load_tokens():
            self._add(token)

    def load_file(self, path: str) -> None:
        """Read the static tokens file (see the module docstring); ConfigError if it is bad.
        Replaces what an earlier read gave (a reload)."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"tokens_file {path} does not exist") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"tokens_file {path}: {exc}") from None
        static: dict[str, ApiToken] = {}
        subjects: dict[str, _FileIdentity] = {}
        for i, entry in enumerate(data.get("tokens", [])):
            where = f"tokens_file {path}: tokens[{i}]"
            name, roles, pools = _entry(entry, "name", where)
            sha = entry.get("sha256", "")
            if not isinstance(sha, str) or not _HEX64.match(sha.lower()):
                raise ConfigError(f"{where}.sha256: expected 64 hex digits")
            static[sha.lower()] = ApiToken(
                name=name, roles=roles, pools=pools, digest=sha.lower(), created_at=0.0
            )
        for i, entry in enumerate(data.get("certificates", [])):
            where = f"tokens_file {path}: certificates[{i}]"
            subject, roles, pools = _entry(entry, "subject", where)
            subjects[subject] = _FileIdentity(frozenset(roles), frozenset(pools))
        unknown = set(data) - {"tokens", "certificates"}
        if unknown:
            raise ConfigError(f"tokens_file {path}: unknown section {sorted(unknown)[0]!r}")
        self._static = static
        self._subjects = subjects

    # -- authentication --------------------------------------------------------------------

    def authenticate(self, secret: str) -> Principal | None:
        """The caller a bearer secret belongs to; None if it is unknown or revoked."""
        wanted = digest(secret)
        token = self._by_digest.get(wanted) or self._static.get(wanted)
        if token is None or token.revoked_at is not None:
            return None
        if not hmac.compare_digest(token.digest, wanted):
            return None
        return Principal(
            token.name,
            frozenset(token.roles),
            frozenset(token.pools),
            kind="token",
            token=token.name if token.digest in self._by_digest else "",
        )

    def certificate(self, names: Iterable[str]) -> Principal | None:
        """The caller a client certificate (its SANs and common name) belongs to, if the
        tokens file gives one of those names roles."""
        for name in names:
            identity = self._subjects.get(name)
            if identity is not None:
                return Principal(name, identity.roles, identity.pools, kind="certificate")
        return None

    def watch(self, token: str, revoked: Callable[[], None]) -> Callable[[], None]:
        """Call `revoked` when the token `token` is revoked; returns the unsubscriber."""
        watchers = self._watchers.setdefault(token, set())
        watchers.add(revoked)

        def unwatch() -> None:
            watchers.discard(revoked)
            if not watchers:
                self._watchers.pop(token, None)

        return unwatch

    # -- management ------------------------------------------------------------------------

    async def create(
        self, name: str, roles: Iterable[str], pools: Iterable[str]
    ) -> tuple[ApiToken, str]:
        """A new token and its secret (which is not kept: it is shown once)."""
        if not _TOKEN_NAME.fullmatch(name):
            raise InvalidArgument(
                "a token name is 1-64 letters, digits, '_', '.', '@', ':' or '-',"
                " starting with a letter or digit",
                field="name",
            )
        if name in self._by_name or any(t.name == name for t in self._static.values()):
            raise AlreadyExists(f"token {name!r} exists")
        role_tuple, pool_tuple = check_roles(roles, pools)
        secret = new_secret()
        token = ApiToken(
            name=name,
            roles=role_tuple,
            pools=pool_tuple,
            digest=digest(secret),
            created_at=self._clock.now(),
        )
        await self._save(token)
        self._add(token)
        _log.info("token %s created (roles %s)", name, ",".join(role_tuple))
        return token, secret

    def list(self) -> list[ApiToken]:
        """Every token, the file's too, by name."""
        return sorted([*self._by_name.values(), *self._static.values()], key=lambda t: t.name)

    def from_file(self, token: ApiToken) -> bool:
        """Whether the token comes from the tokens file (not revocable at run time)."""
        return token.digest in self._static and token.digest not in self._by_digest

    async def revoke(self, name: str) -> ApiToken:
        """Revoke a token: refused from now on, and its open streams are ended."""
        token = self._by_name.get(name)
        if token is None:
            if any(t.name == name for t in self._static.values()):
                raise FailedPrecondition(
                    f"token {name!r} comes from the tokens file; remove it there and reload"
                )
            raise NotFound(f"token {name!r} does not exist")
        if token.revoked_at is None:
            token = ApiToken(
                name=token.name,
                roles=token.roles,
                pools=token.pools,
                digest=token.digest,
                created_at=token.created_at,
                revoked_at=self._clock.now(),
            )
            self._add(token)  # refused from here on, even before the store has it
            for revoked in list(self._watchers.pop(name, ())):
                revoked()
            await self._save(token)
            _log.info("token %s revoked", name)
        return token

    def _add(self, token: ApiToken) -> None:
        self._by_name[token.name] = token
        self._by_digest[token.digest] = token

    async def _save(self, token: ApiToken) -> None:
        if self._store is None:
            raise FailedPrecondition("the broker has not started")
        await self._store.save_token(token)


def _entry(entry: object, key: str, where: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    name = entry.get(key)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.{key}: must be a non-empty string")
    roles = entry.get("roles", [])
    pools = entry.get("pools", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ConfigError(f"{where}.roles: must be a list of strings")
    if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
        raise ConfigError(f"{where}.pools: must be a list of strings")
    try:
        role_tuple, pool_tuple = check_roles(roles, pools)
    except InvalidArgument as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return name, role_tuple, pool_tuple
