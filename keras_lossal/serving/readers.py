"""Readers that stream unlabeled items for triage: image folders, TFRecords, JSONL manifests.

Every reader yields `Item`s lazily, in a deterministic order, each with a
stable `item_id` (the key that resume uses). Reading an item's bytes happens
in `Item.load()`, so a missing or unreadable file becomes a failure record for
that item instead of stopping the stream.
"""

from __future__ import annotations

import collections
import functools
import json
import os
from collections.abc import Iterator
from urllib.parse import unquote, urlparse

# The guarded read lives with the other file rules (the training data readers use it too); re-exported here.
from keras_lossal.contracts import IMAGE_EXTENSIONS, Item
from keras_lossal.files import REMOTE_SCHEMES, read_file
from keras_lossal.images import checked_image_size
from keras_lossal.records import failure_record

__all__ = [
    "IMAGE_EXTENSIONS",
    "INPUT_TYPES",
    "Item",
    "UnsafePathError",
    "detect_input_type",
    "is_inside",
    "precheck",
    "read_file",
    "read_image_directory",
    "read_items",
    "read_manifest",
    "read_tfrecord",
]

INPUT_TYPES = ("auto", "images", "tfrecord", "manifest")


class UnsafePathError(ValueError):
    """A path that escapes the allowed root (path traversal) or uses a refused scheme."""


def is_inside(root: str, path: str) -> bool:
    """Whether `path` is `root` or below it once symlinks are resolved (the path-traversal and symlink guard)."""
    root, path = os.path.realpath(root), os.path.realpath(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_image_directory(
    root: str, max_bytes: int | None = None, skipped: collections.Counter | None = None
) -> Iterator[Item]:
    """Yields every image under `root` (recursively, sorted); ids are paths relative to `root`, paths absolute.

    Paths are absolute so that records, Label Studio tasks and `lossal ingest --known-items` name the same
    file from any working directory.

    Symlinks that point outside `root` become failures (they would let a
    crafted folder read arbitrary files), and so does anything named like an
    image that is not a regular file: a directory (whose contents are still
    read), a FIFO or a device (reading one would block). Other files
    (`.gif`, `.txt`, ...) are not items; `skipped`, if given, counts them by
    reason as they are passed.

    Example:

    >>> [item.item_id for item in read_image_directory("unlabeled")]  # doctest: +SKIP
    ['a/1.png', 'a/2.jpg', 'b/3.png']
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Expected a directory of images. Received: {root!r}")
    root = os.path.abspath(root)
    real_root = os.path.realpath(root)
    prefix = root.rstrip(os.sep) + os.sep
    for subdirectories, files in _walk_sorted(root):
        named_like_images = {
            entry.name: entry for entry in subdirectories if entry.name.lower().endswith(IMAGE_EXTENSIONS)
        }
        for entry in sorted([*named_like_images.values(), *files], key=lambda entry: entry.name):
            name = entry.name
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                if skipped is not None:
                    extension = os.path.splitext(name)[1].lower()
                    skipped[f"unsupported extension {extension}" if extension else "no extension"] += 1
                continue
            path = entry.path
            item_id = path[len(prefix) :].replace(os.sep, "/")
            if name in named_like_images:
                yield Item(item_id, path, "image", error=f"not a regular file (a directory): {path!r}")
            elif entry.is_symlink() and not is_inside(real_root, path):
                yield Item(item_id, path, "image", error=f"path escapes the input directory {root!r} (symlink)")
            else:
                yield Item(item_id, path, "image", functools.partial(read_file, path, max_bytes))


def _walk_sorted(root: str) -> Iterator[tuple[list[os.DirEntry], list[os.DirEntry]]]:
    """`(subdirectory entries, other entries)` of every directory top-down, depth first, in name order, like `os.walk`.

    Symlinked directories are listed among the subdirectories but not entered, so a file found below
    `root` can escape it only by being a symlink itself (checked by the caller from the entry, without
    resolving every path component). Unreadable directories are passed over, as `os.walk` does.
    """
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            continue
        subdirectories, files = [], []
        for entry in entries:
            try:
                is_directory = entry.is_dir()
            except OSError:
                is_directory = False
            (subdirectories if is_directory else files).append(entry)
        yield subdirectories, files
        pending.extend(entry.path for entry in reversed(subdirectories) if not entry.is_symlink())


def read_tfrecord(path: str, id_feature: str = "id") -> Iterator[Item]:
    """Yields the serialized `tf.Example`s of a TFRecord file (scored by `score_examples`).

    The id is the example's `id_feature` bytes when present, else `<file>:<index>`.
    A corrupt record ends the file with one failure item that names the record.
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"No such TFRecord file: {path!r}")
    path = path if "://" in path else os.path.abspath(path)  # items name their file from any working directory
    base = os.path.basename(path)
    index = 0
    iterator = iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            record = next(iterator).numpy()
        except StopIteration:
            return
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as error:
            yield Item(f"{base}:{index}", f"{path}#{index}", "example", error=f"corrupt TFRecord: {error.message}")
            return
        item_id = f"{base}:{index}"
        try:
            example = tf.train.Example.FromString(record)
            values = example.features.feature[id_feature].bytes_list.value if id_feature else []
            if values:
                item_id = values[0].decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - an unparsable record is scored (and fails) like any other
            pass
        yield Item(item_id, f"{path}#{index}", "example", (lambda data=record: data))
        index += 1


def _resolve_manifest_path(entry: str, root: str) -> str:
    parsed = urlparse(entry)
    if parsed.scheme in REMOTE_SCHEMES:
        return entry
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UnsafePathError(f"file URI with a remote host is refused: {entry!r}")
        entry = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise UnsafePathError(f"unsupported URI scheme {parsed.scheme!r} (expected a path, file://, gs://, s3://)")
    path = entry if os.path.isabs(entry) else os.path.join(root, entry)
    if not is_inside(root, path):
        raise UnsafePathError(f"path traversal refused: {entry!r} resolves outside the manifest root {root!r}")
    return os.path.realpath(path)


def read_manifest(path: str, root: str | None = None, max_bytes: int | None = None) -> Iterator[Item]:
    """Yields the items of a JSONL manifest: one `{"path": ...}` or `{"uri": ...}` object per line.

    Relative paths resolve against `root` (default: the manifest's folder), and
    such an item's `path` is the file it names under `root`, so records, Label
    Studio URLs and `lossal ingest --known-items` mean the same file from any
    working directory; paths that escape `root` (`../`, absolute paths elsewhere, symlinks) and
    unsupported URI schemes become failures. `id` defaults to the path;
    other fields are passed through to the queue.
    """
    root = os.path.realpath(root or os.path.dirname(os.path.abspath(path)))
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("expected a JSON object")
            except ValueError as error:
                yield Item(f"line:{number}", f"{path}:{number}", "image", error=f"invalid manifest line: {error}")
                continue
            location = record.get("path", record.get("uri"))
            item_id = str(record.get("id", location if location is not None else f"line:{number}"))
            extra = {key: value for key, value in record.items() if key not in ("id", "path", "uri")}
            if not isinstance(location, str) or not location:
                yield Item(item_id, "", "image", error="manifest line has no 'path' or 'uri'", extra=extra)
                continue
            try:
                resolved = _resolve_manifest_path(location, root)
            except UnsafePathError as error:
                yield Item(item_id, location, "image", error=str(error), extra=extra)
                continue
            shown = location if "://" in location or os.path.isabs(location) else os.path.join(root, location)
            yield Item(item_id, shown, "image", functools.partial(read_file, resolved, max_bytes), extra=extra)


def detect_input_type(path: str) -> str:
    """`"images"` for a directory, `"manifest"` for `.jsonl`, `"tfrecord"` for `.tfrecord`/`.tfrec`."""
    if os.path.isdir(path):
        return "images"
    lowered = path.lower()
    if lowered.endswith((".jsonl", ".ndjson")):
        return "manifest"
    if lowered.endswith((".tfrecord", ".tfrecords", ".tfrec")):
        return "tfrecord"
    raise ValueError(
        f"Cannot tell the input type of {path!r}: expected a directory of images, a .jsonl manifest or a "
        ".tfrecord file (or pass input_type=...)."
    )


def read_items(
    path: str,
    input_type: str = "auto",
    root: str | None = None,
    max_bytes: int | None = None,
    skipped: collections.Counter | None = None,
) -> Iterator[Item]:
    """Dispatches to the reader for `input_type` (`"auto"` detects it from `path`).

    `skipped` counts, by reason, the files of an image directory that are not items (see `read_image_directory`).
    """
    if input_type not in INPUT_TYPES:
        raise ValueError(f"Expected input_type in {INPUT_TYPES}. Received: input_type={input_type!r}")
    if input_type == "auto":
        input_type = detect_input_type(path)
    if input_type == "images":
        return read_image_directory(path, max_bytes, skipped)
    if input_type == "tfrecord":
        return read_tfrecord(path)
    return read_manifest(path, root, max_bytes)


def precheck(item: Item, max_image_pixels: int, max_image_bytes: int) -> tuple[bytes | None, dict | None]:
    """Reads an item's payload and checks its size and image header: `(payload, None)` or `(None, failure)`.

    The decoding guard triage and Beam apply before anything is decoded: an
    image whose header declares more than `max_image_pixels` is refused unread.

    Example:

    >>> item = Item("a.png", "pool/a.png", "image", loader=lambda: b"not an image")
    >>> precheck(item, max_image_pixels=1_000_000, max_image_bytes=1_000)[1]["reason"]
    "corrupt image: Unsupported image format (expected JPEG, PNG or BMP); first bytes: b'not an i'"
    """
    if item.error is not None:
        return None, failure_record(item, item.error)
    try:
        payload = item.load()
    except FileNotFoundError as error:
        return None, failure_record(item, f"not found: {error}")
    except OSError as error:
        return None, failure_record(item, f"unreadable: {error}")
    if len(payload) > max_image_bytes:
        return None, failure_record(item, f"too large: {len(payload)} bytes > max_image_bytes={max_image_bytes}")
    if item.kind == "image":
        try:
            checked_image_size(payload, max_image_pixels)
        except ValueError as error:
            return None, failure_record(item, str(error))
    return payload, None
