"""How Python values become task payloads and results (bytes on the wire)."""

from __future__ import annotations

import json as _json
from typing import Any, Final


class _Unset:
    """Marks an argument the caller did not pass (None is a valid JSON value)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Final = _Unset()

# The media types the SDK gives payloads and results (TaskSpec.payload_content_type,
# TaskResult.result_content_type), as the .proto comments state them.
TEXT: Final = "text/plain; charset=utf-8"
JSON: Final = "application/json"
OCTET_STREAM: Final = "application/octet-stream"


def encode_payload(payload: bytes | str | None, json_value: Any = UNSET) -> bytes:
    """A submit payload: bytes as is, str as UTF-8, None as empty, or `json_value` as JSON."""
    if json_value is not UNSET:
        if payload is not None:
            raise TypeError("pass either payload or json=, not both")
        return _json.dumps(json_value, separators=(",", ":")).encode()
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    raise TypeError(f"payload must be bytes or str, not {type(payload).__name__}; use json=")


def payload_content_type(payload: bytes | str | None, json_value: Any = UNSET) -> str:
    """The media type `encode_payload` gives these arguments ("" for no payload)."""
    if json_value is not UNSET:
        return JSON
    if payload is None:
        return ""
    return TEXT if isinstance(payload, str) else OCTET_STREAM


def encode_result(value: Any) -> tuple[bytes, str]:
    """A handler's return value and its media type: bytes as is, str as UTF-8 text,
    None as empty (no type), else JSON."""
    if value is None:
        return b"", ""
    if isinstance(value, bytes):
        return value, OCTET_STREAM
    if isinstance(value, str):
        return value.encode(), TEXT
    if isinstance(value, bytearray | memoryview):
        return bytes(value), OCTET_STREAM
    return _json.dumps(value, separators=(",", ":")).encode(), JSON


# Tracebacks are kept to their last part: the innermost frames say the most.
MAX_TRACEBACK_CHARS: Final = 16_000


def bound_traceback(text: str) -> str:
    """`text` cut to its last MAX_TRACEBACK_CHARS characters."""
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    return "...\n" + text[-MAX_TRACEBACK_CHARS:]
