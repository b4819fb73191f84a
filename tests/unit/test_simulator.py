"""The placement simulator: determinism, invariants over scenarios, metrics, traces, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from broker.domain import Placement, Task, TaskSpec
from broker.sim.scenarios import SCENARIOS, build_scenario
from broker.sim.simulator import (
    ANY_CLASS,
    ROW_KEYS,
    SimResult,
    SimTask,
    SimulationError,
    SimWorker,
    TraceError,
    WorkerChange,
    WorkerEvent,
    Workload,
    compare,
    load_trace,
    parse_workers,
    percentile,
    simulate,
    strategy_names,
)
from broker.sim.workers import Attempt, ConnectedWorker, violation
from cli.main import app

SMALL = 400  # tasks per scenario in tests: the whole file must stay well under 20 s
WORK = frozenset({"work"})


def worker(worker_id: str, capacity: int = 1, **labels: str) -> SimWorker:
    return SimWorker(worker_id=worker_id, capacity=capacity, task_types=WORK, labels=labels)


def task(at_s: float, duration_s: float = 1.0, **hints: object) -> SimTask:
    return SimTask(
        arrival_s=at_s,
        task_type="work",
        duration_s={ANY_CLASS: duration_s},
        placement=Placement(**hints),  # type: ignore[arg-type]
    )


def workload(workers: list[SimWorker], tasks: list[SimTask], **options: object) -> Workload:
    return Workload(name="test", workers=tuple(workers), tasks=tuple(tasks), **options)  # type: ignore[arg-type]


# Determinism and invariants ---------------------------------------------------


def test_same_seed_same_results() -> None:
    first = compare(build_scenario("failing-worker", tasks=SMALL, seed=7), strategy_names(), seed=7)
    again = compare(build_scenario("failing-worker", tasks=SMALL, seed=7), strategy_names(), seed=7)
    assert first == again
    other = compare(build_scenario("failing-worker", tasks=SMALL, seed=8), strategy_names(), seed=8)
    assert first != other


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenarios_lose_no_task_and_break_no_constraint(name: str) -> None:
    results = compare(build_scenario(name, tasks=SMALL, seed=3), strategy_names(), seed=3)
    assert [r.strategy for r in results] == strategy_names()
    for r in results:
        assert r.violations == 0, r.violation_examples
        assert r.completed == r.tasks == SMALL, r
        assert r.unfinished == 0
        assert 0 < r.utilisation <= 1
        assert r.throughput_per_s > 0
        assert r.wait_p50_s <= r.wait_p95_s <= r.wait_p99_s


def test_failing_worker_reports_failures() -> None:
    results = compare(build_scenario("failing-worker", tasks=SMALL, seed=1), ["round_robin"])
    assert results[0].failed > 0


def test_hot_keys_measures_sticky_hits() -> None:
    (result,) = compare(build_scenario("hot-keys", tasks=SMALL, seed=1), ["round_robin"])
    assert result.sticky_placements > 0
    assert result.sticky_hit_rate is not None
    assert 0 < result.sticky_hit_rate <= 1


def test_unknown_names() -> None:
    with pytest.raises(SimulationError, match="unknown scenario 'nope'"):
        build_scenario("nope")
    with pytest.raises(SimulationError, match="unknown strategy 'nope'"):
        compare(build_scenario("bursty", tasks=10), ["nope"])


REQUIREMENTS = [{}, {"zone": "a"}, {"gpu": "yes"}, {"zone": "a", "gpu": "yes"}, {"zone": "b"}]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacities=st.lists(st.integers(1, 3), min_size=2, max_size=4),
    specs=st.lists(
        st.tuples(
            st.floats(0, 5),
            st.floats(0.01, 2),
            st.integers(0, len(REQUIREMENTS) - 1),
            st.sampled_from(["", "g1", "g2"]),
            st.booleans(),
            st.sampled_from(["", "k1", "k2"]),
        ),
        min_size=1,
        max_size=40,
    ),
    strategy=st.sampled_from(strategy_names()),
)
def test_random_workloads_keep_every_rule(
    capacities: list[int],
    specs: list[tuple[float, float, int, str, bool, str]],
    strategy: str,
) -> None:
    # Every requirement is met by some worker, so each task has somewhere to run.
    labels = [{"zone": "a", "gpu": "yes"}, {"zone": "b"}, {"zone": "a"}, {"gpu": "yes"}]
    workers = [
        SimWorker(worker_id=f"w{i}", capacity=c, task_types=WORK, labels=labels[i])
        for i, c in enumerate(capacities)
    ]
    tasks = [
        task(
            at_s,
            duration,
            required_labels=REQUIREMENTS[required],
            anti_affinity_group=group,
            anti_affinity_soft=soft and bool(group),
            sticky_key=key,
        )
        for at_s, duration, required, group, soft, key in sorted(specs)
    ]
    result = simulate(workload(workers, tasks, sticky_timeout_s=0.5), strategy, seed=1)
    assert result.violations == 0, result.violation_examples
    assert result.completed == len(tasks)


# Metrics ------------------------------------------------------------------------


def test_one_worker_metrics() -> None:
    result = simulate(workload([worker("w")], [task(0.0), task(0.0)]), "round_robin")
    assert result.makespan_s == 2.0
    assert result.throughput_per_s == 1.0
    assert result.utilisation == 1.0
    assert result.run_mean_s == 1.0
    assert result.wait_p50_s == 0.5
    assert result.wait_p99_s == pytest.approx(0.99)


def test_percentile() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def test_idle_time_lowers_utilisation() -> None:
    result = simulate(workload([worker("a"), worker("b")], [task(0.0)]), "round_robin")
    assert result.utilisation == 0.5


def test_sticky_wait_runs_out_on_a_deadline() -> None:
    """The key's worker is busy for 1 s; the task waits its 0.3 s, then goes elsewhere.

    Nothing else happens at 0.3 s: only a wake-up from next_deadline() places it.
    """
    tasks = [task(0.0, 1.0, sticky_key="k"), task(0.0, 1.0), task(0.1, 1.0, sticky_key="k")]
    wl = workload([worker("a"), worker("b"), worker("c")], tasks, sticky_timeout_s=0.3)
    result = simulate(wl, "round_robin")
    assert result.completed == 3
    assert result.wait_p99_s == pytest.approx(0.3, abs=0.01)
    assert result.sticky_placements == 1
    assert result.sticky_hit_rate == 0.0


def test_crash_requeues_and_leave_drains() -> None:
    workers = [worker("a", 2), worker("b", 2)]
    tasks = [task(0.0, 1.0), task(0.0, 1.0), task(0.0, 1.0), task(0.0, 1.0), task(2.0, 1.0)]
    events = (
        WorkerEvent(0.5, "a", WorkerChange.CRASH),
        WorkerEvent(0.5, "b", WorkerChange.LEAVE),
        WorkerEvent(3.0, "a", WorkerChange.JOIN),
    )
    result = simulate(workload(workers, tasks, worker_events=events), "round_robin")
    # a's two tasks come back, wait for b to drain away and a to return at 3 s.
    assert result.requeued == 2
    assert result.completed == 5
    assert result.makespan_s == 5.0
    assert result.violations == 0


def test_failures_are_reported() -> None:
    flaky = SimWorker(worker_id="f", capacity=1, task_types=WORK, fail_rate=1.0)
    result = simulate(workload([flaky], [task(float(i)) for i in range(5)]), "least_loaded")
    assert (result.completed, result.failed) == (5, 5)


def test_violation_check_is_independent() -> None:
    connected = ConnectedWorker(SimWorker(worker_id="w", capacity=2, task_types=WORK), 0.0)
    plain = Task(id=1, spec=TaskSpec(task_type="work"))
    assert violation(plain, connected) is None
    other = Task(id=2, spec=TaskSpec(task_type="other"))
    assert "type" in (violation(other, connected) or "")
    gpu = Task(
        id=3, spec=TaskSpec(task_type="work", placement=Placement(required_labels={"a": "b"}))
    )
    assert "required labels a=b" in (violation(gpu, connected) or "")
    hard = Task(id=4, spec=TaskSpec(task_type="work", placement=Placement(anti_affinity_group="g")))
    soft_placement = Placement(anti_affinity_group="g", anti_affinity_soft=True)
    soft = Task(id=5, spec=TaskSpec(task_type="work", placement=soft_placement))
    connected.running[5] = Attempt(1, soft, "w", 0.0, 0.0, True)
    assert "anti-affinity" in (violation(hard, connected) or "")
    assert violation(Task(id=6, spec=soft.spec), connected) is None  # soft beside soft
    connected.running[1] = Attempt(2, plain, "w", 0.0, 0.0, True)
    assert "capacity" in (violation(Task(id=7, spec=plain.spec), connected) or "")
    connected.running.clear()
    connected.draining = True
    assert "draining" in (violation(plain, connected) or "")


def test_row_has_the_documented_keys() -> None:
    (result,) = compare(build_scenario("constraints", tasks=50), ["round_robin"])
    row = result.as_row()
    assert tuple(row) == ROW_KEYS
    assert json.loads(json.dumps(row)) == row
    assert isinstance(result, SimResult)


# Traces -------------------------------------------------------------------------


def test_json_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    path.write_text(
        json.dumps(
            {
                "workers": [
                    {"id": "fast", "capacity": 2, "class": "fast", "labels": {"gpu": "yes"}},
                    {"id": "slow", "capacity": 1, "class": "slow", "labels": "zone=a"},
                ],
                "worker_events": [{"at_s": 5, "worker": "slow", "change": "leave"}],
                "tasks": [
                    {"arrival_s": 1, "task_type": "t", "duration_s_fast": 0.1, "duration_s": 1},
                    {"arrival_s": 0, "task_type": "t", "duration_s": 2, "sticky_key": "k"},
                    {
                        "arrival_s": 0.5,
                        "task_type": "t",
                        "duration_s": 1,
                        "required_labels": "gpu=yes",
                        "anti_affinity_group": "g",
                        "priority": 5,
                    },
                ],
                "sticky_timeout_s": 1,
            }
        )
    )
    wl = load_trace(path)
    assert [t.arrival_s for t in wl.tasks] == [0, 0.5, 1]  # sorted by arrival
    assert wl.tasks[2].duration_s == {"*": 1.0, "fast": 0.1}
    assert wl.tasks[1].placement.required_labels == {"gpu": "yes"}
    assert wl.tasks[1].priority == 5
    assert wl.workers[1].labels == {"zone": "a"}
    assert wl.worker_events == (WorkerEvent(5.0, "slow", WorkerChange.LEAVE),)
    assert wl.sticky_timeout_s == 1.0
    result = simulate(wl, "least_loaded")
    assert (result.completed, result.violations) == (3, 0)


def test_csv_trace_with_workers_spec(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text(
        "arrival_s,task_type,duration_s_fast,duration_s_slow,priority,required_labels,"
        "anti_affinity_group,sticky_key,routing_key\n"
        "0,t,0.1,1,0,,,,\n"
        "0.1,t,0.1,1,3,class=slow,g,k,r\n"
        "\n"
        "0.2,u,0.2,2,,,,,\n"
    )
    wl = load_trace(path, "2x2:fast,1x1:slow")
    assert [w.worker_id for w in wl.workers] == ["fast-1", "fast-2", "slow-1"]
    assert wl.workers[2].labels == {"class": "slow"}
    assert wl.workers[0].task_types == {"t", "u"}
    result = simulate(wl, "round_robin")
    assert (result.completed, result.violations) == (3, 0)
    # Without --workers: the documented default, one class that needs duration_s.
    with pytest.raises(TraceError, match=r"line 2: no run time for worker class 'default'"):
        load_trace(path)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.csv", "arrival_s,task_type,duration_s\n0,t,1\nsoon,t,1\n", "line 3, field 'arrival_s'"),
        ("b.csv", "arrival_s,task_type,duration_s\n0,t,-1\n", "line 2, field 'duration_s'"),
        ("c.csv", "arrival_s,task_type,duration\n0,t,1\n", "line 1: unknown column 'duration'"),
        ("d.csv", "arrival_s,duration_s\n0,1\n", "line 1: missing column 'task_type'"),
        ("e.csv", "arrival_s,task_type,duration_s\n0,t,1,9\n", "line 2: more fields"),
        ("f.csv", "arrival_s,task_type\n0,t\n", "line 2, field 'duration_s': missing"),
        ("g.csv", "arrival_s,task_type,duration_s,priority\n0,t,1,5000\n", "field 'priority'"),
        (
            "h.csv",
            "arrival_s,task_type,duration_s,required_labels\n0,t,1,gpu\n",
            "line 2, field 'required_labels'",
        ),
        ("i.csv", "", "empty CSV"),
        ("j.json", '{"tasks": [\n  {"arrival_s": 0,}\n]}', "line 2, column 19: invalid JSON"),
        ("k.json", '[{"arrival_s": 0, "task_type": "t"}]', "tasks[0], field 'duration_s'"),
        ("l.json", '[{"arrival_s": 0, "task_type": "t", "duration_s": 1, "x": 1}]', "'x'"),
        ("m.json", '{"tasks": []}', "'tasks' must be a non-empty list"),
        (
            "n.json",
            '{"workers": [{"id": "w", "capacity": 0}], "tasks": '
            '[{"arrival_s": 0, "task_type": "t", "duration_s": 1}]}',
            "workers[0], field 'capacity'",
        ),
        (
            "o.json",
            '{"workers": [{"id": "w", "capacity": 1, "task_types": ["u"]}], "tasks": '
            '[{"arrival_s": 0, "task_type": "t", "duration_s": 1}]}',
            "tasks[0]: no worker takes task type 't'",
        ),
        (
            "p.json",
            '{"worker_events": [{"at_s": 1, "worker": "ghost", "change": "crash"}], "tasks": '
            '[{"arrival_s": 0, "task_type": "t", "duration_s": 1}]}',
            "unknown worker 'ghost'",
        ),
        (
            "q.json",
            '{"worker_events": [{"at_s": 1, "worker": "default-1", "change": "explode"}], '
            '"tasks": [{"arrival_s": 0, "task_type": "t", "duration_s": 1}]}',
            "worker_events[0], field 'change'",
        ),
    ],
)
def test_bad_traces_name_the_place(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError) as caught:
        load_trace(path)
    assert expected in str(caught.value)
    assert str(caught.value).startswith(str(path))


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "nothing.csv")


@pytest.mark.parametrize("spec", ["4", "x2", "0x2", "2x0", "2x2:a,1x1:a", "twox2"])
def test_bad_workers_spec(spec: str) -> None:
    with pytest.raises(SimulationError, match="workers spec"):
        parse_workers(spec, {"t"})


# The command line ---------------------------------------------------------------


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["simulate", *args])


def assert_one_line_error(result: Result, exit_code: int = 1) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_table_is_deterministic() -> None:
    args = ("heterogeneous", "--tasks", "300", "--strategies", "round_robin,least_loaded")
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "round_robin" in first.stdout
    assert "least_loaded" in first.stdout
    assert "VIOLATIONS" in first.stdout
    assert invoke(*args).stdout == first.stdout


def test_cli_json() -> None:
    result = invoke("constraints", "--tasks", "200", "--seed", "4", "--output", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["strategy"] for r in rows] == strategy_names()
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert (row["scenario"], row["seed"], row["tasks"]) == ("constraints", 4, 200)
        assert row["violations"] == 0
        assert row["completed"] == 200


def test_cli_list() -> None:
    result = invoke("--list")
    assert result.exit_code == 0, result.output
    for name in SCENARIOS:
        assert name in result.stdout
    listed = json.loads(invoke("--list", "-o", "json").stdout)
    assert [s["name"] for s in listed] == list(SCENARIOS)


def test_cli_trace(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,task_type,duration_s\n0,t,1\n0.5,t,1\n")
    result = invoke("--trace", str(path), "--workers", "1x1", "-o", "json")
    assert result.exit_code == 0, result.output
    (row, *_) = json.loads(result.stdout)
    assert (row["scenario"], row["completed"], row["makespan_s"]) == ("t.csv", 2, 2.0)


def test_cli_errors(tmp_path: Path) -> None:
    assert "unknown scenario 'nope'" in assert_one_line_error(invoke("nope"))
    line = assert_one_line_error(invoke("bursty", "--strategies", "round_robin,magic"))
    assert "unknown strategy 'magic'" in line
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,task_type,duration_s\n0,t,1\n1,t,slow\n")
    line = assert_one_line_error(invoke("--trace", str(bad)))
    assert "line 3, field 'duration_s'" in line
    assert_one_line_error(invoke(), exit_code=2)
    assert_one_line_error(invoke("bursty", "--trace", str(bad)), exit_code=2)
    assert_one_line_error(invoke("bursty", "--workers", "2x2"), exit_code=2)
    assert_one_line_error(invoke("--trace", str(bad), "--tasks", "5"), exit_code=2)
    assert_one_line_error(invoke("bursty", "--tasks", "0"), exit_code=2)


def test_cli_help() -> None:
    result = CliRunner().invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    assert "--strategies" in result.stdout
    assert "simulate" in CliRunner().invoke(app, ["--help"]).stdout


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_predictive_beats_round_robin_on_heterogeneous_workers(seed: int) -> None:
    """The README's claim: with fast and slow workers, placing by predicted finish time
    cuts the p99 response time (queue wait + run) and finishes the closing batch sooner."""
    workload = build_scenario("heterogeneous", tasks=3000, seed=seed)
    by_strategy = {
        r.strategy: r for r in compare(workload, ["round_robin", "predictive"], seed=seed)
    }
    rr, predictive = by_strategy["round_robin"], by_strategy["predictive"]
    assert predictive.violations == rr.violations == 0
    assert predictive.response_p99_s < rr.response_p99_s
    assert predictive.makespan_s < rr.makespan_s
