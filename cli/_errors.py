"""How the command line fails: one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
import typer.core

from worker_sdk import TaskbrokerError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure the command line reports as one line (bad input, config, import)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit."""
    typer.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(exit_code)


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "unknown error"


# The command-line parser's own wording for numbers it checks (types, min= and max=), in
# the project's: "must be ...", as the checks of cli/_parse.py word theirs.
_PARSER_WORDING: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"Input should be greater than or equal to (\S+)", r"must be \1 or more"),
        (r"Input should be less than or equal to (\S+)", r"must be at most \1"),
        (r"Input should be greater than (\S+)", r"must be more than \1"),
        (r"Input should be less than (\S+)", r"must be less than \1"),
        (r"Input should be a valid integer(, [^.]*)?\.?", "must be a whole number"),
        (r"Input should be a valid number(, [^.]*)?\.?", "must be a number"),
        (r"'([^']*)' is not a valid integer\.?", r"must be a whole number, got '\1'"),
        (r"'([^']*)' is not a valid float\.?", r"must be a number, got '\1'"),
        (r"(\S+) is not in the range ([^.]*)\.?", r"must be in the range \2, got \1"),
    )
)


def project_wording(message: str) -> str:
    """A parser's message about a value, worded as the project words its own."""
    for pattern, replacement in _PARSER_WORDING:
        message = pattern.sub(replacement, message)
    return message


def _describe(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


class OneLineErrorGroup(typer.core.TyperGroup):
    """The root command: turns expected failures into one ``error:`` line on stderr.

    Typer's own handling prints usage and a boxed panel for a bad flag; a script
    reading stderr wants one line. Unexpected exceptions still show a traceback,
    because they are bugs.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        from cli._help import tidy

        tidy(self)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as exc:  # click's usage and parameter errors
            if type(exc).__name__ == "NoArgsIsHelpError":  # help was printed already
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            fail(project_wording(exc.format_message()) + hint, exc.exit_code)
        except typer.Abort:
            fail("aborted")
        except CliError as exc:
            fail(_describe(exc), exc.exit_code)
        except TaskbrokerError as exc:
            fail(_describe(exc))
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else 0)
