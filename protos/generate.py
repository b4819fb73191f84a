"""Generate the Python modules for protos/taskbroker/v1/*.proto and for KEDA's
protos/externalscaler/externalscaler.proto (which the broker serves).

The modules land flat in one package (worker_sdk/_pb by default) and import each
other relatively, so the SDK carries its own wire code and needs no top-level
``taskbroker`` (or ``externalscaler``) package. ``make protos`` runs this; a test runs it into a
temporary folder and fails if the committed modules differ.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_PACKAGE = "taskbroker/v1"
PROTO_PACKAGES = (PROTO_PACKAGE, "externalscaler")
DEFAULT_OUT = PROTO_ROOT.parent / "worker_sdk" / "_pb"
_ABSOLUTE_IMPORT = re.compile(r"^from (?:taskbroker\.v1|externalscaler) import (\w+)", re.MULTILINE)
_PYI_IMPORT = re.compile(r"^import (?:taskbroker\.v1|externalscaler)\.(\w+)$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules into out_dir and return their paths."""
    import grpc_tools

    protos = [
        p for package in PROTO_PACKAGES for p in sorted((PROTO_ROOT / package).glob("*.proto"))
    ]
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *(str(p.relative_to(PROTO_ROOT)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        sources = [src for package in PROTO_PACKAGES for src in (Path(tmp) / package).iterdir()]
        for src in sorted(sources, key=lambda path: path.name):
            text = src.read_text()
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1", text)
            text = _PYI_IMPORT.sub(r"from . import \1", text)
            if src.suffix == ".pyi":
                text = text.replace("taskbroker.v1.", "")
                text = re.sub(r"\bexternalscaler\.(externalscaler_pb2)", r"\1", text)
            dest = out_dir / src.name
            dest.write_text(text)
            written.append(dest)
        init = out_dir / "__init__.py"
        init.write_text('"""Generated protobuf and gRPC modules; run `make protos`."""\n')
        written.append(init)
        return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
