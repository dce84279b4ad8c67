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
import math
import sys
from collections.abc import Callable, Sequence

__all__ = ["USAGE_ERROR", "CommandError", "check_finite_positive", "report_rejects", "reports_errors"]

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


def check_finite_positive(flag: str, value: float) -> None:
    """Raises `CommandError` naming `flag` unless `value` is a finite number > 0 (`--lr nan` trains to NaN weights)."""
    if not math.isfinite(value) or value <= 0:
        raise CommandError(f"expected {flag} to be a finite number > 0; got {value}")


def report_rejects(rejects: Sequence[dict], out_dir: str, shown: int = 10) -> None:
    """Lists skipped input files in `out_dir/rejects.jsonl` and says how many and why (the first `shown` by name).

    Example:

    >>> report_rejects([{"id": "a.png", "path": "data/a.png", "reason": "corrupt image: Invalid PNG"}], "out")  # doctest: +SKIP
    skipped 1 unreadable image(s), listed with the reason in out/rejects.jsonl:
      data/a.png: corrupt image: Invalid PNG
    """
    import os

    from keras_lossal.contracts import REJECTS_FILE
    from keras_lossal.files import atomic_write
    from keras_lossal.records import to_jsonl

    if not rejects:
        return
    rejects_path = os.path.join(out_dir, REJECTS_FILE)
    atomic_write(rejects_path, to_jsonl(rejects))
    print(f"skipped {len(rejects)} unreadable image(s), listed with the reason in {rejects_path}:")
    for reject in rejects[:shown]:
        print(f"  {reject['path']}: {reject['reason']}")
    if len(rejects) > shown:
        print(f"  ... and {len(rejects) - shown} more")


def _report(command: str, message: str, code: int) -> int:
    print(f"lossal {command}: {message}", file=sys.stderr)
    return code
