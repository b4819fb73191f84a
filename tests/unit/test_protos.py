"""The committed generated modules are exactly what `make protos` produces."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "protos_generate", ROOT / "protos" / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["protos_generate"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    generator = _load_generator()
    paths: list[Path] = generator.generate(tmp_path / "pb")
    generated = {p.name: p.read_text() for p in paths}
    committed_dir = ROOT / "worker_sdk" / "_pb"
    committed = {p.name: p.read_text() for p in committed_dir.iterdir() if p.is_file()}
    assert sorted(generated) == sorted(committed), "run `make protos`: files differ"
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"run `make protos`: {', '.join(stale)} differ from the .proto files"
