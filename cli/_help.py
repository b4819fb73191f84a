"""Help texts as a terminal shows them best: docstrings rewrapped to the terminal's width
(a hard line break in a docstring is not a line break on the screen), and flags without a
type beside them (a flag takes no value, so ``<bool>`` would only mislead)."""

from __future__ import annotations

import inspect
from typing import Any


def tidy(command: Any) -> None:
    """Tidy the help of `command` (a command of typer's click) and of every command under
    it; idempotent."""
    if getattr(command, "_help_tidied", False):
        return
    command._help_tidied = True
    if command.help:
        command.help = rewrap(command.help)
    help_option = command.get_help_option(command.context_class(command))
    for param in [*command.params, help_option]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)


def rewrap(text: str) -> str:
    """Join the lines of each paragraph (paragraphs are split by a blank line); a
    paragraph that starts with a \\b line (a table, say) keeps its lines, as in click,
    and loses the \\b line, which the help's renderer would show as a blank line."""
    return "\n\n".join(
        p.removeprefix("\b").lstrip("\n")
        if p.startswith("\b")
        else " ".join(line.strip() for line in p.splitlines())
        for p in inspect.cleandoc(text).split("\n\n")
    )
