"""Safe file I/O: atomic writes, and the guarded read of a file a user points at.

Every writer of a state or output file goes through here (triage and Beam
outputs, `state.json`, warm-start weights, `experiment.json`), so a process
killed mid-write never leaves a torn file for a resume to trip on. A
read-modify-write of a file that several processes update (the labeled-set
manifest) holds `exclusive_lock` around the whole cycle.

Every reader of a user's file (triage, Beam, `lossal train` and `lossal run`
on your images) goes through `read_file`: only regular files, at most a size
limit, so a FIFO, a device or a huge file named like an image is refused
instead of blocking or filling the memory.

An item's identity (`content_sha256`, `file_sha256`: the hex SHA-256 of its
bytes) and JSON lines (`jsonl_line`, `to_jsonl`) are here too, so the data
layer (the labeled-set manifest) and the production records share them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any
from urllib.parse import urlparse

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "LOCK_SUFFIX",
    "REMOTE_SCHEMES",
    "atomic_open",
    "atomic_write",
    "check_regular_file",
    "content_sha256",
    "exclusive_lock",
    "file_sha256",
    "jsonl_line",
    "read_file",
    "to_jsonl",
]

# The lock file of `path` is `path + LOCK_SUFFIX`, beside it.
LOCK_SUFFIX = ".lock"
# Seconds a writer waits for another to release the lock before it gives up.
DEFAULT_LOCK_TIMEOUT = 60.0
# The first and the longest pause between two attempts to take a lock held by another process.
_LOCK_POLL_SECONDS = (0.01, 0.2)

# Object stores that tf.io.gfile reads; other schemes (http, ...) are refused.
REMOTE_SCHEMES = ("gs", "s3", "hdfs")


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
    if "://" in path and urlparse(path).scheme in REMOTE_SCHEMES:
        return _read_remote_file(path, max_bytes)
    try:
        # Non-blocking open: a FIFO opens at once (and is refused below) instead of waiting for a writer.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"No such file: {path!r}") from None
    try:  # the descriptor read directly: no file object, one read for a file that does not grow
        info = os.fstat(descriptor)
        refused = _not_regular(info.st_mode)
        if refused is not None:
            raise OSError(refused)
        if max_bytes is not None and info.st_size > max_bytes:
            raise OSError(f"file too large: {info.st_size} bytes > max_image_bytes={max_bytes}")
        limit = math.inf if max_bytes is None else max_bytes + 1
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(descriptor, int(min(limit - size, max(info.st_size + 1 - size, 65536))))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(descriptor)
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


# --------------------------------------------------------------------------- item identity and JSON lines
def content_sha256(data: bytes) -> str:
    """An item's identity: the hex SHA-256 of its bytes (a renamed or copied file keeps it; an edited one does not).

    Example:

    >>> content_sha256(b"abc")[:16]
    'ba7816bf8f01cfea'
    """
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
    """`content_sha256` of a local file's bytes, read in chunks (`OSError` when it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def jsonl_line(record: Mapping[str, Any]) -> str:
    """One record as a JSONL line, without the newline (keys sorted, so equal records are equal bytes)."""
    return json.dumps(record, sort_keys=True)


def to_jsonl(records: Sequence[Mapping[str, Any]]) -> str:
    """Records as JSONL text, one line each, every line ending in a newline.

    Example:

    >>> to_jsonl([{"id": "a", "predicted_loss": 0.5}, {"rank": 2, "id": "b"}])
    '{"id": "a", "predicted_loss": 0.5}\\n{"id": "b", "rank": 2}\\n'
    """
    return "".join(jsonl_line(record) + "\n" for record in records)
