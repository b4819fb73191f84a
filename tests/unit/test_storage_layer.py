"""The store sits below scheduling, the runtime, observability and the config: it imports
none of them, so any of them can use it and a backend never drags policy in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import broker

BROKER = Path(broker.__file__).parent
STORAGE_MAY_IMPORT = {
    "broker.clock",
    "broker.domain",
    "broker.errors",
    "broker.stats",
    "broker.store_url",
}


def broker_imports(path: Path) -> set[str]:
    """The broker modules a source file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "broker" or name.startswith("broker.")}


@pytest.mark.parametrize(
    "path", sorted((BROKER / "storage").glob("*.py")), ids=lambda path: path.name
)
def test_storage_imports_only_values_and_itself(path: Path) -> None:
    outside = {m for m in broker_imports(path) if not m.startswith("broker.storage")}
    assert outside <= STORAGE_MAY_IMPORT


def test_the_stored_values_import_only_the_domain() -> None:
    assert broker_imports(BROKER / "stats.py") <= {"broker.domain"}
