"""`make lint`'s buf checks catch what would break v1: protos/breaking.sh (buf breaking
against the frozen first v1 and the previous commit) and buf lint, run on copies of the
repository's protos with a change made to them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.conformance import FROZEN_PROTOS, ROOT, buf

TASK_FIELD = "message Task {\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository holding the protos (with buf.yaml and breaking.sh) and the frozen
    v1, committed once."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", root / "protos", ignore=shutil.ignore_patterns("*.py"))
    shutil.copytree(FROZEN_PROTOS, root / "tests" / "conformance" / "frozen_v1")
    git(root, "init", "-q")
    commit(root, "v1")
    return root


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def edit(repo: Path, name: str, old: str, new: str) -> None:
    path = repo / "protos" / "taskbroker" / "v1" / name
    text = path.read_text()
    assert old in text, f"{old!r} not in {name}"
    path.write_text(text.replace(old, new, 1))


def breaking(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["protos/breaking.sh"],
        cwd=repo,
        env={"BUF": buf(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_the_protos_as_they_are_pass(repo: Path) -> None:
    done = breaking(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no previous commit" in done.stdout  # one commit: frozen_v1 only


@pytest.mark.parametrize(
    ("name", "old", "new", "reported"),
    [
        ("tasks.proto", "string worker_id = 5;", "string worker_id = 95;", "worker_id"),
        ("tasks.proto", "string worker_id = 5;", "string holder_id = 5;", "worker_id"),
        ("tasks.proto", "string worker_id = 5;", "bytes worker_id = 5;", "worker_id"),
        ("worker.proto", "  uint32 capacity = 1;\n}", "  int32 capacity = 1;\n}", "capacity"),
        ("tasks.proto", "  TASK_STATE_DEAD_LETTER = 7;\n", "", 'enum value "7"'),
        (
            "admin.proto",
            "  rpc Recommend(RecommendRequest) returns (RecommendResponse);\n",
            "",
            "Recommend",
        ),
    ],
    ids=["renumbered", "renamed", "retyped", "resigned", "enum-value-removed", "rpc-removed"],
)
def test_a_breaking_change_to_v1_is_caught(
    repo: Path, name: str, old: str, new: str, reported: str
) -> None:
    edit(repo, name, old, new)
    done = breaking(repo)
    assert done.returncode != 0, done.stdout
    assert reported in done.stdout + done.stderr


def test_additions_and_language_options_pass(repo: Path) -> None:
    edit(repo, "tasks.proto", TASK_FIELD, TASK_FIELD + "  bool probe_flag = 900;\n")
    edit(
        repo,
        "tasks.proto",
        "  TASK_STATE_DEAD_LETTER = 7;\n",
        "  TASK_STATE_DEAD_LETTER = 7;\n  TASK_STATE_PAUSED = 8;\n",
    )
    edit(
        repo,
        "worker.proto",
        "package taskbroker.v1;\n",
        # The language options v1 was published without are covered by the protos as
        # they are: they carry them and frozen_v1 does not.
        "package taskbroker.v1;\n\nmessage Ping {}\n",
    )
    edit(
        repo,
        "worker.proto",
        "  rpc Connect(stream WorkerMessage) returns (stream BrokerMessage);\n",
        "  rpc Connect(stream WorkerMessage) returns (stream BrokerMessage);\n"
        "  rpc Probe(Ping) returns (Ping);\n",
    )
    commit(repo, "additions")
    done = breaking(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no previous commit" not in done.stdout


def test_a_field_added_since_v1_is_pinned_by_the_previous_commit(repo: Path) -> None:
    edit(repo, "tasks.proto", TASK_FIELD, TASK_FIELD + "  string note = 901;\n")
    commit(repo, "a new field")
    edit(repo, "tasks.proto", "string note = 901;", "string note = 902;")
    commit(repo, "the new field renumbered")
    # v1 as first published has no `note`: only the comparison with HEAD~1 sees the change.
    done = breaking(repo)
    assert done.returncode != 0, done.stdout
    assert "note" in done.stdout + done.stderr


def test_a_shallow_clone_compares_with_the_frozen_v1_only(repo: Path, tmp_path: Path) -> None:
    commit_empty = ["commit", "-q", "--allow-empty", "-m", "second"]
    git(repo, *commit_empty)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(clone))
    done = breaking(clone)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no previous commit" in done.stdout


def test_lint_waives_v1_naming_only_in_v1(repo: Path) -> None:
    lint = [buf(), "lint", "protos"]
    done = subprocess.run(lint, cwd=repo, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    v2 = repo / "protos" / "taskbroker" / "v2"
    v2.mkdir()
    (v2 / "tasks.proto").write_text(
        'syntax = "proto3";\n\npackage taskbroker.v2;\n\n'
        "message GetTaskRequest {\n  string task_id = 1;\n}\n\n"
        "message Task {\n  string id = 1;\n}\n\n"
        "service TaskService {\n  rpc Get(GetTaskRequest) returns (Task);\n}\n"
    )
    done = subprocess.run(lint, cwd=repo, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode != 0, done.stdout
    assert "taskbroker/v2/tasks.proto" in done.stdout
    assert "should be named" in done.stdout
