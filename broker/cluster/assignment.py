"""Which broker should schedule a pool: rendezvous (highest random weight) hashing over the
live brokers, so that every broker computes the same answer from the same list, and a
broker joining or leaving moves only the pools it gains or held."""

from __future__ import annotations

import hashlib
from collections.abc import Collection


def weight(pool: str, broker_id: str) -> int:
    digest = hashlib.sha256(f"{pool}\0{broker_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def desired_owner(pool: str, brokers: Collection[str]) -> str:
    """The broker among `brokers` that should schedule `pool`; "" if there is none."""
    if not brokers:
        return ""
    return max(sorted(brokers), key=lambda broker_id: weight(pool, broker_id))
