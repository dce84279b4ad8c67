"""TF Serving's version directories: `<base_path>/<integer version>/`, found, chosen and published.

A version appears only when it is complete: an export is staged in a hidden
sibling (`.tmp-export-*`, a name TF Serving never loads) and then published.
Locally that is one atomic directory rename. A base path with a scheme
(`gs://`, `s3://`, ...) goes through `tf.io.gfile`, and object stores have no
directory rename, so files are copied with `saved_model.pb` last: a version
missing it is not loadable, a version holding it is complete. An existing
version is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "existing_versions",
    "parse_version",
    "publish",
    "resolve_version_dir",
    "staging_dir",
    "unused_version_dir",
]

VERSION_PATTERN = re.compile(r"^[0-9]+$")
SAVED_MODEL_FILE = "saved_model.pb"
_STAGING_PREFIX = ".tmp-export-"


def parse_version(version: Any) -> int:
    """A version number from an int or a digit string; anything else is refused.

    Example:

    >>> parse_version("12"), parse_version(3)
    (12, 3)
    >>> parse_version("../2")
    Traceback (most recent call last):
    ...
    ValueError: Expected `version` to be a non-negative integer (TF Serving version directories are integers). Received: version='../2'
    """
    if isinstance(version, bool) or not isinstance(version, (int, np.integer, str)):
        raise ValueError(
            f"Expected `version` to be a non-negative integer (TF Serving version directories are integers). "
            f"Received: version={version!r}"
        )
    if isinstance(version, str) and not VERSION_PATTERN.match(version):
        raise ValueError(
            "Expected `version` to be a non-negative integer (TF Serving version directories are integers). "
            f"Received: version={version!r}"
        )
    value = int(version)
    if value < 0:
        raise ValueError(f"Expected `version` >= 0. Received: version={version!r}")
    return value


def existing_versions(base_path: str) -> list[int]:
    """The integer version directories under `base_path`, ascending (`[]` if it does not exist)."""
    if not tf.io.gfile.isdir(base_path):
        return []
    versions = []
    for name in tf.io.gfile.listdir(base_path):
        name = name.rstrip("/")
        if VERSION_PATTERN.match(name) and tf.io.gfile.isdir(os.path.join(base_path, name)):
            versions.append(int(name))
    return sorted(versions)


def resolve_version_dir(path: str, version: int | str | None = None) -> str:
    """Finds the SavedModel directory to load under a TF Serving base path.

    `path` may be a version directory itself (it holds `saved_model.pb`) or a
    base path whose children are integer version directories; then the
    highest version (or `version`) is chosen, like TF Serving's default policy.
    Non-numeric children (including half-written `.tmp-*` exports) are never
    chosen. A version directory with another `version` means that version of
    the same base path (`models/lossal/2` with version 1 is `models/lossal/1`).

    Args:
        path: a base path or a version directory.
        version: a specific version under a base path, or `None` for the highest.

    Example:

    >>> resolve_version_dir("models/lossal")  # doctest: +SKIP
    'models/lossal/3'
    """
    path = os.fspath(path)
    if tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_FILE)):
        leaf = os.path.basename(os.path.normpath(path))
        if not VERSION_PATTERN.match(leaf):
            raise ValueError(
                f"Refusing to load SavedModel directory {path!r}: its name {leaf!r} is not an integer version. "
                "TF Serving only loads <base_path>/<integer version>/; pass the base path or a version directory."
            )
        if version is None or parse_version(version) == int(leaf):
            return path
        path = os.path.dirname(os.path.normpath(path))  # another version of the same base path
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"No such model directory: {path!r}")
    versions = existing_versions(path)
    if version is not None:
        wanted = parse_version(version)
        if wanted not in versions:
            raise FileNotFoundError(f"Version {wanted} not found under {path!r}; available versions: {versions}")
        return os.path.join(path, str(wanted))
    if not versions:
        raise FileNotFoundError(
            f"No integer version directory with a SavedModel under {path!r}; found: {sorted(tf.io.gfile.listdir(path))}"
        )
    return os.path.join(path, str(versions[-1]))


def unused_version_dir(base_path: str, version: int) -> str:
    """`<base_path>/<version>`, or `FileExistsError` if that version already exists.

    Example:

    >>> import tempfile
    >>> base = tempfile.mkdtemp()
    >>> unused_version_dir(base, 1) == os.path.join(base, "1")
    True
    >>> os.mkdir(os.path.join(base, "1"))
    >>> unused_version_dir(base, 1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileExistsError: Version 1 already exists at '...1'; refusing to overwrite it.
    """
    target = os.path.join(base_path, str(version))
    if tf.io.gfile.exists(target):
        raise FileExistsError(f"Version {version} already exists at {target!r}; refusing to overwrite it.")
    return target


@contextlib.contextmanager
def staging_dir(base_path: str) -> Iterator[str]:
    """A fresh hidden directory inside `base_path` to write an export to, created (so `base_path` is
    known to be a writable directory before anything is traced); removed on exit if still there.

    A base path that is a file, lies under a file or cannot be written raises `OSError` with one line.

    Example:

    >>> import tempfile
    >>> base = tempfile.mkdtemp()
    >>> open(os.path.join(base, "lossal"), "w").close()
    >>> with staging_dir(os.path.join(base, "lossal")):  # doctest: +ELLIPSIS
    ...     pass
    Traceback (most recent call last):
    ...
    NotADirectoryError: Expected the base path '...lossal' to be a directory (TF Serving's base path); it is a file.
    """
    staging = os.path.join(base_path, f"{_STAGING_PREFIX}{uuid.uuid4().hex}")
    _make_staging_dir(base_path, staging)
    try:
        yield staging
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)


def _make_staging_dir(base_path: str, staging: str) -> None:
    if _is_local(base_path) and os.path.exists(base_path) and not os.path.isdir(base_path):
        raise NotADirectoryError(
            f"Expected the base path {base_path!r} to be a directory (TF Serving's base path); it is a file."
        )
    try:
        if _is_local(base_path):
            os.makedirs(staging)
        else:
            tf.io.gfile.makedirs(staging)
    except OSError as error:
        raise OSError(f"Cannot write an export under the base path {base_path!r}: {error}") from None
    except tf.errors.OpError as error:
        raise OSError(f"Cannot write an export under the base path {base_path!r}: {error.message}") from None


def publish(staging: str, base_path: str, version: int | None) -> str:
    """Moves a staged export to `<base_path>/<version>` and returns that directory.

    With `version=None` the next free version is taken (after the highest
    existing one; a version a concurrent exporter wins is skipped). An
    explicit version that exists raises `FileExistsError`.

    Example:

    >>> import tempfile
    >>> base = tempfile.mkdtemp()
    >>> staged = os.path.join(base, ".tmp-export-demo")
    >>> os.makedirs(os.path.join(staged, "variables"))
    >>> os.path.basename(publish(staged, base, None)), sorted(os.listdir(base))
    ('1', ['1'])
    """
    number = version if version is not None else max(existing_versions(base_path), default=0) + 1
    while True:
        try:
            return _move_without_overwrite(staging, unused_version_dir(base_path, number))
        except FileExistsError:
            if version is not None:
                raise
            number += 1


def _is_local(path: str) -> bool:
    return "://" not in path


def _move_without_overwrite(staging: str, target: str) -> str:
    if _is_local(target):
        try:
            # A directory rename is atomic on POSIX and fails (instead of merging) if a racer won.
            os.rename(staging, target)
        except OSError as error:
            if os.path.isdir(target):
                raise FileExistsError(
                    f"Version directory {target!r} appeared while publishing; refusing to overwrite it."
                ) from error
            raise
        return target
    _copy_tree_saved_model_last(staging, target)
    tf.io.gfile.rmtree(staging)
    return target


def _copy_tree_saved_model_last(source: str, target: str) -> None:
    files = []
    for directory, _, names in tf.io.gfile.walk(source):
        relative = directory[len(source) :].strip("/")  # object stores list directories with a trailing "/"
        files.extend(f"{relative}/{name}" if relative else name for name in names)
    # TF Serving may see the version as soon as its first file lands; without saved_model.pb it cannot load it.
    files.sort(key=lambda name: (name == SAVED_MODEL_FILE, name))
    for name in files:
        destination = os.path.join(target, name)
        tf.io.gfile.makedirs(os.path.dirname(destination))
        try:
            tf.io.gfile.copy(os.path.join(source, name), destination, overwrite=False)
        except tf.errors.AlreadyExistsError as error:
            raise FileExistsError(f"{destination!r} appeared while publishing; refusing to overwrite it.") from error
