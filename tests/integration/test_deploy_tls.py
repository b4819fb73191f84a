"""deploy/: the development CA script's certificates and tokens work with the settings
the Dockerfile gives the broker, and the image's health check still answers SERVING."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType

from broker import Broker, load_config
from tests.support.cli import invoke
from worker_sdk import TLS, Client

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_dev_ca", DEPLOY / "make_dev_ca.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dockerfile_env(secrets: Path) -> dict[str, str]:
    """The ENV of the Dockerfile, with /secrets where the script wrote its files."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value.replace("/secrets", str(secrets))
    return env


def _healthcheck(port: int) -> list[str]:
    """The HEALTHCHECK's command (shell form, so that the port variable expands), as the
    shell would split it with TASKBROKER_PORT set."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    (line,) = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    command = line.partition("CMD ")[2].replace("${TASKBROKER_PORT}", str(port))
    return shlex.split(command)


async def test_the_dev_ca_and_tokens_serve_the_dockerfiles_settings(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    _script().main([str(secrets), "--client", "ops.example"])
    env = _dockerfile_env(secrets)
    assert env["TASKBROKER_AUTH"] == "token"
    config = load_config(None, env, port=0, db_path=str(tmp_path / "broker.db"))
    assert config.tls_cert_file == str(secrets / "broker.pem")
    admin_secret = (secrets / "admin.token").read_text().strip()
    worker_secret = (secrets / "worker.token").read_text().strip()
    assert admin_secret not in (secrets / "tokens.toml").read_text()
    async with Broker(config) as broker:
        argv = _healthcheck(broker.port)
        assert argv[:2] == ["taskbroker", "health"]
        args = argv[1:]
        health = await asyncio.to_thread(
            invoke, *args, env={"TASKBROKER_TLS_CA": env["TASKBROKER_TLS_CA"]}
        )
        assert health.exit_code == 0, health.output
        assert health.stdout.strip() == "SERVING"
        tls = TLS(ca_file=env["TASKBROKER_TLS_CA"])
        async with Client(broker.address, tls=tls, token=admin_secret) as admin:
            assert {t.name for t in await admin.list_tokens()} == {"admin", "worker"}
        async with Client(broker.address, tls=tls, token=worker_secret) as worker:
            me = await worker.whoami()
            assert (me.name, me.roles, me.pools) == ("worker", ("worker",), ("default",))
    assert (secrets / "ops.example.pem").is_file()
