"""The container images' rules, checked on the Dockerfiles (no Docker engine needed): a
pinned base, dependencies installed from the hashed lock file that names every runtime
dependency, a non-root numeric user, a health check on the port the broker serves, and a
worker image whose example extension runs a real worker."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from broker.config import ENV_PREFIX, BrokerConfig
from cli._worker import load_worker

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
LOCK = DEPLOY / "requirements.lock"
BROKER_IMAGE = DEPLOY / "Dockerfile"
WORKER_IMAGE = DEPLOY / "Dockerfile.worker"
EXAMPLE = DEPLOY / "examples" / "worker"
IMAGES = (BROKER_IMAGE, WORKER_IMAGE)
# An exact release tag (python:3.11.14-slim-bookworm) or a digest.
PINNED = re.compile(r"^[\w./-]+(:\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            pairs.append((instruction.upper(), rest.strip()))
    return pairs


def arguments(dockerfile: Path, instruction: str) -> list[str]:
    return [args for name, args in instructions(dockerfile) if name == instruction]


def env(dockerfile: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in arguments(dockerfile, "ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            values[key] = value
    return values


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked() -> dict[str, str]:
    """Package name (normalised) -> the exact version the lock file pins."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", line)
        if match:
            pins[_normal(match[1])] = match[2]
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("dockerfile", [*IMAGES, EXAMPLE / "Dockerfile"], ids=lambda p: p.name)
def test_the_base_image_is_pinned(dockerfile: Path) -> None:
    (base,) = arguments(dockerfile, "FROM")
    assert PINNED.match(base), f"{base}: not an exact release tag or digest"
    assert ":" in base or "@" in base, f"{base}: a floating tag"
    assert not base.endswith(":latest")


def test_the_example_builds_on_this_versions_worker_image() -> None:
    (base,) = arguments(EXAMPLE / "Dockerfile", "FROM")
    version = project()["project"]["version"]  # type: ignore[index]
    assert base == f"taskbroker-worker:{version}"


@pytest.mark.parametrize("dockerfile", [*IMAGES, EXAMPLE / "Dockerfile"], ids=lambda p: p.name)
def test_the_image_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = arguments(dockerfile, "USER")
    if dockerfile.parent == EXAMPLE:
        assert not users, "the example keeps the base image's user"
        return
    assert users, f"{dockerfile.name} runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "Kubernetes' runAsNonRoot needs a numeric uid"
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.name)
def test_dependencies_come_from_the_hashed_lock_file(dockerfile: Path) -> None:
    runs = arguments(dockerfile, "RUN")
    copies = arguments(dockerfile, "COPY")
    assert any("deploy/requirements.lock" in copy for copy in copies)
    (from_lock,) = [run for run in runs if "-r requirements.lock" in run]
    assert "--require-hashes" in from_lock
    assert "--no-deps" in from_lock
    # The project itself adds nothing that is not locked, and builds with the locked backend.
    (project_install,) = [
        run for run in runs if "pip install --no-deps --no-build-isolation ." in run
    ]
    assert project_install
    assert len([run for run in runs if "pip install" in run]) == 2


def test_the_lock_file_names_every_runtime_dependency_in_range() -> None:
    config = project()
    meta = config["project"]
    assert isinstance(meta, dict)
    wanted = [
        *meta["dependencies"],
        *meta["optional-dependencies"]["prometheus"],
        *config["build-system"]["requires"],  # type: ignore[index]
    ]
    pins = locked()
    for text in wanted:
        requirement = Requirement(text)
        name = _normal(requirement.name)
        assert name in pins, f"{requirement.name} is not in deploy/requirements.lock: make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{requirement.name}=={pins[name]} is outside {requirement.specifier}: make lock"
        )
    # Every pin carries its hashes (pip's --require-hashes refuses the file otherwise).
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    for block in blocks:
        if re.match(r"^[A-Za-z0-9._-]+==", block):
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_the_health_check_follows_the_configured_port() -> None:
    (check,) = arguments(BROKER_IMAGE, "HEALTHCHECK")
    _options, _, command = check.partition("CMD ")
    variable = f"{ENV_PREFIX}PORT"
    assert f"127.0.0.1:${{{variable}}}" in command, "the check must follow the port setting"
    assert not command.lstrip().startswith("["), "exec form would not expand the variable"
    # The variable is the broker's own port setting, defaulting to what the image exposes.
    assert "port" in {field.name for field in dataclasses.fields(BrokerConfig)}
    assert env(BROKER_IMAGE)[variable] == str(BrokerConfig().port)
    assert arguments(BROKER_IMAGE, "EXPOSE") == [env(BROKER_IMAGE)[variable]]
    (serve,) = arguments(BROKER_IMAGE, "CMD")
    assert "--port" not in json.loads(serve), "a --port flag would beat the variable"


def test_the_worker_image_runs_a_worker_and_the_example_extends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (entrypoint,) = arguments(WORKER_IMAGE, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["taskbroker", "worker", "run"]
    assert arguments(WORKER_IMAGE, "HEALTHCHECK") == ["NONE"]
    assert env(WORKER_IMAGE)["TASKBROKER_ADDR"]
    (default,) = arguments(WORKER_IMAGE, "CMD")
    load_worker(json.loads(default)[0])
    (target, *flags) = json.loads(arguments(EXAMPLE / "Dockerfile", "CMD")[0])
    monkeypatch.chdir(EXAMPLE)
    monkeypatch.setattr(sys, "path", [str(EXAMPLE), *sys.path])
    worker = load_worker(target)
    assert "checksum" in worker.task_types
    assert flags == ["--pool", worker.pool]
    for copy in arguments(EXAMPLE / "Dockerfile", "COPY"):
        *sources, _destination = [w for w in shlex.split(copy) if not w.startswith("--")]
        for source in sources:
            assert (EXAMPLE / source).exists(), source


@pytest.mark.parametrize("dockerfile", IMAGES, ids=lambda p: p.name)
def test_the_build_context_keeps_what_is_copied(dockerfile: Path) -> None:
    ignore = (DEPLOY / f"{dockerfile.name}.dockerignore").read_text().split()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for copy in arguments(dockerfile, "COPY"):
        *sources, _destination = shlex.split(copy)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
            assert source.rstrip("/") in kept, f"{source} is copied but left out of the context"
