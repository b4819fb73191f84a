"""What `python -m tests.bench --tls` and `--token` change: the broker serves TLS (a CA and
certificate made for the run, with trustme) or requires a token (a tokens file made for
the run), and the bench's client and workers connect with them. Everything travels in
TASKBROKER_* environment variables to the processes the bench starts, never in argv."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

_TLS_CA_ENV = "TASKBROKER_BENCH_TLS_CA"
_TOKEN_ENV = "TASKBROKER_BENCH_TOKEN"


def enable(*, tls: bool, token: bool) -> None:
    """Set up the run's security in this process's environment (the broker reads
    TASKBROKER_* settings from it; the client and workers read the bench's own)."""
    folder = Path(tempfile.mkdtemp(prefix="taskbroker-bench-"))
    if tls:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1")
        server.private_key_pem.write_to_path(str(folder / "server.key"))
        with (folder / "server.pem").open("wb") as out:
            for pem in server.cert_chain_pems:
                out.write(pem.bytes())
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        os.environ["TASKBROKER_TLS_CERT_FILE"] = str(folder / "server.pem")
        os.environ["TASKBROKER_TLS_KEY_FILE"] = str(folder / "server.key")
        os.environ[_TLS_CA_ENV] = str(folder / "ca.pem")
    if token:
        secret = "tbk_" + secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        tokens = folder / "tokens.toml"
        tokens.write_text(f'[[tokens]]\nname = "bench"\nroles = ["admin"]\nsha256 = "{digest}"\n')
        os.environ["TASKBROKER_AUTH"] = "token"
        os.environ["TASKBROKER_TOKENS_FILE"] = str(tokens)
        os.environ[_TOKEN_ENV] = secret


def connection() -> dict[str, Any]:
    """The `tls=` and `token=` arguments of the bench's Client and Workers."""
    arguments: dict[str, Any] = {}
    if ca := os.environ.get(_TLS_CA_ENV):
        from worker_sdk import TLS

        arguments["tls"] = TLS(ca_file=ca)
    if token := os.environ.get(_TOKEN_ENV):
        arguments["token"] = token
    return arguments


def suffix() -> str:
    """What the figures' names end in: _tls, _token or both."""
    return ("_tls" if _TLS_CA_ENV in os.environ else "") + (
        "_token" if _TOKEN_ENV in os.environ else ""
    )
