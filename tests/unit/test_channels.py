"""The SDK and the CLI open every channel through worker_sdk._channel, and with the
options they always had."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from worker_sdk._channel import CHANNEL_OPTIONS, open_blocking_channel, open_channel

ROOT = Path(__file__).resolve().parents[2]
CHANNEL_FACTORIES = {"insecure_channel", "secure_channel"}


def _sources() -> list[Path]:
    paths = [*(ROOT / "worker_sdk").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
    return sorted(
        p for p in paths if "_pb" not in p.relative_to(ROOT).parts and p.name != "_channel.py"
    )


def _opens_a_channel(tree: ast.AST) -> list[int]:
    """Lines that call or import grpc's channel factories (grpc.x, grpc.aio.x, bare x)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in CHANNEL_FACTORIES:
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("grpc")
            and any(alias.name in CHANNEL_FACTORIES for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


def test_only_the_channel_module_opens_channels() -> None:
    sources = _sources()
    assert ROOT / "worker_sdk" / "_client.py" in sources
    assert ROOT / "cli" / "_health.py" in sources
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sources
        for line in _opens_a_channel(ast.parse(path.read_text(), str(path)))
    ]
    assert offenders == []


def test_the_scan_finds_a_hand_built_channel() -> None:
    tree = ast.parse(
        "import grpc\n"
        "from grpc.aio import insecure_channel\n"
        "grpc.aio.insecure_channel('a')\n"
        "grpc.secure_channel('a', creds)\n"
    )
    assert _opens_a_channel(tree) == [2, 3, 4]


def _recording(calls: list[tuple[Any, ...]]) -> Any:
    def factory(address: str, options: Any = None) -> str:
        calls.append((address, options))
        return "channel"

    return factory


def test_channels_keep_their_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(grpc.aio, "insecure_channel", _recording(calls))
    monkeypatch.setattr(grpc, "insecure_channel", _recording(calls))
    reconnect = [("grpc.initial_reconnect_backoff_ms", 100)]
    open_channel("broker:50051")
    open_channel("broker:50051", extra_options=reconnect)
    open_blocking_channel("broker:50051", options=())
    assert calls == [
        ("broker:50051", [("grpc.max_receive_message_length", 64 << 20)]),
        ("broker:50051", [*CHANNEL_OPTIONS, *reconnect]),
        ("broker:50051", []),
    ]


async def test_an_asyncio_channel_opens() -> None:
    channel = open_channel("127.0.0.1:1")
    assert isinstance(channel, grpc.aio.Channel)
    await channel.close(None)


def test_a_token_is_never_shown() -> None:
    from worker_sdk._channel import Token

    token = Token("tbk_secret-value")
    assert "secret-value" not in repr(token)
    assert "secret-value" not in str(token)
    assert token.header == ("authorization", "Bearer tbk_secret-value")
    with pytest.raises(ValueError, match="printable"):
        Token("two words")
