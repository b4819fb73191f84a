"""The CLI over TLS with tokens: `--tls-ca`, `TASKBROKER_TOKEN`, `--token-file` and
`taskbroker tokens create|list|revoke|whoami` against a broker that requires them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import Result

from broker import Broker
from broker.auth import digest
from tests.support.cli import assert_one_line_error, invoke
from tests.support.config import make_config
from tests.support.pki import Pki, make_pki

ADMIN_SECRET = "tbk_cli-admin-secret"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
async def broker(tmp_path: Path, pki: Pki) -> AsyncIterator[Broker]:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "ops"\nroles = ["admin"]\nsha256 = "{digest(ADMIN_SECRET)}"\n'
    )
    config = make_config(
        tmp_path,
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        auth="token",
        tokens_file=str(tokens),
    )
    async with Broker(config) as running:
        yield running


async def cli(broker: Broker, pki: Pki, *args: str, token: str | None = None) -> Result:
    env: dict[str, str | None] = {"TASKBROKER_TOKEN": token}
    return await asyncio.to_thread(
        invoke, "--tls-ca", str(pki.ca_file), *args, "--broker", broker.address, env=env
    )


async def test_tokens_are_created_listed_used_and_revoked(
    broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    created = await cli(
        broker,
        pki,
        "tokens",
        "create",
        "ci",
        "--role",
        "submit",
        "--pool",
        "other",
        token=ADMIN_SECRET,
    )
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert secret.startswith("tbk_")
    assert "shown this once" in created.stderr

    listed = await cli(broker, pki, "tokens", "list", "-o", "json", token=ADMIN_SECRET)
    assert listed.exit_code == 0, listed.output
    tokens = {t["name"]: t for t in json.loads(listed.stdout)}
    assert tokens["ci"]["roles"] == ["submit"]
    assert tokens["ci"]["pools"] == ["other"]
    assert tokens["ops"]["from_file"] is True
    assert secret not in listed.stdout
    assert ADMIN_SECRET not in listed.stdout

    token_file = tmp_path / "ci.token"
    token_file.write_text(secret + "\n")
    me = await asyncio.to_thread(
        invoke,
        "--tls-ca",
        str(pki.ca_file),
        "--token-file",
        str(token_file),
        "tokens",
        "whoami",
        "--broker",
        broker.address,
        env={"TASKBROKER_TOKEN": None},
    )
    assert me.exit_code == 0, me.output
    assert me.stdout.startswith("ci (token): roles submit; pools other")

    submitted = await cli(broker, pki, "submit", "x", "--pool", "other", token=secret)
    assert submitted.exit_code == 0, submitted.output
    shown = await cli(
        broker, pki, "tasks", "show", submitted.stdout.strip(), "-o", "json", token=secret
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["submitter"] == "ci"
    refused = await cli(broker, pki, "submit", "x", "--pool", "default", token=secret)
    line = assert_one_line_error(refused)
    assert "not allowed to use pool 'default'" in line

    revoked = await cli(broker, pki, "tokens", "revoke", "ci", token=ADMIN_SECRET)
    assert revoked.exit_code == 0, revoked.output
    after = await cli(broker, pki, "tokens", "whoami", token=secret)
    line = assert_one_line_error(after)
    assert "not valid" in line
    assert secret not in after.output


async def test_a_command_without_a_token_is_told_so_in_one_line(broker: Broker, pki: Pki) -> None:
    result = await cli(broker, pki, "tasks", "list")
    line = assert_one_line_error(result)
    assert "credentials required" in line


async def test_health_over_tls_needs_no_token(broker: Broker, pki: Pki) -> None:
    result = await cli(broker, pki, "health")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "SERVING"


async def test_only_an_admin_creates_tokens(broker: Broker, pki: Pki) -> None:
    created = await cli(
        broker, pki, "tokens", "create", "reader", "--role", "read", token=ADMIN_SECRET
    )
    secret = created.stdout.strip()
    result = await cli(broker, pki, "tokens", "create", "sneaky", "--role", "admin", token=secret)
    line = assert_one_line_error(result)
    assert "reader has no role that may do this" in line
