"""Atomic file writes: a reader sees a file's old content or its whole new content, never a part.

Every writer of a state or output file goes through here (triage and Beam
outputs, `state.json`, warm-start weights, `experiment.json`), so a process
killed mid-write never leaves a torn file for a resume to trip on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_open", "atomic_write"]


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
