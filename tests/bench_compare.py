"""Before and after: `python -m tests.bench_compare BASE [--runs N] [--quick]`
(`make bench-compare BASE=path`).

BASE is a checkout of the code to compare with (say, `git worktree add --detach
../base COMMIT`). The benchmark files of this checkout are copied into BASE's tests/,
then the benchmarks run against BASE and against this checkout by turns, so that a
machine whose speed drifts treats both alike. Prints the median of each figure,
`NAME BEFORE AFTER UNIT`, and the runs themselves go to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
FILES = (
    "bench.py",
    "bench_workers.py",
    "bench_placement.py",
    "bench_observers.py",
    "bench_compare.py",
    "bench_security.py",
)
MODULES = (
    "tests.bench",
    "tests.bench_workers",
    "tests.bench_placement",
    "tests.bench_observers",
)
RUN_TIMEOUT_S = 1800


def _run(checkout: Path, quick: bool) -> dict[str, tuple[float, str]]:
    figures: dict[str, tuple[float, str]] = {}
    for module in MODULES:
        command = [sys.executable, "-m", module, *(["--quick"] if quick else [])]
        env = {"PYTHONPATH": str(checkout)}
        out = subprocess.run(
            command,
            cwd=checkout,
            env={**_environ(), **env},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        print(f"# {checkout}: {module}\n{out.stdout}", file=sys.stderr, flush=True)
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                try:
                    figures[parts[0]] = (float(parts[1]), parts[2])
                except ValueError:
                    continue
    return figures


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    base = options.base.resolve()
    for name in FILES:
        shutil.copy(HERE / "tests" / name, base / "tests" / name)
    before: dict[str, list[float]] = defaultdict(list)
    after: dict[str, list[float]] = defaultdict(list)
    units: dict[str, str] = {}
    for _ in range(options.runs):
        for checkout, figures in ((base, before), (HERE, after)):
            for name, (value, unit) in _run(checkout, options.quick).items():
                figures[name].append(value)
                units[name] = unit
    for name in units:
        old = statistics.median(before[name]) if before[name] else float("nan")
        new = statistics.median(after[name]) if after[name] else float("nan")
        print(f"{name} {old:g} {new:g} {units[name]}", flush=True)


if __name__ == "__main__":
    main()
