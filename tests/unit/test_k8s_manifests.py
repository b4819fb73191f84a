"""deploy/k8s: each overlay renders (as `kubectl apply -k` would), every resource is valid
against the Kubernetes schemas (kubernetes-validate, strict, offline) or KEDA's
ScaledObject schema (vendored in tests/schemas), and what they name fits together: the
images the Dockerfiles build, the ports the broker serves, probes on those ports, the
secrets deploy/README.md documents, worker commands that load real workers, ScaledObjects
the broker's scaler accepts, and termination grace periods longer than the drains."""

from __future__ import annotations

import copy
import inspect
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from broker.config import load_config
from broker.server.keda import TARGET_PER_REPLICA, parse_metadata
from cli._worker import load_worker
from cli.main import app
from tests.support.kustomize import KustomizeError, Resource, render
from worker_sdk import Worker

ROOT = Path(__file__).resolve().parent.parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("sqlite", "postgres")
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KEDA_SCHEMA = ROOT / "tests" / "schemas" / "keda-scaledobject-v1alpha1.json"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Each image the manifests run, and the Dockerfile (and build folder) that builds it.
IMAGES = {
    "taskbroker": ROOT / "deploy" / "Dockerfile",
    "taskbroker-worker": ROOT / "deploy" / "Dockerfile.worker",
    "taskbroker-example-worker": ROOT / "deploy" / "examples" / "worker" / "Dockerfile",
}
SECRETS_DOC = ROOT / "deploy" / "README.md"
WORKER_DRAIN_GRACE_S = inspect.signature(Worker.shutdown).parameters["grace"].default


def rendered(overlay: str) -> list[Resource]:
    return render(K8S / overlay)


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    (found,) = [r for r in of_kind(resources, kind) if r["metadata"]["name"] == name]
    return found


def workloads(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] in ("Deployment", "StatefulSet")]


def containers(workload: Resource) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return spec


def pod_labels(workload: Resource) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def image_instruction(image: str, instruction: str) -> str:
    """The image's last `instruction`, or the one it inherits from its base image when the
    base is one of ours."""
    text = re.sub(r"\\\n", " ", IMAGES[image].read_text())
    found = {}
    for line in text.splitlines():
        name, _, rest = line.strip().partition(" ")
        if name.upper() in (instruction, "FROM"):
            found[name.upper()] = rest.strip()
    if instruction in found:
        return found[instruction]
    base = found["FROM"].partition(":")[0]
    return image_instruction(base, instruction) if base in IMAGES else ""


def closed(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones (the
    API server would silently prune them: a typo would be lost)."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def broker_config(resources: list[Resource], container: dict[str, Any], tmp: Path) -> Any:
    """The BrokerConfig the broker container starts with: the ConfigMap's file at the
    path its args name, and its environment."""
    argv = container["args"]
    config_path = argv[argv.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[config_path]
    configmap = one(resources, "ConfigMap", "taskbroker-config")
    text = configmap["data"][mount["subPath"]]
    path = tmp / "taskbroker.toml"
    path.write_text(text)
    environment = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
    if "TASKBROKER_DB_PATH" not in environment:  # from a secret: any URL will do here
        environment["TASKBROKER_DB_PATH"] = str(tmp / "from-secret.db")
    return load_config(path, environment)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[Resource]:
    return rendered(request.param)


def test_the_renderer_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\npatches: []\n")
    with pytest.raises(KustomizeError, match="patches"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml, a.yaml]\n")
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n")
    with pytest.raises(KustomizeError, match="twice"):
        render(tmp_path)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", OVERLAYS)
def test_every_kubernetes_resource_is_valid(name: str, version: str) -> None:
    resources = [r for r in rendered(name) if r["apiVersion"] != "keda.sh/v1alpha1"]
    kinds = {r["kind"] for r in resources}
    assert {"Namespace", "Service", "ConfigMap", "Deployment", "PodDisruptionBudget"} <= kinds
    for resource in resources:
        kubernetes_validate.validate(resource, version, strict=True)


def test_a_mistyped_field_is_caught() -> None:
    resource = copy.deepcopy(one(rendered("sqlite"), "StatefulSet", "taskbroker"))
    resource["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(resource, KUBERNETES_VERSIONS[-1], strict=True)
    scaled = copy.deepcopy(of_kind(rendered("sqlite"), "ScaledObject")[0])
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, closed(json.loads(KEDA_SCHEMA.read_text())))


def test_scaled_objects_are_valid_for_keda_and_the_broker(overlay: list[Resource]) -> None:
    schema = closed(json.loads(KEDA_SCHEMA.read_text()))
    scaled_objects = of_kind(overlay, "ScaledObject")
    deployments = {d["metadata"]["name"]: d for d in of_kind(overlay, "Deployment")}
    service = one(overlay, "Service", "taskbroker")
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    namespace = service["metadata"]["namespace"]
    pools = set(broker_pools(overlay))
    assert scaled_objects
    served = set()
    for scaled in scaled_objects:
        jsonschema.validate(scaled, schema)
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        assert scaled["spec"]["minReplicaCount"] == 0  # scale to zero
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "external-push"  # StreamIsActive: woken at once
        assert trigger["metricType"] == "AverageValue"  # ceil(workers / 1) replicas
        metadata = trigger["metadata"]
        assert metadata["scalerAddress"] == (
            f"{service['metadata']['name']}.{namespace}.svc.cluster.local:{grpc_port}"
        )
        query = parse_metadata(metadata)  # what the broker's scaler reads
        assert query.pool in pools
        assert TARGET_PER_REPLICA == 1
        (worker,) = containers(target)
        assert worker_pool(worker) == query.pool
        served.add(query.pool)
    assert served == pools, "every pool has its scaled workers"


def broker_pools(resources: list[Resource]) -> list[str]:
    text = one(resources, "ConfigMap", "taskbroker-config")["data"]["taskbroker.toml"]
    return list(tomllib.loads(text)["pools"])


def worker_pool(container: dict[str, Any]) -> str:
    args = container["args"]
    pool: str = args[args.index("--pool") + 1]
    return pool


def test_images_are_the_ones_the_dockerfiles_build(overlay: list[Resource]) -> None:
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        for container in containers(workload):
            name, _, tag = container["image"].partition(":")
            assert name in IMAGES, f"{container['image']}: no Dockerfile builds it"
            assert tag == VERSION, f"{container['image']}: tag it with the version"
            uid = image_instruction(name, "USER")
            assert pod["securityContext"]["runAsUser"] == int(uid.partition(":")[0])
            assert pod["securityContext"]["runAsNonRoot"] is True
            requests = container["resources"]["requests"]
            assert requests["cpu"]
            assert requests["memory"]


def test_containers_run_real_commands(
    overlay: list[Resource], monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    for workload in workloads(overlay):
        for container in containers(workload):
            name = container["image"].partition(":")[0]
            entrypoint = image_instruction(name, "ENTRYPOINT")
            argv = [*(json.loads(entrypoint) if entrypoint else []), *container["args"]]
            assert argv[0] == "taskbroker"
            result = runner.invoke(app, [*argv[1:], "--help"])
            assert result.exit_code == 0, f"{shlex.join(argv)}:\n{result.output}"
            if argv[1:3] == ["worker", "run"]:
                folder = IMAGES[name].parent
                monkeypatch.chdir(folder)
                monkeypatch.setattr(sys, "path", [str(folder), *sys.path])
                worker = load_worker(argv[3])
                assert worker.pool == worker_pool(container)


def test_ports_and_probes_fit_together(overlay: list[Resource], tmp_path: Path) -> None:
    service = one(overlay, "Service", "taskbroker")
    (broker,) = [
        w for w in workloads(overlay) if selects(service["spec"]["selector"], pod_labels(w))
    ]
    (container,) = containers(broker)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = broker_config(overlay, container, tmp_path)
    assert ports["grpc"] == config.port
    assert ports["metrics"] == config.prometheus_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container[probe]["grpc"]  # native gRPC, on the health service
        assert grpc_probe["port"] == config.port
        assert grpc_probe.get("service", "") == ""
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports
        assert port["port"] == ports[port["targetPort"]]
    # Liveness outlasts a drain, in which the health service says NOT_SERVING.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > config.shutdown_grace_s
    address = f"{service['metadata']['name']}:{ports['grpc']}"
    for workload in workloads(overlay):
        for worker in containers(workload):
            if workload is not broker:
                assert env_of(worker)["TASKBROKER_ADDR"] == address
                assert not selects(service["spec"]["selector"], pod_labels(workload))


def test_termination_grace_outlasts_the_drains(overlay: list[Resource], tmp_path: Path) -> None:
    for workload in workloads(overlay):
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        (container,) = containers(workload)
        if "--config" in container["args"]:
            drain = broker_config(overlay, container, tmp_path).shutdown_grace_s
        else:
            drain = WORKER_DRAIN_GRACE_S
        assert grace > drain, f"{workload['metadata']['name']}: {grace} s <= drain {drain} s"


def test_secrets_and_volumes_are_documented_and_mounted(overlay: list[Resource]) -> None:
    documented = SECRETS_DOC.read_text()
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        mounted = set()
        for container in containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, mount["name"]
                mounted.add(mount["name"])
                secret = volumes.get(mount["name"], {}).get("secret")
                if secret:
                    name = secret["secretName"]
                    assert f"`{name}`" in documented, f"secret {name}: not in deploy/README.md"
                    assert f"`{mount['mountPath']}`" in documented, mount["mountPath"]
            for value in env_of(container).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    ref = value["secretKeyRef"]
                    assert f"`{ref['name']}`" in documented, f"secret {ref['name']}"
        assert mounted == set(volumes) | claims, "a volume nobody mounts"


def test_the_broker_variants_keep_their_stores_apart(tmp_path: Path) -> None:
    sqlite = rendered("sqlite")
    (statefulset,) = of_kind(sqlite, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1  # one writer of the SQLite file
    (container,) = containers(statefulset)
    db_path = Path(broker_config(sqlite, container, tmp_path).db_path)
    data = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert data[str(db_path.parent)] == claim["metadata"]["name"]
    postgres = rendered("postgres")
    broker = one(postgres, "Deployment", "taskbroker")
    assert broker["metadata"]["annotations"]["taskbroker.dev/requires-store"] == "postgresql"
    assert broker["spec"]["replicas"] > 1
    (container,) = containers(broker)
    assert "secretKeyRef" in env_of(container)["TASKBROKER_DB_PATH"]
    for resources in (sqlite, postgres):
        (budget,) = of_kind(resources, "PodDisruptionBudget")
        brokers = [
            w
            for w in workloads(resources)
            if selects(budget["spec"]["selector"]["matchLabels"], pod_labels(w))
        ]
        assert [b["metadata"]["name"] for b in brokers] == ["taskbroker"]


def test_the_service_monitor_scrapes_the_metrics_port() -> None:
    (monitor,) = rendered("monitoring")
    service = one(rendered("sqlite"), "Service", "taskbroker")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in names


def _all_files() -> Iterator[Path]:
    yield from K8S.rglob("*.yaml")


def test_every_manifest_file_is_rendered_by_some_overlay() -> None:
    used: set[Path] = set()

    def collect(directory: Path) -> None:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        used.add(directory / "kustomization.yaml")
        for entry in kustomization.get("resources", []):
            path = (directory / entry).resolve()
            if path.is_dir():
                collect(path)
            else:
                used.add(path)

    for name in (*OVERLAYS, "monitoring"):
        collect((K8S / name).resolve())
    assert set(p.resolve() for p in _all_files()) == used
