"""How a `lossal` subcommand reports a mistake the user can fix: one line on stderr and an exit code.

A command's `run(args)` raises `CommandError` (or lets a `ValueError` /
`OSError` from the library through: a bad path, a bad argument value) and
`reports_errors` turns it into `lossal <command>: <message>` on stderr and the
exit code, instead of a traceback. Anything else is a bug and still raises.

Example:

>>> @reports_errors("triage")
... def run(args):
...     raise CommandError("pass exactly one of --model DIR (in-process) or --server URL")
>>> run(None)
2
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

__all__ = ["USAGE_ERROR", "CommandError", "reports_errors"]

# The exit code of a wrong command line, as argparse uses it.
USAGE_ERROR = 2


class CommandError(Exception):
    """A mistake the user can fix; `code` is the command's exit code.

    Args:
        message: what is wrong and what was expected.
        code: the exit code (default `USAGE_ERROR`).
    """

    def __init__(self, message: str, code: int = USAGE_ERROR):
        super().__init__(message)
        self.code = code


def reports_errors(command: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorates a command's `run(args)`: a `CommandError`, `ValueError` or `OSError` becomes a message and code."""

    def decorate(run: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(run)
        def reporting(*args, **kwargs) -> int:
            try:
                return run(*args, **kwargs)
            except CommandError as error:
                return _report(command, str(error), error.code)
            except (ValueError, OSError) as error:  # bad input path, another model's output directory, ...
                return _report(command, str(error), USAGE_ERROR)

        return reporting

    return decorate


def _report(command: str, message: str, code: int) -> int:
    print(f"lossal {command}: {message}", file=sys.stderr)
    return code
