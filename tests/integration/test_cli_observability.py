"""The observability commands without a broker: `stats --watch`, `metrics history`,
`pools recommend`, `config reload|history` and `serve --log-format/--log-level`, against a
stand-in for SyncClient that records what it was asked."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from broker import BrokerConfig
from cli import _common as cli_common
from cli import _serve, _watch
from cli._chart import bar_chart, bars, merge_columns
from cli._observe import change_text, config_change_dict, metric_point_dict, timeline
from cli._output_pools import stats_dict
from cli._parse import parse_duration, parse_whole_seconds, time_or_duration
from tests.support.cli import assert_one_line_error, invoke
from worker_sdk import ConfigChange, MetricPoint, PoolRecommendation, PoolStats, Stats

T0 = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)


def point(minute: int, completed: int = 10, run_p99_s: float = 2.0, **fields: Any) -> MetricPoint:
    values: dict[str, Any] = {
        "start": T0 + timedelta(minutes=minute),
        "bucket_s": 60,
        "pool": "default",
        "task_type": "",
        "worker_id": "",
        "submitted": completed + 2,
        "completed": completed,
        "failed": 1 if completed else 0,
        "wait_mean_s": 0.05,
        "wait_p50_s": 0.04,
        "wait_p99_s": 0.3,
        "run_mean_s": 1.5,
        "run_p50_s": 1.25,
        "run_p99_s": run_p99_s,
    }
    values.update(fields)
    return MetricPoint(**values)


# Minute 2 has no row: nothing happened then.
HISTORY = [point(0, 8, 1.0), point(1, 16, 4.0), point(3, 4, 2.0), point(4, 0, 0.0)]

RECOMMENDATIONS = [
    PoolRecommendation(
        pool="default",
        current_workers=2,
        recommended_workers=4,
        arrival_rate_per_s=4.5,
        mean_run_s=1.2,
        slots_per_worker=2.0,
        servers=7,
        utilisation=0.77,
        expected_wait_s=0.35,
        probability_of_wait=0.412,
        method="holt",
        reasoning=("forecast 4.5/s for the next 15 min", "7 slots: Erlang C wait 0.35 s"),
    ),
    PoolRecommendation(
        pool="gpu",
        current_workers=3,
        recommended_workers=3,
        arrival_rate_per_s=0.1,
        mean_run_s=20.0,
        slots_per_worker=1.0,
        servers=3,
        utilisation=0.67,
        expected_wait_s=4.0,
        probability_of_wait=0.3,
        method="mean",
    ),
]

UPDATE = ConfigChange(
    at=T0,
    who="alice:42",
    source="update_pool",
    pool="gpu",
    before={"strategy": "round_robin", "max_queue": 0, "bulkheads": []},
    after={"strategy": "least_loaded", "max_queue": 500, "bulkheads": [{"task_type": "r"}]},
    fields=("strategy", "max_queue", "bulkheads"),
)
CREATE = ConfigChange(
    at=T0,
    who="config file",
    source="create_pool",
    pool="batch",
    before=None,
    after={"strategy": "round_robin"},
    fields=("strategy",),
)

LIVE_POOL = PoolStats(
    pool="default",
    strategy="round_robin",
    pending=5,
    active=2,
    succeeded=100,
    failed=3,
    cancelled=0,
    workers=2,
    capacity=8,
    unschedulable=0,
    throughput_per_s=3.25,
    wait_p50_s=0.012,
    wait_p99_s=0.4,
    run_p50_s=1.5,
    run_p99_s=12.5,
    oldest_pending_age_s=754.0,
)
IDLE_POOL = PoolStats("gpu", "least_loaded", 0, 0, 0, 0, 0, 0, 0, 0)


class ObservingClient:
    """Stands in for SyncClient: answers from class-level data and records each call."""

    calls: list[tuple[str, dict[str, Any]]] = []
    history: list[MetricPoint] = HISTORY
    recommendations: list[PoolRecommendation] = RECOMMENDATIONS
    reloaded: list[ConfigChange] = []
    changes: list[ConfigChange] = [UPDATE, CREATE]
    statistics: list[Stats | BaseException] = []  # one per stats() call, then the last again

    def __init__(self, address: str) -> None:
        self.address = address

    def __enter__(self) -> ObservingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def metrics_history(self, **options: Any) -> list[MetricPoint]:
        self.calls.append(("metrics_history", options))
        return self.history

    def recommend(self, **options: Any) -> list[PoolRecommendation]:
        self.calls.append(("recommend", options))
        return self.recommendations

    def reload_config(self) -> list[ConfigChange]:
        self.calls.append(("reload_config", {}))
        return self.reloaded

    def config_history(self, **options: Any) -> list[ConfigChange]:
        self.calls.append(("config_history", options))
        return self.changes

    def stats(self) -> Stats:
        self.calls.append(("stats", {}))
        answers = self.statistics
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> type[ObservingClient]:
    monkeypatch.setattr(cli_common, "SyncClient", ObservingClient)
    monkeypatch.setattr(ObservingClient, "calls", [])
    monkeypatch.setattr(ObservingClient, "statistics", [Stats("running", (LIVE_POOL, IDLE_POOL))])
    return ObservingClient


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits of `stats --watch`, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(_watch, "sleep", waited.append)
    return waited


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout


def table_rows(shown: str, first_cells: set[str]) -> dict[str, list[str]]:
    """The first table's rows by their first cell, split at whitespace."""
    rows: dict[str, list[str]] = {}
    for line in shown.splitlines():
        cells = line.split()
        if cells[:1] and cells[0] in first_cells:
            rows.setdefault(cells[0], cells[1:])
    return rows


# -- durations and times -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172_800),
        ("1w", 604_800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("250ms", 0.25),
        ("90", 90),
        ("0.5", 0.5),
        (" 5M ", 300),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_time_or_duration() -> None:
    assert time_or_duration("2h", "--since") == timedelta(hours=2)
    assert time_or_duration("2030-01-02T12:00:00+00:00", "--since") == T0
    local = time_or_duration("2030-01-02T12:00", "--since")
    assert isinstance(local, datetime)
    assert local.tzinfo is not None  # local time, made aware
    assert parse_whole_seconds("5m") == 300
    assert parse_whole_seconds(60) == 60  # a default, as typer passes it


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "5x"], "'--since': expected a duration such as 30s, 5m, 1h, 2d"),
        (["--since", "yesterday"], "or an ISO 8601 time such as 2030-01-02T03:04:05+00:00"),
        (["--since", "0s"], "'--since': must be more than 0 seconds, got '0s'"),
        (["--since", "-5"], "'--since': must be more than 0 seconds"),
        (["--since", "1h5"], "'--since': expected a duration"),
        (["--until", "2030-13-01"], "'--until': expected a duration"),
        (["--since", "10m", "--until", "1h"], "'--since': must be before --until"),
        (
            ["--since", "2030-01-02T12:00+00:00", "--until", "2030-01-02T11:00+00:00"],
            "'--since': must be before --until",
        ),
        (["--bucket", "1.5s"], "'--bucket': must be a whole number of seconds, got '1.5s'"),
        (["--bucket", "soon"], "'--bucket': expected a duration such as 30s"),
        (["--bucket", "0"], "'--bucket': must be more than 0 seconds"),
        (["--bucket", "99999999999d"], "'--bucket': '99999999999d' is too long"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "-",
)
def test_bad_metrics_history_flags_are_usage_errors(
    client: type[ObservingClient], args: list[str], expected: str
) -> None:
    line = assert_one_line_error(invoke("metrics", "history", *args), 2)
    assert expected in line
    assert client.calls == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pools", "recommend", "--target-wait", "0"], "'--target-wait': must be more than 0"),
        (["pools", "recommend", "--horizon", "soon"], "'--horizon': expected a duration"),
        (["config", "history", "--limit", "0"], "'--limit': must be 1 or more, got 0"),
        (["stats", "--interval", "5"], "'--interval': needs --watch"),
        (["stats", "--count", "3"], "'--count': needs --watch"),
        (["stats", "--watch", "--interval", "10ms"], "'--interval': must be at least 0.1"),
        (["stats", "--watch", "--count", "0"], "'--count': must be 1 or more, got 0"),
        (["serve", "--log-format", "xml"], "'--log-format'"),
        (["serve", "--log-level", "loud"], "'--log-level'"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else "-",
)
def test_bad_flags_are_usage_errors(
    client: type[ObservingClient], args: list[str], expected: str
) -> None:
    line = assert_one_line_error(invoke(*args), 2)
    assert expected in line
    assert client.calls == []


# -- metrics history -----------------------------------------------------------------------


def test_metrics_history_passes_the_filters(client: type[ObservingClient]) -> None:
    ok(invoke("metrics", "history"))
    ok(
        invoke(
            "metrics",
            "history",
            *("--pool", "gpu", "--type", "render", "--worker", "w-1"),
            *("--since", "2h", "--bucket", "5m"),
        )
    )
    ok(
        invoke(
            "metrics",
            "history",
            *("--since", "2030-01-02T12:00:00+00:00", "--until", "2030-01-02T14:00:00+00:00"),
        )
    )
    ok(invoke("metrics", "history", "--since", "1d", "--until", "30m"))
    plain, filtered, absolute, relative = client.calls
    everything = {"pool": None, "task_type": None, "worker_id": None, "since": None}
    assert plain == ("metrics_history", {**everything, "until": None, "bucket_s": 0})
    assert filtered == (
        "metrics_history",
        {
            "pool": "gpu",
            "task_type": "render",
            "worker_id": "w-1",
            "since": timedelta(hours=2),
            "until": None,
            "bucket_s": 300,
        },
    )
    assert absolute[1]["since"] == T0
    assert absolute[1]["until"] == T0 + timedelta(hours=2)
    # A duration for --until is that long ago, as a time; --since stays a duration.
    assert relative[1]["since"] == timedelta(days=1)
    until = relative[1]["until"]
    assert isinstance(until, datetime)
    assert abs(until - (datetime.now(UTC) - timedelta(minutes=30))) < timedelta(seconds=30)


def test_metrics_history_table(client: type[ObservingClient]) -> None:
    shown = ok(invoke("metrics", "history", "--no-chart"))
    lines = shown.splitlines()
    assert lines[0].strip() == "per 1m"
    header = next(line for line in lines if "SUBMITTED" in line)
    assert header.split() == [
        *("TIME", "SUBMITTED", "COMPLETED", "FAILED"),
        *("WAIT", "MEAN", "WAIT", "P50", "WAIT", "P99"),
        *("RUN", "MEAN", "RUN", "P50", "RUN", "P99"),
    ]
    local = T0.astimezone()
    rows = [line.split() for line in lines if line.split()[:1] == [local.strftime("%m-%d")]]
    assert [row[1] for row in rows] == [
        (local + timedelta(minutes=m)).strftime("%H:%M") for m in (0, 1, 3, 4)
    ]
    assert rows[1][2:] == [
        *("18", "16", "1"),
        *("50", "ms", "40", "ms", "300", "ms"),
        *("1500", "ms", "1250", "ms", "4000", "ms"),
    ]
    # A bucket without completed tasks has no wait or run figures.
    assert rows[3][2:] == ["2", "0", "0", *["-"] * 6]
    assert "completed" not in shown
    assert "█" not in shown


def test_metrics_history_with_several_series_shows_their_columns(
    client: type[ObservingClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    mixed = [
        point(0, pool="default", task_type="echo"),
        point(0, pool="gpu", task_type="", worker_id="w-1", bucket_s=3600),
    ]
    monkeypatch.setattr(client, "history", mixed)
    shown = ok(invoke("metrics", "history"))
    header = next(line for line in shown.splitlines() if "SUBMITTED" in line)
    assert header.split()[:6] == ["TIME", "BUCKET", "POOL", "TYPE", "WORKER", "SUBMITTED"]
    day = T0.astimezone().strftime("%m-%d")
    rows = [line.split() for line in shown.splitlines() if line.split()[:1] == [day]]
    assert [row[2:6] for row in rows] == [["1m", "default", "echo", "-"], ["1h", "gpu", "-", "w-1"]]
    # A chart per series, titled.
    assert "pool default, type echo" in shown
    assert "pool gpu, worker w-1" in shown


def test_metrics_history_chart(client: type[ObservingClient]) -> None:
    shown = ok(invoke("metrics", "history"))
    lines = shown.splitlines()
    completed = lines.index("completed per 1m")
    chart = lines[completed + 1 : completed + 5]
    # The y axis says the largest value; the timeline has a column per minute, the missing
    # minute 2 and the idle minute 4 empty; 16 fills the chart, 8 half, 4 a quarter.
    assert [row.split("┤")[0].strip() for row in chart] == ["16", "", "", "0"]
    columns = [row.split("┤")[1] for row in chart]
    assert [len(c) for c in columns] == [5, 5, 5, 5]
    assert [column[1] for column in columns] == ["█", "█", "█", "█"]
    assert [column[0] for column in columns] == [" ", " ", "█", "█"]
    assert [column[3] for column in columns] == [" ", " ", " ", "█"]
    assert [column[2] + column[4] for column in columns] == ["  "] * 4
    axis, labels = lines[completed + 5], lines[completed + 6]
    assert axis.endswith("└─────")
    local = T0.astimezone()
    first, last = local.strftime("%H:%M"), (local + timedelta(minutes=4)).strftime("%H:%M")
    assert labels.split() == [first, "…", last]
    run = lines.index("run p99 per 1m")
    assert lines[run + 1].split("┤")[0].strip() == "4000 ms"
    assert lines[run + 4].split("┤")[1] == "██ █ "


def test_metrics_history_json(client: type[ObservingClient]) -> None:
    data = json.loads(ok(invoke("metrics", "history", "-o", "json")))
    assert data == [metric_point_dict(p) for p in HISTORY]
    assert data[0] == {
        "start": "2030-01-02T12:00:00+00:00",
        "bucket_s": 60,
        "pool": "default",
        "task_type": None,
        "worker_id": None,
        "submitted": 10,
        "completed": 8,
        "failed": 1,
        "wait_mean_s": 0.05,
        "wait_p50_s": 0.04,
        "wait_p99_s": 0.3,
        "run_mean_s": 1.5,
        "run_p50_s": 1.25,
        "run_p99_s": 1.0,
    }


def test_metrics_history_without_points(
    client: type[ObservingClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "history", [])
    assert ok(invoke("metrics", "history")) == "no metrics in that window\n"
    assert json.loads(ok(invoke("metrics", "history", "-o", "json"))) == []


def test_bars() -> None:
    assert bars([0, 1, 2, 4], height=1) == [" ▂▄█"]
    assert bars([0, 1, 2, 4], height=2) == ["   █", " ▄██"]
    assert bars([0.001, 100], height=1) == ["▁█"]  # a little is never nothing
    assert bars([0, 0], height=2) == ["  ", "  "]
    assert bars([], height=3) == ["", "", ""]


def test_merge_columns_keeps_the_peaks() -> None:
    assert merge_columns([1, 2, 3], 5) == ([1, 2, 3], 1)
    assert merge_columns([1, 9, 2, 3, 4], 2) == ([9, 4], 3)


def test_a_long_history_is_squeezed_into_the_width() -> None:
    chart = bar_chart(
        "completed", [float(i % 7) for i in range(500)], first="a", last="b", label=str, width=60
    ).plain
    lines = chart.splitlines()
    assert lines[0] == "completed (each column the max of 10)"
    assert all(len(line) <= 60 for line in lines)


def test_timeline_fills_the_gaps_only_when_the_buckets_line_up() -> None:
    assert timeline(HISTORY) == [HISTORY[0], HISTORY[1], None, HISTORY[2], HISTORY[3]]
    uneven = [point(0), point(1, bucket_s=3600)]
    assert timeline(uneven) == uneven
    askew = [point(0), point(0, start=T0 + timedelta(seconds=90))]
    assert timeline(askew) == askew
    assert timeline([]) == []


# -- pools recommend -----------------------------------------------------------------------


def test_pools_recommend_passes_the_target_and_horizon(client: type[ObservingClient]) -> None:
    ok(invoke("pools", "recommend"))
    ok(invoke("pools", "recommend", "--pool", "gpu", "--target-wait", "500ms", "--horizon", "1h"))
    ok(invoke("pools", "recommend", "--target-wait", "2.5", "--horizon", "600"))
    assert client.calls == [
        ("recommend", {"pool": None, "target_wait_s": 1.0, "horizon_s": 900.0}),
        ("recommend", {"pool": "gpu", "target_wait_s": 0.5, "horizon_s": 3600.0}),
        ("recommend", {"pool": None, "target_wait_s": 2.5, "horizon_s": 600.0}),
    ]


def test_pools_recommend_table_then_reasoning(client: type[ObservingClient]) -> None:
    shown = ok(invoke("pools", "recommend"))
    header = next(line for line in shown.splitlines() if "RECOMMENDED" in line)
    assert header.split() == [
        *("POOL", "WORKERS", "RECOMMENDED", "ARRIVALS", "MEAN", "RUN", "UTILISATION"),
        *("EXPECTED", "WAIT", "P(WAIT)", "METHOD"),
    ]
    assert table_rows(shown, {"default", "gpu"}) == {
        "default": ["2", "4", "(+2)", "4.50/s", "1200", "ms", "77%", "350", "ms", "41.2%", "holt"],
        "gpu": ["3", "3", "0.10/s", "20.0", "s", "67%", "4000", "ms", "30.0%", "mean"],
    }
    assert shown.endswith(
        "default:\n  forecast 4.5/s for the next 15 min\n  7 slots: Erlang C wait 0.35 s\n"
    )


def test_pools_recommend_json(client: type[ObservingClient]) -> None:
    data = json.loads(ok(invoke("pools", "recommend", "-o", "json")))
    assert data[0] == {
        "pool": "default",
        "current_workers": 2,
        "recommended_workers": 4,
        "arrival_rate_per_s": 4.5,
        "mean_run_s": 1.2,
        "slots_per_worker": 2.0,
        "servers": 7,
        "utilisation": 0.77,
        "expected_wait_s": 0.35,
        "probability_of_wait": 0.412,
        "method": "holt",
        "reasoning": ["forecast 4.5/s for the next 15 min", "7 slots: Erlang C wait 0.35 s"],
    }
    assert data[1]["reasoning"] == []


# -- config reload and history -------------------------------------------------------------


def test_config_reload_without_changes(client: type[ObservingClient]) -> None:
    assert ok(invoke("config", "reload")) == "no changes\n"
    assert json.loads(ok(invoke("config", "reload", "-o", "json"))) == []
    assert client.calls == [("reload_config", {}), ("reload_config", {})]


def test_config_reload_prints_the_changes(
    client: type[ObservingClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "reloaded", [UPDATE])
    shown = ok(invoke("config", "reload"))
    assert "strategy round_robin → least_loaded; max_queue 0 → 500" in shown
    assert json.loads(ok(invoke("config", "reload", "-o", "json"))) == [config_change_dict(UPDATE)]


def test_config_history(client: type[ObservingClient]) -> None:
    shown = ok(invoke("config", "history"))
    ok(invoke("config", "history", "--pool", "gpu", "--limit", "5"))
    assert client.calls == [
        ("config_history", {"pool": None, "limit": 100}),
        ("config_history", {"pool": "gpu", "limit": 5}),
    ]
    header = next(line for line in shown.splitlines() if "SOURCE" in line)
    assert header.split() == ["TIME", "WHO", "SOURCE", "POOL", "CHANGES"]
    when = T0.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    rows = [line.strip() for line in shown.splitlines() if line.strip().startswith(when)]
    assert [row.split()[2:] for row in rows] == [
        [
            *("alice:42", "update_pool", "gpu"),
            *("strategy", "round_robin", "→", "least_loaded;"),
            *("max_queue", "0", "→", "500;"),
            *("bulkheads", "[]", "→", '[{"task_type":"r"}]'),
        ],
        ["config", "file", "create_pool", "batch", "new", "pool"],
    ]


def test_config_history_json_has_before_and_after(client: type[ObservingClient]) -> None:
    data = json.loads(ok(invoke("config", "history", "-o", "json")))
    assert data == [
        {
            "at": "2030-01-02T12:00:00+00:00",
            "who": "alice:42",
            "source": "update_pool",
            "pool": "gpu",
            "fields": ["strategy", "max_queue", "bulkheads"],
            "before": {"strategy": "round_robin", "max_queue": 0, "bulkheads": []},
            "after": {
                "strategy": "least_loaded",
                "max_queue": 500,
                "bulkheads": [{"task_type": "r"}],
            },
        },
        {
            "at": "2030-01-02T12:00:00+00:00",
            "who": "config file",
            "source": "create_pool",
            "pool": "batch",
            "fields": ["strategy"],
            "before": None,
            "after": {"strategy": "round_robin"},
        },
    ]


def test_config_history_empty(
    client: type[ObservingClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "changes", [])
    assert ok(invoke("config", "history")) == "no config changes\n"


def test_change_text() -> None:
    removed = ConfigChange(T0, "sighup", "reload", "old", {"strategy": "x"}, None, ())
    assert change_text(removed) == "removed"
    odd = ConfigChange(
        T0,
        "x",
        "update_pool",
        "p",
        {"ab_strategy": "adaptive", "sticky_timeout_s": 5.0, "on": True},
        {"ab_strategy": "", "sticky_timeout_s": 2.5, "new": 1, "on": False},
        ("ab_strategy", "sticky_timeout_s", "new", "on"),
    )
    assert change_text(odd) == (
        "ab_strategy adaptive → ''; sticky_timeout_s 5 → 2.5; new - → 1; on true → false"
    )


# -- stats and stats --watch ---------------------------------------------------------------


def test_stats_show_the_live_figures(client: type[ObservingClient]) -> None:
    shown = ok(invoke("stats", "--wide"))
    header = next(line for line in shown.splitlines() if "UNSCHEDULABLE" in line)
    assert " ".join(header.split()[header.split().index("THROUGHPUT") :]) == (
        "THROUGHPUT WAIT P50 / P99 RUN P50 / P99 OLDEST PENDING STICKY HITS"
    )
    rows = table_rows(shown.split("limits and flow control")[0], {"default", "gpu"})
    assert rows["default"][11:] == [
        *("3.25/s", "12", "ms", "/", "400", "ms", "1500", "ms", "/", "12.5", "s"),
        *("12m", "34s", "-"),
    ]
    assert rows["gpu"][11:] == ["0/s", "-", "-", "-", "-"]
    data = json.loads(ok(invoke("stats", "--wide", "-o", "json")))
    live = {key: data["pools"][0][key] for key in list(data["pools"][0])[-6:]}
    assert live == {
        "throughput_per_s": 3.25,
        "wait_p50_s": 0.012,
        "wait_p99_s": 0.4,
        "run_p50_s": 1.5,
        "run_p99_s": 12.5,
        "oldest_pending_age_s": 754.0,
    }


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.5, "500 ms"),
        (42, "42.0 s"),
        (754, "12m 34s"),
        (3 * 3600 + 300, "3h 5m"),
        (2 * 86_400 + 7200, "2d 2h"),
    ],
)
def test_oldest_pending_age(
    client: type[ObservingClient], monkeypatch: pytest.MonkeyPatch, seconds: float, shown: str
) -> None:
    pool = PoolStats("default", "round_robin", 1, 0, 0, 0, 0, 0, 0, 0, oldest_pending_age_s=seconds)
    monkeypatch.setattr(client, "statistics", [Stats("running", (pool,))])
    row = table_rows(ok(invoke("stats", "--wide")), {"default"})["default"]
    assert " ".join(row).endswith(f"0/s - - {shown} -")


def test_stats_watch_json_prints_one_document_per_refresh(
    client: type[ObservingClient], sleeps: list[float]
) -> None:
    busier = Stats("running", (LIVE_POOL,))
    draining = Stats("draining", ())
    client.statistics = [Stats("running", ()), busier, draining]
    shown = ok(
        invoke("stats", "--wide", "--watch", "--count", "3", "--interval", "5", "-o", "json")
    )
    lines = shown.splitlines()
    assert len(lines) == 3
    documents = [json.loads(line) for line in lines]
    for document, expected in zip(documents, [Stats("running", ()), busier, draining], strict=True):
        at = datetime.fromisoformat(document.pop("at"))
        assert abs(at - datetime.now(UTC)) < timedelta(minutes=1)
        assert document == stats_dict(expected)
    assert sleeps == [5.0, 5.0]  # between refreshes, not after the last
    assert [name for name, _ in client.calls] == ["stats"] * 3


def test_stats_watch_table_redraws_each_refresh(
    client: type[ObservingClient], sleeps: list[float]
) -> None:
    shown = ok(invoke("stats", "--wide", "-w", "--count", "2"))
    headings = [line for line in shown.splitlines() if line.startswith("broker: ")]
    assert len(headings) == 2
    assert all(h.startswith("broker: running, at ") for h in headings)
    assert all(h.endswith(", every 2 s") for h in headings)  # piped: no Ctrl-C hint
    assert shown.count("THROUGHPUT") == 2
    assert sleeps == [2.0]


def test_stats_watch_ends_cleanly_on_ctrl_c(
    client: type[ObservingClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []

    def interrupted_on_the_third_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(_watch, "sleep", interrupted_on_the_third_wait)
    shown = ok(invoke("stats", "--wide", "--watch", "--interval", "0.5", "-o", "json"))
    assert len(shown.splitlines()) == 3
    # Ctrl-C while asking the broker ends it as well.
    client.statistics = [Stats("running", ()), KeyboardInterrupt()]
    monkeypatch.setattr(_watch, "sleep", lambda seconds: None)
    assert len(ok(invoke("stats", "--wide", "--watch", "-o", "json")).splitlines()) == 1


def test_stats_watch_stops_on_a_broker_error(
    client: type[ObservingClient], sleeps: list[float]
) -> None:
    from worker_sdk import Unavailable

    client.statistics = [Stats("running", ()), Unavailable("broker at x is unavailable")]
    result = invoke("stats", "--wide", "--watch", "-o", "json")
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr == "error: broker at x is unavailable\n"


# -- serve ---------------------------------------------------------------------------------


class ServeRecorder:
    """Stands in for the broker's run loop and log setup: records what `serve` built."""

    def __init__(self) -> None:
        self.configs: list[BrokerConfig] = []
        self.config_paths: list[Path | None] = []
        self.flags: list[dict[str, Any]] = []
        self.logging: list[tuple[str, str]] = []

    async def run(
        self,
        config: BrokerConfig,
        config_path: Path | None = None,
        flags: dict[str, Any] | None = None,
    ) -> None:
        self.configs.append(config)
        self.config_paths.append(config_path)
        self.flags.append(flags or {})

    def configure(self, log_format: str, level: str) -> None:
        self.logging.append((log_format, level))


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> ServeRecorder:
    import broker.observability.logs

    recorder = ServeRecorder()
    monkeypatch.setattr(_serve, "_run", recorder.run)
    # Not the real one: it would replace the root logger's handlers, pytest's among them.
    monkeypatch.setattr(broker.observability.logs, "configure", recorder.configure)
    for key in ("TASKBROKER_LOG_FORMAT", "TASKBROKER_LOG_LEVEL"):
        monkeypatch.delenv(key, raising=False)
    return recorder


def test_serve_log_flags_go_into_the_config(served: ServeRecorder, tmp_path: Path) -> None:
    ok(invoke("serve", "--port", "0", "--db", str(tmp_path / "a.db")))
    ok(invoke("serve", "--log-format", "json", "--log-level", "debug"))
    ok(invoke("serve", "--log-format", "JSON", "--log-level", "WARNING"))
    assert [(c.log_format, c.log_level) for c in served.configs] == [
        ("human", "INFO"),
        ("json", "DEBUG"),
        ("json", "WARNING"),
    ]
    assert served.logging == [("human", "INFO"), ("json", "DEBUG"), ("json", "WARNING")]
    assert served.config_paths == [None, None, None]


def test_serve_log_settings_from_the_file_and_environment(
    served: ServeRecorder, tmp_path: Path
) -> None:
    config = tmp_path / "taskbroker.toml"
    config.write_text('[broker]\nlog_format = "json"\nlog_level = "WARNING"\n')
    ok(invoke("serve", "--config", str(config)))
    ok(invoke("serve", "--config", str(config), "--log-level", "error"))
    ok(invoke("serve", env={"TASKBROKER_LOG_FORMAT": "json"}))
    ok(invoke("serve", "--log-format", "human", env={"TASKBROKER_LOG_FORMAT": "json"}))
    assert [(c.log_format, c.log_level) for c in served.configs] == [
        ("json", "WARNING"),
        ("json", "ERROR"),
        ("json", "INFO"),
        ("human", "INFO"),
    ]
    # The broker keeps the file's path, to re-read it on SIGHUP.
    assert served.config_paths[:2] == [config, config]


def test_serve_bad_log_setting_in_the_file_names_the_key(
    served: ServeRecorder, tmp_path: Path
) -> None:
    config = tmp_path / "taskbroker.toml"
    config.write_text('[broker]\nlog_format = "xml"\n')
    line = assert_one_line_error(invoke("serve", "--config", str(config)))
    assert "configuration: log_format: must be one of human, json" in line
    assert served.configs == []
