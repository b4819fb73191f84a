"""Make a development CA, the broker's certificate and API tokens for deploy/compose.yaml.

    python deploy/make_dev_ca.py [OUT]            # default: deploy/dev-secrets
    python deploy/make_dev_ca.py OUT --client ops  # also a client certificate (mutual TLS)

Writes into OUT:

- ca.pem, ca.key: a CA (ECDSA P-256, ten years) that signs the rest; keep ca.key to
  issue more, or delete it;
- broker.pem, broker.key: the broker's certificate, for the names `broker` (its compose
  service), `localhost`, 127.0.0.1 and ::1, and the names given with --host;
- tokens.toml: the broker's static tokens file, hashes only: `admin` (admin) and
  `worker` (worker, pool default);
- admin.token, worker.token: their secrets, one per file, for `--token-file` or
  `TASKBROKER_TOKEN_FILE`;
- NAME.pem, NAME.key for each --client NAME: a client certificate for mutual TLS.

For development only: the keys are readable by everyone (the containers' user must read
the bind-mounted files). Production certificates come from your own CA or secret store.
Needs the `cryptography` package (in the project's dev extra).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_OUT = Path(__file__).resolve().parent / "dev-secrets"
BROKER_NAMES = ("broker", "localhost", "127.0.0.1", "::1")
VALID_DAYS = 3650


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Taskbroker development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(names: list[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for name in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            general.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(general)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o644)  # development: the containers' user reads the bind mount


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = _name("Taskbroker development CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_cert(out / "ca.pem", cert)
    _write_key(out / "ca.key", key)
    (out / "ca.key").chmod(0o600)
    return cert, key


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    out: Path,
    file_name: str,
    names: list[str],
    *,
    server: bool,
) -> None:
    """A certificate for `names` (the first is its common name), signed by `ca`."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_alt_names(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_cert(out / f"{file_name}.pem", cert)
    _write_key(out / f"{file_name}.key", key)


def make_tokens(out: Path) -> None:
    """tokens.toml (hashes) and a file with each token's secret."""
    entries = {"admin": (["admin"], []), "worker": (["worker"], ["default"])}
    lines = ["# Made by deploy/make_dev_ca.py: SHA-256 hashes of the tokens in *.token."]
    for name, (roles, pools) in entries.items():
        secret = "tbk_" + secrets.token_urlsafe(32)
        (out / f"{name}.token").write_text(secret + "\n")
        (out / f"{name}.token").chmod(0o644)
        lines += [
            "",
            "[[tokens]]",
            f'name = "{name}"',
            f"roles = {roles!r}".replace("'", '"'),
            f"pools = {pools!r}".replace("'", '"'),
            f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"',
        ]
    (out / "tokens.toml").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--host", action="append", default=[], help="another broker name")
    parser.add_argument("--client", action="append", default=[], help="a client certificate")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(out)
    issue(ca, out, "broker", [*BROKER_NAMES, *args.host], server=True)
    for client in args.client:
        issue(ca, out, client, [client], server=False)
    make_tokens(out)
    print(f"development CA, broker certificate and tokens written to {out}")


if __name__ == "__main__":
    main()
