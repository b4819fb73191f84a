"""The broker's transport security: its TLS credentials, read from files and read again
on a reload without dropping a connection, the check that plaintext stays on loopback,
and the server options that limit what one connection may do.

`Security` is made before the port is bound and holds what the interceptor and the
AuthService share: the token registry.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import grpc

from broker.auth import TokenRegistry
from broker.clock import Clock
from broker.config import BrokerConfig
from broker.errors import BrokerError, ConfigError
from broker.server.auth import AuthInterceptor
from broker.storage import Store

_log = logging.getLogger("taskbroker.security")


class CertificateFiles:
    """The broker's certificate, key and client CA, as gRPC's dynamic credentials take
    them: each new TLS handshake asks `fetch`, which hands over a configuration read by
    the last `reload` (None: keep the current one). Open connections keep theirs."""

    def __init__(self, config: BrokerConfig) -> None:
        self._cert = config.tls_cert_file
        self._key = config.tls_key_file
        self._client_ca = config.tls_client_ca_file
        self._current = self._read()
        self._pending: Any = None

    @property
    def mutual(self) -> bool:
        return bool(self._client_ca)

    def _read(self) -> tuple[bytes, bytes, bytes | None]:
        try:
            key = Path(self._key).read_bytes()
            chain = Path(self._cert).read_bytes()
            client_ca = Path(self._client_ca).read_bytes() if self._client_ca else None
        except OSError as exc:
            raise ConfigError(f"TLS files: cannot read {exc.filename}: {exc.strerror}") from None
        for name, data in (("tls_key_file", key), ("tls_cert_file", chain)):
            if b"-----BEGIN" not in data:
                raise ConfigError(f"{name}: not a PEM file")
        return key, chain, client_ca

    def _configuration(self, files: tuple[bytes, bytes, bytes | None]) -> Any:
        key, chain, client_ca = files
        return grpc.ssl_server_certificate_configuration([(key, chain)], client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._current),
            self._fetch,
            require_client_authentication=self.mutual,
        )

    def reload(self) -> bool:
        """Read the files again; the next handshakes use them. Returns whether they
        changed. ConfigError (and the old ones stay) if they cannot be read."""
        files = self._read()
        if files == self._current:
            return False
        self._current = files
        self._pending = self._configuration(files)
        return True

    def _fetch(self) -> Any:
        pending, self._pending = self._pending, None
        return pending


class Security:
    """TLS credentials, the token registry and the auth interceptor of one broker."""

    def __init__(self, config: BrokerConfig, clock: Clock) -> None:
        self.config = config
        self.registry = TokenRegistry(clock)
        if config.tokens_file:
            self.registry.load_file(config.tokens_file)
        self.interceptor = AuthInterceptor(config, self.registry)
        self.certificates = CertificateFiles(config) if config.tls_cert_file else None
        check_plaintext(config)

    async def attach(self, store: Store) -> None:
        await self.registry.attach(store)

    def credentials(self) -> grpc.ServerCredentials | None:
        return None if self.certificates is None else self.certificates.credentials()

    def reload(self) -> None:
        """Read the certificate files and the tokens file again (SIGHUP, `config reload`)."""
        if self.certificates is not None and self.certificates.reload():
            _log.info("TLS certificates reloaded; new connections use them")
        if self.config.tokens_file:
            self.registry.load_file(self.config.tokens_file)


def is_loopback(host: str) -> bool:
    """Whether `host` names only the loopback interface."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_plaintext(config: BrokerConfig) -> None:
    """BrokerError if the broker would listen in plaintext beyond loopback without
    `allow_insecure`; a warning if it is allowed to."""
    if config.tls_cert_file or is_loopback(config.host):
        return
    if not config.allow_insecure:
        raise BrokerError(
            f"refusing to listen on {config.host} without TLS: set tls_cert_file and"
            " tls_key_file, or allow_insecure = true to accept plaintext"
        )
    _log.warning(
        "listening on %s in plaintext (allow_insecure): anyone on the network can read"
        " the traffic%s",
        config.host,
        ", tokens included" if config.auth != "none" else "",
    )


def limit_options(config: BrokerConfig) -> list[tuple[str, Any]]:
    """Server options against abusive connections: keepalive enforcement and the
    maximum age of a connection."""
    options: list[tuple[str, Any]] = [
        # Pings only while calls are open, and no closer together than this: a client
        # that pings more often is sent GOAWAY (too_many_pings).
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", round(config.keepalive_min_ping_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if config.max_connection_age_s:
        options += [
            ("grpc.max_connection_age_ms", round(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", round(config.max_connection_age_grace_s * 1000)),
        ]
    return options
