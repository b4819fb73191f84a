"""The contract suite runs against every backend in tests.support.store.BACKENDS: adding one
there is all it takes to hold it to the contract."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

import tests.support.store as store_support
from broker.storage.contract import Store
from broker.storage.memory import MemoryStore
from tests.support.store import Backend

CONTRACT_SUITE = Path(__file__).with_name("test_store_contract.py")


class WrappedMemoryStore(MemoryStore):
    """A third backend for this test: a thin wrapper around MemoryStore."""


async def open_wrapped(path: Path) -> Store:
    return WrappedMemoryStore()


class Recorder:
    """A pytest plugin for the inner run: which tests ran for which backend, and how."""

    def __init__(self) -> None:
        self.tests: dict[str, set[str]] = defaultdict(set)  # backend -> test ids without it
        self.outcomes: dict[str, str] = {}  # test id -> outcome of its call

    @pytest.hookimpl(tryfirst=True)  # before -k deselects: see every backend's tests
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            assert isinstance(item, pytest.Function)
            params = item.callspec.params if hasattr(item, "callspec") else {}
            backend = params.get("backend")
            if isinstance(backend, Backend):
                others = item.callspec.id.replace(backend.name, "<backend>", 1)
                self.tests[backend.name].add(f"{item.originalname}[{others}]")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome


def test_a_backend_added_to_the_list_gets_every_contract_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrapped = Backend("wrapped", open_wrapped)
    monkeypatch.setattr(store_support, "BACKENDS", [*store_support.BACKENDS, wrapped])
    recorder = Recorder()
    exit_code = pytest.main(
        [str(CONTRACT_SUITE), "-k", "wrapped", "-q", "-p", "no:cacheprovider"],
        plugins=[recorder],
    )
    assert exit_code == pytest.ExitCode.OK
    assert set(recorder.tests) == {"sqlite", "memory", "postgresql", "wrapped"}
    assert recorder.tests["wrapped"] == recorder.tests["sqlite"] == recorder.tests["memory"]
    assert len(recorder.tests["wrapped"]) > 30
    # Only the new backend's tests ran (-k), and every one of them passed.
    ran = {nodeid for nodeid in recorder.outcomes if "wrapped" in nodeid}
    assert len(ran) == len(recorder.tests["wrapped"])
    assert set(recorder.outcomes.values()) == {"passed"}
