"""The dashboard's parts that need no browser: its token file, its previews of payloads,
and the settings that turn it on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker import load_config
from broker.errors import ConfigError
from broker.http import Identity, Role, StaticTokens, hash_token
from broker.http.present import HEX_BYTES, PREVIEW_BYTES, duration, preview, trace_id


def test_a_token_file_names_each_tokens_identity_by_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        f"# operators\n\n{hash_token('s3cret')} admin alice\n{hash_token('look')} read bob smith\n"
    )
    tokens = StaticTokens.from_file(path)
    assert tokens.verify("s3cret") == Identity(name="alice", role=Role.ADMIN)
    assert tokens.verify("look") == Identity(name="bob smith", role=Role.READ)
    assert tokens.verify("S3cret") is None
    assert tokens.verify("") is None
    assert "s3cret" not in path.read_text()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("abc admin alice", "64 hex digits"),
        (f"{hash_token('x')} root alice", "role must be read or admin"),
        (f"{hash_token('x')} admin", "expected 'SHA256-HEX ROLE NAME'"),
    ],
)
def test_a_bad_token_file_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# ok\n{line}\n")
    with pytest.raises(ConfigError, match=f"line 2: .*{re.escape(message)}"):
        StaticTokens.from_file(path)


def test_an_empty_or_missing_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(ConfigError, match="holds no token"):
        StaticTokens.from_file(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot read"):
        StaticTokens.from_file(tmp_path / "missing")


def test_the_dashboard_is_off_by_default_and_needs_tokens_when_on() -> None:
    assert load_config(None, {}).dashboard_port == 0
    with pytest.raises(ConfigError, match="dashboard_tokens: the dashboard needs a token file"):
        load_config(None, {"TASKBROKER_DASHBOARD_PORT": "8787"})
    with pytest.raises(ConfigError, match=r"dashboard_port: must be 0\.\.65535"):
        load_config(None, {}, dashboard_port=70000, dashboard_tokens="t")


def test_text_is_previewed_as_text_up_to_a_limit() -> None:
    assert preview(b"").kind == "empty"
    shown = preview(b"<script>alert(1)</script>")
    assert (shown.kind, shown.text, shown.truncated) == ("text", "<script>alert(1)</script>", False)
    big = preview("é".encode() * PREVIEW_BYTES)  # cut inside a two-byte character
    assert big.kind == "text"
    assert big.truncated
    assert big.size == 2 * PREVIEW_BYTES
    assert big.text == "é" * (PREVIEW_BYTES // 2)


def test_binary_is_previewed_as_a_bounded_hex_dump() -> None:
    shown = preview(b"\x00\x01ab" + bytes(range(256)) * 10)
    assert shown.kind == "binary"
    assert shown.truncated
    lines = shown.text.splitlines()
    assert len(lines) == HEX_BYTES // 16
    assert lines[0].startswith("00000000  00 01 61 62 00 01 02")
    assert lines[0].endswith("..ab............")
    assert preview(b"text with a bell \x07").kind == "binary"
    assert preview(b"\xff\xfe not utf-8").kind == "binary"


def test_durations_and_trace_ids() -> None:
    assert [duration(s) for s in (0, 0.0042, 3.5, 600, 10_800)] == [
        "0",
        "4.2 ms",
        "3.5 s",
        "10 min",
        "3 h",
    ]
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id({"traceparent": parent}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id({"traceparent": "garbage"}) == ""
    assert trace_id({}) == ""
