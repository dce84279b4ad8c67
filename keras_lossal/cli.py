"""`lossal`: the command line, thin glue over the library.

Each subcommand lives in `keras_lossal/commands/<name>.py` and provides
`add_parser(subparsers)`, which registers its arguments and sets
`func(args) -> int` as the parser default.

TensorFlow's log lines stay off stderr unless `--verbose` is given (anywhere
on the command line); see `keras_lossal/_tensorflow_logs.py`. Subcommand
modules import nothing heavy at module level, so `lossal --help` starts
without TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from keras_lossal._tensorflow_logs import VERBOSE_FLAG, quiet_tensorflow_for_the_command

# Subcommand modules, in the order `lossal --help` lists them.
COMMANDS = ("run", "train", "report", "plot", "triage", "ingest", "manifest", "export", "beam_score", "labelstudio")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lossal", description="Learning Loss for Active Learning: experiments, reports and data triage."
    )
    parser.add_argument(
        VERBOSE_FLAG,
        action="store_true",
        help="show TensorFlow's log lines on stderr (hidden by default; any position)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"keras_lossal.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"keras_lossal.commands.{name}":
                raise
            continue
        module.add_parser(subparsers)
    # A subcommand that needs no TensorFlow sets `tensorflow=False`, and starts without importing it.
    parser.set_defaults(tensorflow=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = VERBOSE_FLAG in argv
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    # Accepted after the subcommand too: it only decides what TensorFlow may print.
    args = parser.parse_args([VERBOSE_FLAG] * verbose + [arg for arg in argv if arg != VERBOSE_FLAG])
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.tensorflow:
        quiet_tensorflow_for_the_command()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
