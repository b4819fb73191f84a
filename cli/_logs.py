"""Logging for the command line: silent for client commands, to stderr for long-running ones."""

from __future__ import annotations

import json
import logging
import time
from typing import Any


def quiet() -> None:
    """Client commands report failures as one ``error:`` line, so library warnings
    (e.g. a broken stream that is about to surface as an exception) stay off stderr."""
    logging.getLogger().addHandler(logging.NullHandler())


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message (and the
    exception, if any), as the broker writes them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def to_stderr(level: str, log_format: str = "human") -> None:
    """`worker run`: records on stderr from `level` up, as timestamped lines for people
    (`human`) or one JSON object a line (`json`)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLines())
