"""Certificates for TLS tests, made per test with trustme: a CA, the broker's
certificate for the loopback addresses, and client certificates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from worker_sdk import TLS


@dataclass(frozen=True)
class Pki:
    """The files of one CA and what it signed, in a folder."""

    ca: trustme.CA
    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def client(self, name: str) -> TLS:
        """TLS settings for a client with a certificate for `name` (its SAN) from this CA."""
        cert = self.ca.issue_cert(name)
        cert_path = self.folder / f"{name}.pem"
        key_path = self.folder / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        return TLS(ca_file=str(self.ca_file), cert_file=str(cert_path), key_file=str(key_path))

    def trust(self) -> TLS:
        """TLS settings that trust this CA, without a client certificate."""
        return TLS(ca_file=str(self.ca_file))


def make_pki(folder: Path) -> Pki:
    """A new CA in `folder` and a broker certificate for localhost and 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    pki = Pki(ca, folder)
    ca.cert_pem.write_to_path(str(pki.ca_file))
    issue_server_cert(pki)
    return pki


def issue_server_cert(pki: Pki, into: Path | None = None) -> None:
    """Write a broker certificate from pki's CA (to pki's files, or into `into`)."""
    server = pki.ca.issue_cert("localhost", "127.0.0.1", "::1")
    folder = into or pki.folder
    with (folder / "server.pem").open("wb") as out:
        for pem in server.cert_chain_pems:
            out.write(pem.bytes())
    server.private_key_pem.write_to_path(str(folder / "server.key"))
