"""A dataclass for what the SDK makes for every task: frozen to the type checker only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_R = TypeVar("_R")


@dataclass_transform(frozen_default=True)
def hot_record() -> Callable[[type[_R]], type[_R]]:
    """A dataclass with slots, frozen to the type checker, for what a worker makes for every
    task (an assignment, an outcome); the broker's own (`broker.domain.hot_record`), which
    the SDK may not import, says why.

    At run time it is not frozen: a frozen dataclass's __init__ sets each field through
    object.__setattr__, three times as slow as plain assignment. It is equal and hashed by
    its fields, as a frozen one is; code that assigns a field fails the type check instead.
    """

    def make(cls: type[_R]) -> type[_R]:
        return dataclass(slots=True, unsafe_hash=True)(cls)

    return make
