"""Atomic file writes: a reader sees a file's old content or its whole new content, never a part.

Every writer of a state or output file goes through here (triage and Beam
outputs, `state.json`, warm-start weights, `experiment.json`), so a process
killed mid-write never leaves a torn file for a resume to trip on. A
read-modify-write of a file that several processes update (the labeled-set
manifest) holds `exclusive_lock` around the whole cycle.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from typing import IO

__all__ = ["DEFAULT_LOCK_TIMEOUT", "LOCK_SUFFIX", "atomic_open", "atomic_write", "exclusive_lock"]

# The lock file of `path` is `path + LOCK_SUFFIX`, beside it.
LOCK_SUFFIX = ".lock"
# Seconds a writer waits for another to release the lock before it gives up.
DEFAULT_LOCK_TIMEOUT = 60.0
# The first and the longest pause between two attempts to take a lock held by another process.
_LOCK_POLL_SECONDS = (0.01, 0.2)


@contextlib.contextmanager
def atomic_open(path: str, binary: bool = False) -> Iterator[IO]:
    """Opens a local file for writing so that readers see the old `path` or the whole new one, never a part.

    Writes go to a temporary file of a unique name beside `path` (`<path>.<random>.tmp`, so two writers
    never share one); when the block ends it is synced and renamed over `path`. If the block raises,
    the temporary file is removed and `path` is left as it was.

    Example:

    >>> with atomic_open("triage_out/failures.jsonl", binary=True) as handle:  # doctest: +SKIP
    ...     handle.write(b'{"id": "a"}\\n')
    """
    temporary = f"{path}.{secrets.token_hex(8)}.tmp"
    try:
        # O_EXCL: a name another writer holds is an error, never a shared file; mode 0o666 & ~umask, as open() gives.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(descriptor, "wb") if binary else open(descriptor, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write(path: str, text: str) -> None:
    """Writes `text` (UTF-8, newlines as given) to `path` so that readers see the old file or the new one.

    Local paths go through `atomic_open`. Object-store URLs (`gs://`, `s3://`, ...) are written with
    `tf.io.gfile`, as the readers read them: an object appears whole when its upload completes.

    Example:

    >>> atomic_write("triage_out/summary.json", '{"scored": 10}\\n')  # doctest: +SKIP
    """
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "w") as handle:
            handle.write(text)
        return
    with atomic_open(path) as handle:
        handle.write(text)


@contextlib.contextmanager
def exclusive_lock(path: str, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[str]:
    """Holds an exclusive advisory lock on `path` (a `path + ".lock"` file beside it) for the block; yields its name.

    Every process that reads, changes and rewrites `path` takes this lock first, so their cycles run
    one after another instead of one overwriting the other's. The lock is `fcntl.flock` on the lock
    file: the kernel releases it when its holder exits or is killed, so a lock file left behind
    is never stale (it is left in place: removing it would let two writers lock two different files).

    Args:
        path: the file the lock guards (it need not exist).
        timeout: seconds to wait for another holder; then `TimeoutError` naming `path` and the lock file.

    Example:

    >>> import tempfile
    >>> manifest = os.path.join(tempfile.mkdtemp(), "labeled.jsonl")
    >>> with exclusive_lock(manifest) as lock:
    ...     os.path.basename(lock)
    'labeled.jsonl.lock'
    """
    lock_path = path + LOCK_SUFFIX
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _wait_for_lock(descriptor, path, lock_path, timeout)
        try:
            yield lock_path
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def _wait_for_lock(descriptor: int, path: str, lock_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pause = _LOCK_POLL_SECONDS[0]
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"Timed out after {timeout:g} s waiting for another process writing {path!r} to release "
                    f"its lock file {lock_path!r}; retry when it has finished (the lock ends with its process)"
                ) from None
            time.sleep(min(pause, left))
            pause = min(2 * pause, _LOCK_POLL_SECONDS[1])
