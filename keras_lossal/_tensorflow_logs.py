"""Keeps TensorFlow's start-up log lines off the stderr of the `lossal` command (unless `--verbose`).

TensorFlow prints C++ log lines while its libraries load (absl's pre-initialisation notice, CUDA
probing, CPU features), some before `TF_CPP_MIN_LOG_LEVEL` is read, so the only way to keep a command
quiet is to point file descriptor 2 elsewhere during `import tensorflow`. `keras_lossal.cli` calls
`quiet_tensorflow_for_the_command()` once the arguments are parsed (so `lossal --help` never loads
TensorFlow) and before the subcommand runs; it acts only when the process is the `lossal` command (the
console script or `python -m keras_lossal.cli`) without `--verbose`. Library users see TensorFlow's
output as usual.
"""

from __future__ import annotations

import contextlib
import glob
import os
import sys
from collections.abc import Iterator

VERBOSE_FLAG = "--verbose"
_COMMAND_NAMES = ("lossal", "lossal.exe", "lossal-script.py")


def is_quiet_command() -> bool:
    """Whether this process is the `lossal` command run without `--verbose`."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    as_module = any(argv[i] == "-m" and argv[i + 1] == "keras_lossal.cli" for i in range(len(argv) - 1))
    as_script = bool(sys.argv) and os.path.basename(sys.argv[0]) in _COMMAND_NAMES
    return (as_module or as_script) and VERBOSE_FLAG not in argv


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Sends file descriptor 2 (C++ logs included) to /dev/null inside the block."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow_for_the_command() -> None:
    """For a quiet `lossal` command: imports TensorFlow with stderr silenced and its C++ logging off."""
    if "tensorflow" in sys.modules or not is_quiet_command():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # runtime lines too (e.g. a failed CUDA probe)
    with stderr_silenced():
        import tensorflow  # an import error is raised after stderr is restored

        if not glob.glob("/dev/nvidia*"):
            # No GPU device: TensorFlow's CUDA probe (cuInit) can only fail, and logs that at ERROR level, which
            # TF_CPP_MIN_LOG_LEVEL=2 (the Makefile's) lets through. It runs once per process: run it now, silenced.
            tensorflow.config.list_physical_devices()
