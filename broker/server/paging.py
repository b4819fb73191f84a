"""Page tokens (AIP-158) and answers kept within the broker's max_response_bytes.

A page token is opaque to clients: URL-safe base64 of a small JSON object naming the
listing it belongs to, a fingerprint of the filters it was made with, and where the next
page starts. A token from another listing, or sent with other filters, is refused with
INVALID_ARGUMENT, so a client cannot silently page through a different collection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from broker.errors import InvalidArgument
from worker_sdk._pb import tasks_pb2 as _tasks

T = TypeVar("T")

MAX_PAGE_SIZE = 1000
MAX_TOKEN_LENGTH = 512
# Room for a response's own fields besides its list (a page token, framing).
RESPONSE_OVERHEAD_BYTES = 1024


def fingerprint(*filters: object) -> str:
    """A short hash of a listing's filters, so a token is only good with the same ones."""
    text = json.dumps([repr(f) for f in filters])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_token(listing: str, filters: str, after: str | int) -> str:
    """The token of the page that starts after `after` (an id or a name, in list order)."""
    raw = json.dumps({"l": listing, "f": filters, "a": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def read_token(token: str, listing: str, filters: str) -> str | int | None:
    """Where the page of `token` starts; None for no token. InvalidArgument for a token
    that is not one of this listing's, or was made with other filters."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidArgument("page_token is not a page token of this listing", field="page_token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fields = json.loads(raw)
        after = fields["a"]
        ok = fields["l"] == listing and isinstance(after, str | int)
        same_filters = fields["f"] == filters
    except (binascii.Error, ValueError, KeyError, TypeError):
        ok = same_filters = False
    if not ok:
        raise InvalidArgument("page_token is not a page token of this listing", field="page_token")
    if not same_filters:
        raise InvalidArgument(
            "page_token was made for other filters; send the same filters to page on",
            field="page_token",
        )
    return after  # type: ignore[no-any-return]


def page_size(requested: int, default: int) -> int:
    """A page size from the wire: 0 = `default`; at most MAX_PAGE_SIZE."""
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"page_size must be at most {MAX_PAGE_SIZE}, got {requested}", field="page_size"
        )
    return requested or default


def entry_size(message_size: int) -> int:
    """Bytes one entry of a repeated message field takes: its own, a tag and a length."""
    return message_size + 1 + (message_size.bit_length() + 6) // 7


def fitting(items: Sequence[T], size: Callable[[T], int], budget: int) -> int:
    """How many of `items`, from the first, fit in `budget` bytes (always at least one)."""
    used = RESPONSE_OVERHEAD_BYTES
    for count, item in enumerate(items):
        used += entry_size(size(item))
        if used > budget and count:
            return count
    return len(items)


def view_from_pb(value: int, field: str = "view") -> _tasks.TaskView.ValueType:
    """A task view from the wire (unspecified = full); InvalidArgument for one this broker
    does not know."""
    if value not in _tasks.TaskView.values():
        raise InvalidArgument(f"unknown task view {value}", field=field)
    return _tasks.TaskView.ValueType(value) or _tasks.TASK_VIEW_FULL
