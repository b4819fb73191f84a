"""Logging for the command line: silent for client commands, to stderr for long-running ones."""

from __future__ import annotations

import logging


def quiet() -> None:
    """Client commands report failures as one ``error:`` line, so library warnings
    (e.g. a broken stream that is about to surface as an exception) stay off stderr."""
    logging.getLogger().addHandler(logging.NullHandler())


def to_stderr(level: str) -> None:
    """`serve` and `worker run`: timestamped records on stderr from `level` up."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
