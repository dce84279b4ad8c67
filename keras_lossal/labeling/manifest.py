"""The labeled-set manifest: one `id, path, label` record per labeled item, the single source of truth of what is labeled.

JSONL is the primary format (one JSON object per line; `sha256`, the content
hash of the item's bytes, and provenance fields such as `source`, `annotators`
and `ingested_at` ride along); CSV with an `id,path,label` header is accepted
too. Relative paths resolve against the manifest's folder, as in triage's
manifest input.

- `read_manifest` validates (every record an object with non-empty `id`, `path`
  and `label`, no repeated id; errors name the line and the value);
- `merge` adds new records atomically (temp file, fsync, `os.replace`) and never
  overwrites: a record whose id is present with the same label is counted as
  present, with another label it is returned as a conflict. It holds the
  manifest's lock (`<manifest>.lock` beside it) from reading to renaming, so
  two ingests into one manifest add both their labels;
- `from_directory` turns a folder of class subfolders (the
  `keras.utils.image_dataset_from_directory` layout) into records, and
  `from_folders` into a manifest's records with their content hashes;
- `read_known_items` / `merge_known_items` read the pool a labeling round came
  from (triage output directories or pool manifests: each item's file and
  content hash), for ingest's unknown-id and integrity checks;
- `labeled_content` gives the content hashes of what manifests hold, for
  triage's exclusion of items already labeled;
- `load_labeled_set` gives `(paths, labels)` and the class names, and
  `LabeledSet.dataset` a `tf.data.Dataset` of decoded images for training.

Example:

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "labeled.jsonl")
>>> result = merge(path, [{"id": "a", "path": "pool/a.png", "label": "cat"}])
>>> len(result.added), len(merge(path, [{"id": "a", "path": "pool/a.png", "label": "cat"}]).present)
(1, 1)
>>> merge(path, [{"id": "a", "path": "pool/a.png", "label": "dog"}]).conflicts[0][1]["label"]
'cat'
>>> labeled = load_labeled_set(path)
>>> labeled.class_names, labeled.labels.tolist(), labeled.paths[0] == os.path.join(os.path.dirname(path), "pool", "a.png")
(['cat'], [0], True)
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import glob
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from keras_lossal.contracts import CONTENT_FIELD, IMAGE_EXTENSIONS, Item, is_content_hash
from keras_lossal.files import DEFAULT_LOCK_TIMEOUT, read_file
from keras_lossal.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS

__all__ = [
    "MANIFEST_FIELDS",
    "PROVENANCE_FIELDS",
    "KnownItem",
    "LabeledContent",
    "LabeledSet",
    "MergeResult",
    "decode_image",
    "from_directory",
    "from_folders",
    "labeled_content",
    "labeled_items",
    "load_labeled_set",
    "manifest_text",
    "merge",
    "merge_known_items",
    "read_known_items",
    "read_manifest",
    "relative_to_manifest",
    "write_manifest",
]

MANIFEST_FIELDS = ("id", "path", "label")
# Written by `lossal ingest` after the required fields (CSV manifests join `annotators` with ";").
PROVENANCE_FIELDS = ("source", "annotators", "ingested_at")
# CONTENT_FIELD holds the hex SHA-256 of the item's bytes (`contracts.is_content_hash`); optional, last in CSV
# manifests. IMAGE_EXTENSIONS (contracts) are the files a folder of labeled images is read for.
# Triage's output files that list the pool's items (Beam shards the scores as scored-SSSSS-of-NNNNN.jsonl).
TRIAGE_ITEM_FILES = ("scored.jsonl", "scored-*.jsonl", "queue.jsonl")


# --------------------------------------------------------------------------- reading and validating
def read_manifest(path: str, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Reads and validates a labeled-set manifest (JSONL, or CSV by its `.csv` name).

    Args:
        path: the manifest.
        missing_ok: a missing file is an empty labeled set instead of an error.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labeled.jsonl")
    >>> with open(path, "w") as handle:
    ...     _ = handle.write('{"id": "a", "path": "a.png", "label": "cat"}\\n{"id": "a", "path": "b.png", "label": "dog"}\\n')
    >>> read_manifest(path)
    Traceback (most recent call last):
    ...
    ValueError: ...labeled.jsonl:2: duplicate id 'a' (first on line 1)
    """
    if missing_ok and not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    numbered = _csv_records(text, path) if _is_csv(path) else _jsonl_records(text, path)
    first_line: dict[str, int] = {}
    records = []
    for number, record in numbered:
        _check_record(record, f"{path}:{number}")
        if record["id"] in first_line:
            raise ValueError(
                f"{path}:{number}: duplicate id {record['id']!r} (first on line {first_line[record['id']]})"
            )
        first_line[record["id"]] = number
        records.append(record)
    return records


def _is_csv(path: str) -> bool:
    return path.lower().endswith(".csv")


def _jsonl_records(text: str, path: str) -> list[tuple[int, dict]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: invalid JSON ({error}). Received: {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object. Received: {line[:80]!r}")
        records.append((number, record))
    return records


def _csv_records(text: str, path: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [field for field in MANIFEST_FIELDS if field not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}:1: expected a CSV header with {list(MANIFEST_FIELDS)}. Received: {reader.fieldnames}")
    return [(reader.line_num, dict(row)) for row in reader]


def _check_record(record: Mapping[str, Any], where: str) -> None:
    for field in MANIFEST_FIELDS:
        value = record.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: expected a non-empty string {field!r}. Received: {field}={value!r}")
    content = record.get(CONTENT_FIELD)
    if content not in (None, "") and not is_content_hash(content):
        raise ValueError(
            f"{where}: expected {CONTENT_FIELD!r} to be 64 lowercase hex digits (the SHA-256 of the file). "
            f"Received: {CONTENT_FIELD}={content!r}"
        )


# --------------------------------------------------------------------------- writing
CSV_COLUMNS = MANIFEST_FIELDS + PROVENANCE_FIELDS + (CONTENT_FIELD,)


def manifest_text(
    records: Iterable[Mapping[str, Any]], csv_format: bool = False, columns: Sequence[str] = CSV_COLUMNS
) -> str:
    """Records as manifest text: JSONL lines (keys sorted), or CSV with a header of `columns` (default: the
    required, provenance and content-hash columns)."""
    from keras_lossal.files import to_jsonl

    records = list(records)
    if not csv_format:
        return to_jsonl(records)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_csv_value(record.get(field, "")) for field in columns])
    return buffer.getvalue()


def _csv_value(value: Any) -> str:
    return ";".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def write_manifest(path: str, records: Sequence[Mapping[str, Any]], lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
    """Writes a whole manifest atomically (after validating it), JSONL or CSV by the name, holding its lock."""
    from keras_lossal.files import atomic_write, exclusive_lock

    _validated(records, "records")
    with exclusive_lock(path, lock_timeout):
        atomic_write(path, manifest_text(records, _is_csv(path)))


def _validated(records: Sequence[Mapping[str, Any]], where: str) -> None:
    seen = set()
    for index, record in enumerate(records):
        _check_record(record, f"{where}[{index}]")
        if record["id"] in seen:
            raise ValueError(f"{where}[{index}]: duplicate id {record['id']!r}")
        seen.add(record["id"])


@dataclasses.dataclass
class MergeResult:
    """What `merge` did.

    Args:
        added: records appended to the manifest.
        present: records whose id was there with the same label (nothing written).
        conflicts: `(record, existing record)` pairs whose labels differ (nothing written).
    """

    added: list[dict[str, Any]]
    present: list[dict[str, Any]]
    conflicts: list[tuple[dict[str, Any], dict[str, Any]]]


def merge(path: str, records: Sequence[Mapping[str, Any]], lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> MergeResult:
    """Adds records to the manifest at `path` (created if missing) without changing any existing line.

    The old content and the new lines go to a temporary file that is synced
    and renamed over `path`, so a crash leaves the old manifest or the new one.
    Nothing is written when nothing is added: merging the same records twice
    leaves the file byte for byte as the first merge did.

    The whole read-compare-write holds the manifest's lock (`keras_lossal.files.exclusive_lock`):
    a second merge waits for the first (up to `lock_timeout` seconds, then `TimeoutError`) and
    then sees its records, so concurrent merges lose nothing.
    """
    from keras_lossal.files import exclusive_lock

    _validated(records, "records")
    with exclusive_lock(path, lock_timeout):
        return _merge_locked(path, records)


def _merge_locked(path: str, records: Sequence[Mapping[str, Any]]) -> MergeResult:
    from keras_lossal.files import atomic_open

    existing = {record["id"]: record for record in read_manifest(path, missing_ok=True)}
    result = MergeResult([], [], [])
    for record in records:
        old = existing.get(record["id"])
        if old is None:
            result.added.append(dict(record))
        elif old["label"] == record["label"]:
            result.present.append(dict(record))
        else:
            result.conflicts.append((dict(record), old))
    if not result.added:
        return result
    old_text = _read_text(path) if os.path.exists(path) else ""
    if old_text and _is_csv(path):
        # Rows follow the header already there (a manifest written before a column existed keeps its columns).
        columns = next(csv.reader(io.StringIO(old_text)))
        new_text = manifest_text(result.added, True, columns).split("\n", 1)[1]
    else:
        new_text = manifest_text(result.added, _is_csv(path))
    if old_text and not old_text.endswith("\n"):
        old_text += "\n"
    with atomic_open(path) as handle:
        handle.write(old_text + new_text)
    return result


def relative_to_manifest(path: str, manifest_path: str) -> str:
    """`path` as a manifest stores it: relative to the manifest's folder when inside it, else absolute; URLs unchanged.

    Example:

    >>> relative_to_manifest("/data/pool/a.png", "/data/labeled.jsonl"), relative_to_manifest("/srv/a.png", "/data/m.jsonl")
    ('pool/a.png', '/srv/a.png')
    """
    if "://" in path:
        return path
    folder = os.path.dirname(os.path.abspath(manifest_path))
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, folder)
    return absolute if relative.startswith(os.pardir) else relative.replace(os.sep, "/")


# --------------------------------------------------------------------------- sources of records
def from_directory(directory: str) -> list[dict[str, str]]:
    """Records for a folder of class subfolders: each subfolder is a class, every image below it an item.

    Ids are paths relative to `directory`, and so are the records' paths: write
    them with `write_manifest(os.path.join(directory, "labeled.jsonl"), ...)`
    or rebase them for a manifest elsewhere.

    Example:

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> for name in ("dog/1.png", "cat/x/2.jpg", "cat/notes.txt"):
    ...     os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    ...     open(os.path.join(root, name), "w").close()
    >>> [(record["id"], record["label"]) for record in from_directory(root)]
    [('cat/x/2.jpg', 'cat'), ('dog/1.png', 'dog')]
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Expected a directory of class subfolders. Received: {directory!r}")
    classes = sorted(name for name in os.listdir(directory) if os.path.isdir(os.path.join(directory, name)))
    if not classes:
        raise ValueError(f"Expected class subfolders in {directory!r}. Received none")
    records = []
    for class_name in classes:
        for folder, subfolders, files in os.walk(os.path.join(directory, class_name)):
            subfolders.sort()
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    relative = os.path.relpath(os.path.join(folder, name), directory).replace(os.sep, "/")
                    records.append({"id": relative, "path": relative, "label": class_name})
    return records


def from_folders(directory: str, manifest_path: str) -> list[dict[str, str]]:
    """Records of a folder of class subfolders for a manifest at `manifest_path`, each with its content hash.

    Ids are the images' paths relative to `directory` (as `from_directory` gives them); paths are stored as
    the manifest stores them (`relative_to_manifest`); `sha256` is the hash of each file's bytes, so triage's
    `exclude_labeled` recognises the images however they are named later. `lossal manifest from-folders`
    writes them.

    Example:

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "cat"))
    >>> _ = open(os.path.join(root, "cat", "1.png"), "wb").write(b"abc")
    >>> (record,) = from_folders(root, os.path.join(root, "labeled.jsonl"))
    >>> record["id"], record["path"], record["label"], record["sha256"][:12]
    ('cat/1.png', 'cat/1.png', 'cat', 'ba7816bf8f01')
    """
    from keras_lossal.files import file_sha256

    records = []
    for record in from_directory(directory):
        file = os.path.join(directory, *record["path"].split("/"))
        path = relative_to_manifest(file, manifest_path)
        records.append({**record, "path": path, CONTENT_FIELD: file_sha256(file)})
    return records


@dataclasses.dataclass(frozen=True)
class KnownItem:
    """An item of the pool a labeling round came from: its file and, when recorded, the hash of its bytes.

    Args:
        path: the file (absolute) or an object-store URL.
        sha256: the hex SHA-256 of the bytes triage scored, or `None` (an older triage, a pool manifest without it).
        source: the file it was read from (named when two sources disagree).
    """

    path: str
    sha256: str | None = None
    source: str = ""

    def same_item(self, other: KnownItem) -> bool:
        """Whether both name one file (symlinks resolved) and no recorded content hashes differ."""
        if self.sha256 and other.sha256 and self.sha256 != other.sha256:
            return False
        return _canonical_file(self.path) == _canonical_file(other.path)

    def describe(self) -> str:
        return self.path + (f" (sha256 {self.sha256[:12]}...)" if self.sha256 else "")


def _canonical_file(path: str) -> str:
    return path if "://" in path else os.path.realpath(path)


def read_known_items(path: str, path_root: str | None = None) -> dict[str, KnownItem]:
    """Item id -> `KnownItem` (file, content hash) of a pool: a triage output directory or a pool manifest.

    Args:
        path: a directory holding triage's `scored.jsonl` (or Beam's
            `scored-*.jsonl` shards) and/or `queue.jsonl`; or a manifest whose
            records have `path` (or `uri`), optionally `id` (default: the path)
            and `sha256`. Items triage could not score (`failures.jsonl`) are not known.
        path_root: what relative paths of a triage output directory are
            relative to (default: the current directory). Triage records absolute
            paths; relative ones come from older runs, made where triage ran. A
            pool manifest's relative paths resolve against its folder, as triage reads them.

    Paths are absolute (URLs unchanged). An id that names two different items (another file, or another
    content hash) in two of the files read is a `ValueError` naming both.
    """
    if os.path.isdir(path):
        files = sorted({name for pattern in TRIAGE_ITEM_FILES for name in glob.glob(os.path.join(path, pattern))})
        if not files:
            raise FileNotFoundError(
                f"Expected triage output ({', '.join(TRIAGE_ITEM_FILES)}) in {path!r}. Received none"
            )
        root = path_root or os.getcwd()
        records = [(name, record) for name in files for _, record in _jsonl_records(_read_text(name), name)]
    else:
        root = os.path.dirname(os.path.abspath(path))
        text = _read_text(path)
        records = [(path, record) for _, record in (_pool_csv(text) if _is_csv(path) else _jsonl_records(text, path))]
    known: dict[str, KnownItem] = {}
    for source, record in records:
        location = record.get("path") or record.get("uri")
        if not location:
            continue
        file = location if "://" in location else os.path.join(root, location)
        _add_known(known, str(record.get("id") or location), KnownItem(file, record.get(CONTENT_FIELD) or None, source))
    return known


def merge_known_items(paths: Sequence[str], path_root: str | None = None) -> dict[str, KnownItem]:
    """`read_known_items` of several sources, as one pool; an id two sources name differently is a `ValueError`.

    No source wins silently: ids are only unique within a pool, and a label tied to the wrong file is the worst
    failure a labeling loop can have.

    Example:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name, line in (("a.jsonl", '{"id": "x", "path": "/pool/a/x.png"}'), ("b.jsonl", '{"id": "x", "path": "/pool/b/x.png"}')):
    ...     _ = open(os.path.join(folder, name), "w").write(line + "\\n")
    >>> merge_known_items([os.path.join(folder, "a.jsonl"), os.path.join(folder, "b.jsonl")])
    Traceback (most recent call last):
    ...
    ValueError: Known-item sources disagree on id 'x': /pool/a/x.png in '.../a.jsonl' but /pool/b/x.png in '.../b.jsonl'; ...
    """
    known: dict[str, KnownItem] = {}
    for path in paths:
        for item_id, item in read_known_items(path, path_root).items():
            _add_known(known, item_id, item)
    return known


def _add_known(known: dict[str, KnownItem], item_id: str, item: KnownItem) -> None:
    first = known.setdefault(item_id, item)
    if first is not item and not first.same_item(item):
        raise ValueError(
            f"Known-item sources disagree on id {item_id!r}: {first.describe()} in {first.source!r} but "
            f"{item.describe()} in {item.source!r}; an id must name one item across the sources (pass the "
            "triage outputs or pool manifests of one pool)"
        )


@dataclasses.dataclass(frozen=True)
class LabeledContent:
    """The content hashes of the items labeled-set manifests hold (what triage's `exclude_labeled` skips).

    Args:
        sha256: the hex SHA-256 of every labeled item's bytes.
        records: records read.
        unhashed: `"<manifest>: <id>"` of records without `sha256` whose file could not be read (not matched).
    """

    sha256: frozenset[str]
    records: int
    unhashed: tuple[str, ...] = ()


def labeled_content(manifest_paths: Sequence[str]) -> LabeledContent:
    """The content hashes of the items in labeled-set manifests, matched by bytes (a renamed copy is the same item).

    A record's `sha256` is used as it is; a record without one (written before ingest recorded it) is hashed
    from its file now, and one whose file cannot be read (missing, or an object-store URL) is listed in
    `unhashed`.
    """
    from keras_lossal.files import file_sha256

    hashes, unhashed, count = set(), [], 0
    for path, record, file in _records_with_files(manifest_paths):
        count += 1
        if record.get(CONTENT_FIELD):
            hashes.add(record[CONTENT_FIELD])
            continue
        try:
            if "://" in file:
                raise OSError("an object-store URL")
            hashes.add(file_sha256(file))
        except OSError:
            unhashed.append(f"{path}: {record['id']}")
    return LabeledContent(frozenset(hashes), count, tuple(unhashed))


def labeled_items(manifest_paths: Sequence[str], max_bytes: int | None = None) -> list[Item]:
    """The images of labeled-set manifests as triage `Item`s (to embed them: `serving.triage.embed_items`).

    One item per labeled item, in manifest order (a record with the file or `sha256` of an earlier one is left
    out); relative paths resolve against the manifest's folder, and
    reading is deferred to the item's loader (`files.read_file`, local or object-store, at most
    `max_bytes`).

    Example:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "labeled.jsonl"), "w") as handle:
    ...     _ = handle.write('{"id": "a", "path": "images/a.png", "label": "cat"}\\n')
    >>> [(item.item_id, os.path.relpath(item.path, folder)) for item in labeled_items([f"{folder}/labeled.jsonl"])]
    [('a', 'images/a.png')]
    """
    items, seen = [], set()
    for _, record, file in _records_with_files(manifest_paths):
        keys = {file if "://" in file else os.path.realpath(file), record.get(CONTENT_FIELD)} - {None}
        if keys & seen:  # the same item in two manifests (or twice in one) is one labeled item
            continue
        seen |= keys
        items.append(Item(record["id"], file, "image", functools.partial(read_file, file, max_bytes)))
    return items


def _records_with_files(manifest_paths: Sequence[str]) -> Iterable[tuple[str, dict[str, Any], str]]:
    """`(manifest path, record, the file its path names)` of every record of the manifests, in order."""
    for path in manifest_paths:
        for record in read_manifest(path):
            yield path, record, _record_file(record["path"], path)


def _record_file(path: str, manifest_path: str) -> str:
    """The file a manifest record's `path` names: relative paths are relative to the manifest's folder."""
    return path if "://" in path else os.path.join(os.path.dirname(os.path.abspath(manifest_path)), path)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def _pool_csv(text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text))
    return [(reader.line_num, dict(row)) for row in reader]


# --------------------------------------------------------------------------- training input
@dataclasses.dataclass
class LabeledSet:
    """A labeled-set manifest as arrays: resolved paths, integer labels and the class names.

    Args:
        ids: item ids, in manifest order.
        paths: image paths (relative ones resolved against the manifest's folder).
        labels: int64 class indices into `class_names`.
        class_names: the classes, in index order.
    """

    ids: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def dataset(self, image_size: tuple[int, int], channels: int = 3, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
        """`tf.data.Dataset` of `(uint8 image (H, W, channels), int64 label)`, decoded and resized, in manifest order."""
        import tensorflow as tf

        def load(path, label):
            return decode_image(tf.io.read_file(path), image_size, channels, max_pixels), label

        paths = tf.data.Dataset.from_tensor_slices((self.paths, self.labels))
        return paths.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def arrays(self, image_size: tuple[int, int], channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """`(images (N, H, W, channels) uint8, labels (N,))`, e.g. for `keras_lossal.data.from_arrays`."""
        images = [image for image, _ in self.dataset(image_size, channels).as_numpy_iterator()]
        shape = (0, *image_size, channels)
        return (np.stack(images) if images else np.zeros(shape, np.uint8)), self.labels


def load_labeled_set(path: str, class_names: Sequence[str] | None = None) -> LabeledSet:
    """Reads a labeled-set manifest for training.

    Args:
        path: the manifest (JSONL or CSV).
        class_names: the class order (e.g. the model's); every label must be one
            of them. Default: the manifest's labels, sorted.
    """
    records = read_manifest(path)
    names = sorted({record["label"] for record in records}) if class_names is None else list(class_names)
    index = {name: position for position, name in enumerate(names)}
    outside = [record for record in records if record["label"] not in index]
    if outside:
        raise ValueError(
            f"Expected labels in {names}. Received: label {outside[0]['label']!r} of id {outside[0]['id']!r} "
            f"in {path!r} ({len(outside)} record(s) outside)"
        )
    paths = [_record_file(record["path"], path) for record in records]
    return LabeledSet(
        np.array([record["id"] for record in records], dtype=object),
        np.array(paths, dtype=object),
        np.array([index[record["label"]] for record in records], dtype=np.int64),
        names,
    )


def decode_image(data, image_size: tuple[int, int], channels: int = 3, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """Decodes an encoded JPEG/PNG/BMP (a scalar string tensor) to uint8 `(H, W, channels)`, after the header guard.

    The header's size is checked against `max_pixels` (and the file against
    `DEFAULT_MAX_IMAGE_BYTES`) before any pixel is decoded, as export and triage do.
    """
    import tensorflow as tf

    from keras_lossal.images import image_header_size

    def check(encoded: bytes) -> np.int64:
        if len(encoded) > DEFAULT_MAX_IMAGE_BYTES:
            raise ValueError(f"image of {len(encoded)} bytes is over the limit of {DEFAULT_MAX_IMAGE_BYTES}")
        _, height, width = image_header_size(encoded)
        if height * width > max_pixels:
            raise ValueError(f"image of {height}x{width} pixels is over the limit of {max_pixels}")
        return np.int64(height * width)

    pixels = tf.numpy_function(check, [data], tf.int64)
    with tf.control_dependencies([pixels]):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    image = tf.image.resize(image, image_size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
