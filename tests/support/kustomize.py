"""Render a Kustomize directory as `kubectl apply -k` would, for the subset of Kustomize
the manifests under deploy/k8s use: `resources` (files, and directories with their own
kustomization.yaml) and `namespace`. Any other field is an error, so that a manifest
never relies on what this renderer does not do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SUPPORTED = frozenset({"apiVersion", "kind", "namespace", "resources"})
# Kinds without a namespace, which the namespace field leaves alone.
CLUSTER_SCOPED = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
)

Resource = dict[str, Any]


class KustomizeError(Exception):
    """The directory uses what the renderer does not support, or is inconsistent."""


def render(directory: Path) -> list[Resource]:
    """The resources of the kustomization in `directory`, in order."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if not isinstance(kustomization, dict):
        raise KustomizeError(f"{directory}/kustomization.yaml is not a mapping")
    unsupported = sorted(set(kustomization) - SUPPORTED)
    if unsupported:
        raise KustomizeError(f"{directory}: unsupported field(s) {', '.join(unsupported)}")
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{directory}: not a Kustomization")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += render(path)
        elif path.is_file():
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        else:
            raise KustomizeError(f"{directory}: resource {entry} does not exist")
    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource.get("kind") not in CLUSTER_SCOPED:
                resource.setdefault("metadata", {})["namespace"] = namespace
    seen: set[tuple[str, str, str, str]] = set()
    for resource in resources:
        meta = resource.get("metadata", {})
        key = (
            resource.get("apiVersion", ""),
            resource.get("kind", ""),
            meta.get("namespace", ""),
            meta.get("name", ""),
        )
        if key in seen:
            raise KustomizeError(f"{directory}: {key[1]} {key[3]} is defined twice")
        seen.add(key)
    return resources
