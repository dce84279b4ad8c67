"""Safe file I/O: atomic writes, and the guarded read of a file a user points at.

Every writer of a state or output file goes through here (triage and Beam
outputs, `state.json`, warm-start weights, `experiment.json`), so a process
killed mid-write never leaves a torn file for a resume to trip on.

Every reader of a user's file (triage, Beam, `lossal train` and `lossal run`
on your images) goes through `read_file`: only regular files, at most a size
limit, so a FIFO, a device or a huge file named like an image is refused
instead of blocking or filling the memory.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import IO
from urllib.parse import urlparse

__all__ = ["REMOTE_SCHEMES", "atomic_open", "atomic_write", "check_regular_file", "read_file"]

# Object stores that tf.io.gfile reads; other schemes (http, ...) are refused.
REMOTE_SCHEMES = ("gs", "s3", "hdfs")


@contextlib.contextmanager
def atomic_open(path: str, binary: bool = False) -> Iterator[IO]:
    """Opens a local file for writing so that readers see the old `path` or the whole new one, never a part.

    Writes go to `path + ".tmp"`; when the block ends they are synced and the file is renamed over
    `path`. If the block raises, the temporary file is removed and `path` is left as it was.

    Example:

    >>> with atomic_open("triage_out/failures.jsonl", binary=True) as handle:  # doctest: +SKIP
    ...     handle.write(b'{"id": "a"}\\n')
    """
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "wb") if binary else open(temporary, "w", encoding="utf-8", newline="") as handle:
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


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))  # fmt: skip


def _not_regular(mode: int) -> str | None:
    """Why a file of this mode is refused (`None` for a regular file): reading a FIFO or device blocks."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"not a regular file ({kind}); only regular files are read"


def check_regular_file(path: str) -> None:
    """Raises `OSError` naming `path` unless it is a regular file (a FIFO would block whoever opens it).

    For files that a library opens itself (a manifest, an `.npz`); URLs are left to their reader.

    Example:

    >>> check_regular_file("labeled.jsonl")  # doctest: +SKIP
    Traceback (most recent call last):
    OSError: 'labeled.jsonl': not a regular file (a FIFO); only regular files are read
    """
    if "://" in path:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"No such file: {path!r}") from None
    refused = _not_regular(mode)
    if refused is not None:
        raise OSError(f"{path!r}: {refused}")


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """Reads a regular file (local, or `gs://`/`s3://`/`hdfs://` through TensorFlow), refusing anything larger.

    The one read every reader (and the Beam pipeline) uses: a FIFO, a
    directory or a device named like an image raises `OSError` naming what
    it is, instead of blocking or being skipped; at most `max_bytes` + 1
    bytes are read, so a file that grows while read is refused too.

    Args:
        path: a local path or an object-store URI.
        max_bytes: the size limit in bytes, or `None` for no limit.

    Example:

    >>> read_file("unlabeled/pipe.png", max_bytes=20_000_000)  # doctest: +SKIP
    Traceback (most recent call last):
    OSError: not a regular file (a FIFO); only regular files are read
    """
    if urlparse(path).scheme in REMOTE_SCHEMES:
        return _read_remote_file(path, max_bytes)
    try:
        # Non-blocking open: a FIFO opens at once (and is refused below) instead of waiting for a writer.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"No such file: {path!r}") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        refused = _not_regular(info.st_mode)
        if refused is not None:
            raise OSError(refused)
        if max_bytes is not None and info.st_size > max_bytes:
            raise OSError(f"file too large: {info.st_size} bytes > max_image_bytes={max_bytes}")
        data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise OSError(f"file too large: more than max_image_bytes={max_bytes} bytes (it grew while read)")
    return data


def _read_remote_file(path: str, max_bytes: int | None) -> bytes:
    import tensorflow as tf

    try:
        if max_bytes is not None:
            size = tf.io.gfile.stat(path).length
            if size > max_bytes:
                raise OSError(f"file too large: {size} bytes > max_image_bytes={max_bytes}")
        with tf.io.gfile.GFile(path, "rb") as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"No such file: {path!r}") from None
    except tf.errors.OpError as error:
        raise OSError(f"{type(error).__name__}: {error.message}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise OSError(f"file too large: more than max_image_bytes={max_bytes} bytes")
    return data
