"""deploy/: every file the compose file and Dockerfile name exists, every command is real."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli._worker import load_worker
from cli.main import app

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    assert services, "compose.yaml defines no services"
    return services


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"not an exec-form command: {arguments}"
    return [str(v) for v in value]


def _build_contexts() -> list[Path]:
    contexts = []
    for service in _services().values():
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            contexts.append((DEPLOY / context).resolve())
    return contexts


def _assert_cli_command(argv: list[str]) -> None:
    assert argv[0] == "taskbroker", f"not a taskbroker command: {argv}"
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"{shlex.join(argv)} is not a valid command:\n{result.output}"
    assert "Usage" in result.output


def test_build_context_and_dockerfile_exist() -> None:
    services = _services()
    built = [s for s in services.values() if "build" in s]
    assert built, "no service builds the image"
    for service in built:
        build = service["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context.is_dir(), context
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE
        assert (context / "pyproject.toml").is_file()


@pytest.mark.parametrize("name", sorted(_services()))
def test_service_command_is_a_real_cli_command(name: str) -> None:
    command = _services()[name].get("command")
    assert command is not None, f"service {name} has no command"
    _assert_cli_command(_argv(command))


def test_worker_services_run_a_worker_object() -> None:
    targets = []
    for service in _services().values():
        argv = _argv(service["command"])
        if argv[1:3] == ["worker", "run"]:
            targets.append(argv[3])
    assert len(targets) == 2
    for target in targets:
        load_worker(target)  # raises unless it names a worker_sdk.Worker


def test_dependencies_wait_for_a_healthcheck() -> None:
    services = _services()
    instructions = dict(_dockerfile_instructions())
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if condition.get("condition") == "service_healthy":
                assert "HEALTHCHECK" in instructions
                assert not services[dependency].get("healthcheck", {}).get("disable")


def test_named_volumes_are_declared() -> None:
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    for service in _services().values():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"volume {source} is not declared"


def test_dockerfile_copy_sources_exist() -> None:
    contexts = set(_build_contexts())
    assert len(contexts) == 1
    context = contexts.pop()
    copies = [args for instruction, args in _dockerfile_instructions() if instruction == "COPY"]
    assert copies
    for arguments in copies:
        *sources, _destination = shlex.split(arguments)
        for source in sources:
            assert not source.startswith("--"), "COPY --from/--chown is not expected here"
            assert (context / source).exists(), f"COPY source {source} is missing"


def test_dockerignore_keeps_what_is_copied() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = [args for instruction, args in _dockerfile_instructions() if instruction == "COPY"]
    for arguments in copies:
        *sources, _destination = shlex.split(arguments)
        for source in sources:
            assert source.rstrip("/") in kept, f"{source} is copied but excluded from the context"


def test_dockerfile_commands_are_real_cli_commands() -> None:
    instructions = _dockerfile_instructions()
    cmd = [args for instruction, args in instructions if instruction == "CMD"]
    assert len(cmd) == 1
    _assert_cli_command(_exec_form(cmd[0]))
    healthcheck = [args for instruction, args in instructions if instruction == "HEALTHCHECK"]
    assert len(healthcheck) == 1
    _options, _, command = healthcheck[0].partition("CMD ")
    _assert_cli_command(shlex.split(command))  # shell form, to expand the port variable


def test_dockerfile_runs_as_non_root_and_exposes_the_port() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    assert instructions[0][1].startswith("python:3.11.")  # tests/unit/test_images.py: pinned
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
    assert ("EXPOSE", "50051") in instructions
