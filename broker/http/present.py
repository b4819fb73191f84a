"""How the dashboard shows values: payloads and results that may be binary or large,
durations, times and trace ids. Every string made here is escaped by the templates."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

PREVIEW_BYTES = 4096  # of a payload or a result shown as text
HEX_BYTES = 512  # of a binary one shown as hex


@dataclass(frozen=True, slots=True)
class Preview:
    """A payload or result as the dashboard shows it."""

    kind: str  # "text", "binary" or "empty"
    text: str
    size: int
    truncated: bool


def preview(data: bytes) -> Preview:
    """UTF-8 text (without control characters but tab and newline) as text, the rest as a
    hex dump; at most PREVIEW_BYTES or HEX_BYTES of it."""
    if not data:
        return Preview("empty", "", 0, False)
    head = data[:PREVIEW_BYTES]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multibyte character cut at the end of the preview is still text.
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else ""
        if not text:
            return _hex(data)
    if any((ord(c) < 32 and c not in "\t\n\r") or c == "\x7f" for c in text):
        return _hex(data)
    return Preview("text", text, len(data), len(data) > len(head))


def _hex(data: bytes) -> Preview:
    head = data[:HEX_BYTES]
    lines = []
    for offset in range(0, len(head), 16):
        chunk = head[offset : offset + 16]
        printable = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  {printable}")
    return Preview("binary", "\n".join(lines), len(data), len(data) > len(head))


def duration(seconds: float) -> str:
    """A duration to three significant figures, in ms, s, min or h."""
    if seconds <= 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def timestamp(epoch: float) -> str:
    """An epoch second as UTC, to the millisecond; "" for 0 (not yet)."""
    if not epoch:
        return ""
    whole = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
    return f"{whole}.{int(epoch % 1 * 1000):03d} UTC"


def trace_id(context: Mapping[str, str]) -> str:
    """The trace id of a W3C traceparent (version-traceid-spanid-flags), or ""."""
    parts = context.get("traceparent", "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return ""
