"""Label Studio: the project's label config, image URLs, export readers and the rule that resolves annotators.

Triage writes Label Studio tasks whose `data` holds `image` (a URL Label Studio
serves, from `image_url`) and `item_id` (the pool item's id). People label
them; `read_export` reads what Label Studio exports (JSON, JSON_MIN or CSV)
into one `Annotation` per (item, annotation), and `resolve` turns those into
at most one label per item:

- cancelled ("skipped") annotations are ignored (JSON keeps them with
  `was_cancelled`; JSON_MIN and CSV leave them out);
- each annotator has one vote: their latest annotation of the item (the
  highest annotation id) supersedes their earlier ones;
- a vote that is not exactly one of the class names (a label outside the
  class list, which Label Studio accepts through its API; no choice; several
  choices) is rejected with its reason and does not count;
- the label with the most valid votes wins; a tie is rejected with the counts.

A task or record of the wrong shape (`"annotations": {...}`, `"result": "cat"`,
a non-integer annotation id, ...) is rejected as a whole with the field and
what was expected (`malformed task: ...`), and its item gets no label from
the export; a file in which no record has the shape of an export is an error
naming the file.

`ingest` applies them to the labeled-set manifest (`keras_lossal.labeling.manifest`):
unknown ids and labels that conflict with the manifest are rejected, never
merged, and ingesting the same export twice changes nothing. No label is
recorded for a file that does not exist (`image missing: ...`) or whose bytes
no longer hash to the task's `sha256` (or triage's) (`content changed since
triage: ...`); each manifest record gets the file's `sha256`. Without the pool
the tasks came from, an item's file comes from its task's image URL, and only
what `ImageSources` allows is accepted (local-files URLs and plain paths inside
the document root by default; `file://` and other URL schemes, or files
outside the root, only when asked for).

Facts checked against Label Studio 1.23.2 (`tests/labelstudio_server.py`
drives a real server): JSON_MIN and CSV hold one record per annotation, with
the task's data fields, `id` (the Label Studio task id), `label` (the choice;
`{"choices": [...]}` for several, absent or empty for none), `annotator` (the
user id) and `annotation_id`; a data field named `id` collides with the task
id there (JSON_MIN keeps the task id, CSV the data field), hence `item_id`.

Example:

>>> print(label_config(["cat", "dog & wolf"]))
<View><Image name="image" value="$image"/><Choices name="label" toName="image" choice="single"><Choice value="cat"/><Choice value="dog &amp; wolf"/></Choices></View>
>>> image_url("/srv/pool/a b.png", document_root="/srv")
'/data/local-files/?d=pool/a%20b.png'
>>> annotations = [Annotation("a", ("cat",), "1", 1), Annotation("a", ("cat",), "2", 2), Annotation("a", ("dog",), "3", 3)]
>>> labels, rejects = resolve(annotations, ["cat", "dog"])
>>> labels["a"].label, labels["a"].annotators, rejects
('cat', ('1', '2'), [])
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import io
import json
import os
import posixpath
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from keras_lossal.contracts import CONTENT_FIELD, is_content_hash
from keras_lossal.files import DEFAULT_LOCK_TIMEOUT

if TYPE_CHECKING:
    from keras_lossal.labeling.manifest import KnownItem

__all__ = [
    "CHOICES_NAME",
    "DEFAULT_ID_FIELD",
    "EXPORT_TYPES",
    "IMAGE_FIELD",
    "LOCAL_FILES_PREFIX",
    "Annotation",
    "ImageSources",
    "IngestSummary",
    "RefusedImage",
    "ResolvedLabel",
    "checked_content",
    "image_path",
    "image_url",
    "ingest",
    "label_config",
    "label_config_classes",
    "read_export",
    "read_label_config",
    "resolve",
    "write_label_config",
]

# The task data field holding the pool item's id (what `keras_lossal.records.label_studio_tasks` writes).
DEFAULT_ID_FIELD = "item_id"
# The task data field holding the image URL, and the name of the Choices tag (the `label` column of JSON_MIN/CSV).
IMAGE_FIELD = "image"
CHOICES_NAME = "label"
# What Label Studio serves from LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; `d` is relative to that root.
LOCAL_FILES_PREFIX = "/data/local-files/?d="
CLOUD_SCHEMES = ("gs://", "s3://", "azure-blob://", "http://", "https://")
EXPORT_TYPES = ("JSON", "JSON_MIN", "CSV")
# Fields JSON_MIN and CSV add to every record: a data field of one of these names is overwritten or ambiguous.
FLATTENED_FIELDS = ("id", CHOICES_NAME, "annotator", "annotation_id", "created_at", "updated_at", "lead_time")

# Reject reasons (the `reason` field of a rejects file starts with one of these).
NOT_A_CLASS = "label not in the class list"
NO_CHOICE = "no choice"
SEVERAL_CHOICES = "several choices"
TIE = "tie between annotators"
NO_ID = "task has no item id"
UNKNOWN_ID = "unknown id"
CONFLICT = "conflicts with the labeled set"
MALFORMED = "malformed task"
NO_IMAGE = "task has no image URL"
REFUSED_IMAGE = "image refused"
IMAGE_MISSING = "image missing"
CONTENT_CHANGED = "content changed since triage"
# The task data field holding the hex SHA-256 of the item's bytes (`keras_lossal.records.CONTENT_HASH`).
# What a JSON value is, for "`result` is a string 'cat', expected a list".
_KINDS = ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a number"), (list, "a list"),
          (dict, "an object"))  # fmt: skip


# --------------------------------------------------------------------------- project setup
def label_config(class_names: Sequence[str]) -> str:
    """The Label Studio label config of a single-choice image classification project over `class_names`."""
    names = _checked_class_names(class_names)
    view = ElementTree.Element("View")
    ElementTree.SubElement(view, "Image", {"name": IMAGE_FIELD, "value": "$" + IMAGE_FIELD})
    choices = ElementTree.SubElement(view, "Choices", {"name": CHOICES_NAME, "toName": IMAGE_FIELD, "choice": "single"})
    for name in names:
        ElementTree.SubElement(choices, "Choice", {"value": name})
    return ElementTree.tostring(view, encoding="unicode", short_empty_elements=True).replace(" />", "/>")


def write_label_config(path: str, class_names: Sequence[str]) -> None:
    """Writes `label_config(class_names)` to `path` (atomically; a trailing newline)."""
    from keras_lossal.files import atomic_write

    atomic_write(path, label_config(class_names) + "\n")


def read_label_config(path: str) -> list[str]:
    """The class names of a label config file: the `value`s of the `Choice` tags of its `label` Choices.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "label_config.xml")
    >>> write_label_config(path, ["cat", "dog"])
    >>> read_label_config(path)
    ['cat', 'dog']
    """
    with open(path, encoding="utf-8") as handle:
        return label_config_classes(handle.read(), source=repr(path))


def label_config_classes(config: str, source: str = "") -> list[str]:
    """The class names of a label config's text (a Label Studio project's `label_config`); see `read_label_config`.

    Args:
        config: the XML text.
        source: where it came from, for the error (`"'label_config.xml'"`, `"of project 3"`).

    Example:

    >>> label_config_classes(label_config(["cat", "dog"]))
    ['cat', 'dog']
    """
    where = f" {source}" if source else ""
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError as error:
        raise ValueError(f"Expected a Label Studio label config (XML). Received{where}: {error}") from None
    for choices in root.iter("Choices"):
        if choices.get("name") == CHOICES_NAME:
            return _checked_class_names([choice.get("value", "") for choice in choices.iter("Choice")])
    raise ValueError(f"Expected a <Choices name={CHOICES_NAME!r}> tag in the label config{where}")


def _checked_class_names(class_names: Sequence[str]) -> list[str]:
    names = [str(name) for name in class_names]
    if not names or any(not name.strip() for name in names):
        raise ValueError(f"Expected non-empty class names. Received: {names}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Expected distinct class names. Received duplicates: {duplicates}")
    return names


def image_url(path: str, document_root: str | None = None, url_prefix: str | None = None) -> str:
    """The URL Label Studio loads an item's image from.

    Args:
        path: the image file.
        document_root: the server's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`: gives
            `/data/local-files/?d=<path relative to it>` (URL-quoted). A path outside
            it is refused (Label Studio answers 404 for an absolute `d`).
        url_prefix: a cloud storage or web prefix (`gs://bucket/dir/`, `s3://...`,
            `https://...`) that stands for `document_root` (default: the current
            directory): gives the prefix joined with the relative path.

    Example:

    >>> image_url("/srv/pool/été 1.png", document_root="/srv")
    '/data/local-files/?d=pool/%C3%A9t%C3%A9%201.png'
    >>> image_url("/srv/pool/a.png", document_root="/srv", url_prefix="gs://bucket/images")
    'gs://bucket/images/pool/a.png'
    """
    if document_root is None and url_prefix is None:
        raise ValueError("Expected document_root (local files) or url_prefix (cloud storage); received neither")
    relative = _relative_to(path, document_root or os.curdir)
    if url_prefix is not None:
        if not url_prefix.startswith(CLOUD_SCHEMES):
            raise ValueError(
                f"Expected url_prefix starting with one of {list(CLOUD_SCHEMES)}. Received: {url_prefix!r}"
            )
        return url_prefix.rstrip("/") + "/" + quote(relative, safe="/")
    return LOCAL_FILES_PREFIX + quote(relative, safe="/")


def _relative_to(path: str, root: str) -> str:
    absolute_root = os.path.realpath(root)
    absolute = os.path.realpath(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
    relative = os.path.relpath(absolute, absolute_root)
    if relative == os.curdir or relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(
            f"Expected an image inside the Label Studio document root {absolute_root!r}. Received: {path!r} "
            "(set LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to a folder that holds the pool)"
        )
    return relative.replace(os.sep, "/")


def image_path(url: str, document_root: str | None = None) -> str:
    """The inverse of `image_url`: the file a task's image URL names.

    A local-files URL gives its `d` joined to `document_root` (required for
    one); any other URL (`gs://...`, `https://...`) is returned URL-unquoted.

    Example:

    >>> image_path("/data/local-files/?d=pool/a%20b.png", document_root="/srv")
    '/srv/pool/a b.png'
    """
    if not _is_local_files_url(url):
        return unquote(url)
    values = parse_qs(urlsplit(url).query).get("d")
    if not values:
        raise RefusedImage(f"Expected a local-files URL with a `d` parameter. Received: {url!r}")
    if document_root is None:
        raise ValueError(f"Expected the document root to find the file of the local-files URL {url!r}")
    relative = posixpath.normpath(values[0])
    if relative.startswith(("/", "../")) or relative in ("..", "."):
        raise RefusedImage(f"Expected a path relative to the document root in {url!r}. Received d={values[0]!r}")
    return os.path.join(document_root, *relative.split("/"))


def _is_local_files_url(url: str) -> bool:
    return url.startswith(LOCAL_FILES_PREFIX.split("?")[0])


class RefusedImage(ValueError):
    """A labeled item ingest does not record: its image URL is not allowed, its file is missing or its bytes
    changed (the item is rejected with the message)."""


@dataclasses.dataclass(frozen=True)
class ImageSources:
    """Which task image URLs `ingest` turns into manifest paths when the pool is not given; others are refused.

    Accepted by default: Label Studio local-files URLs (`/data/local-files/?d=...`)
    and plain file paths (URL-unquoted; relative ones resolve against the
    document root) whose file, symlinks resolved, is inside the document root.
    Refused unless allowed: files outside the root (absolute paths, `..`),
    and every URL with a scheme (`file://`, `http(s)://`, `s3://`, ...):
    `lossal train` reads what the manifest names, so a task must not be able
    to point it at `/etc/passwd`.

    Args:
        document_root: Label Studio's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT` (required for
            local-files URLs). Plain paths must stay in it; default for them: the current directory.
        allow_paths_outside_root: accept plain file paths outside the document root.
        url_schemes: URL schemes whose URLs are accepted as they are (URL-unquoted), e.g.
            `("gs", "s3")`, `("https",)` or `("file",)`.

    Example:

    >>> sources = ImageSources(document_root="/srv", url_schemes=("gs",))
    >>> sources.path("/data/local-files/?d=pool/a%20b.png"), sources.path("gs://bucket/a.png")
    ('/srv/pool/a b.png', 'gs://bucket/a.png')
    >>> sources.path("file:///etc/passwd")
    Traceback (most recent call last):
    ...
    keras_lossal.labeling.labelstudio.RefusedImage: image refused: URL scheme 'file' not allowed (file:///etc/passwd)
    """

    document_root: str | None = None
    allow_paths_outside_root: bool = False
    url_schemes: tuple[str, ...] = ()

    def __post_init__(self):
        schemes = tuple(str(scheme).lower() for scheme in self.url_schemes)
        bad = [scheme for scheme in schemes if not _SCHEME.fullmatch(scheme)]
        if bad:
            raise ValueError(
                f"Expected URL scheme names such as 's3' or 'https' (no ':' or '/'). Received: url_schemes={bad}"
            )
        object.__setattr__(self, "url_schemes", schemes)

    def path(self, url: str) -> str:
        """The file (or allowed URL) a task's image URL names; `RefusedImage` with the reason when it is not allowed."""
        if "\0" in unquote(url):  # no file has this name; some readers would cut the name there
            raise RefusedImage(f"{REFUSED_IMAGE}: a NUL character in the path ({url})")
        if _is_local_files_url(url):
            try:
                path = image_path(url, self.document_root)
            except RefusedImage:
                raise RefusedImage(
                    f"{REFUSED_IMAGE}: a local-files URL without a path inside the root ({url})"
                ) from None
            self._check_inside(path, self.document_root, url)
            return path
        text = unquote(url)
        scheme = _scheme(text)
        if scheme is not None:
            if scheme in self.url_schemes:
                return text
            raise RefusedImage(f"{REFUSED_IMAGE}: URL scheme {scheme!r} not allowed ({url})")
        root = self.document_root or os.getcwd()
        path = os.path.join(root, text)  # an absolute path stays as it is
        if not self.allow_paths_outside_root:
            self._check_inside(path, root, url)
        return path

    @staticmethod
    def _check_inside(path: str, root: str, url: str) -> None:
        real_root = os.path.realpath(root)
        real_path = os.path.realpath(path)
        if real_path == real_root or os.path.commonpath([real_root, real_path]) != real_root:
            raise RefusedImage(f"{REFUSED_IMAGE}: outside the document root {real_root!r} ({url})")


# An RFC 3986 scheme; one letter is a Windows drive more likely than a URL, still refused as a scheme.
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _scheme(text: str) -> str | None:
    head, colon, _ = text.partition(":")
    return head.lower() if colon and _SCHEME.fullmatch(head.lower()) else None


# --------------------------------------------------------------------------- export readers
@dataclasses.dataclass(frozen=True)
class Annotation:
    """One person's annotation of one item, as read from a Label Studio export.

    Args:
        item_id: the item's id (the task's id field); None when the task has none.
        choices: the chosen labels (one for a valid vote).
        annotator: who annotated (the Label Studio user id, as text).
        annotation_id: Label Studio's annotation id (higher = later); None only for a malformed record.
        task_id: Label Studio's task id.
        image: the task's image URL.
        cancelled: the annotator cancelled (skipped) the task; such an annotation never votes.
        problem: why the task or record is malformed (`"malformed task: ..."`); such an
            annotation stands for the whole task, never votes, and keeps its item out of the labels.
        sha256: the content hash the task names (`data.sha256`, written by triage), or `None`.
    """

    item_id: str | None
    choices: tuple[str, ...]
    annotator: str
    annotation_id: int | None
    task_id: int | str | None = None
    image: str | None = None
    cancelled: bool = False
    problem: str | None = None
    sha256: str | None = None

    def as_record(self) -> dict[str, Any]:
        """The annotation as a rejects-file record."""
        if self.problem is not None:
            return {"id": self.item_id, "task_id": self.task_id, "annotation_id": self.annotation_id}
        return {
            "id": self.item_id,
            "choices": list(self.choices),
            "annotator": self.annotator,
            "annotation_id": self.annotation_id,
            "task_id": self.task_id,
        }


# What each export holds, for the error about a file in which no record has that shape.
_EXPECTED_SHAPE = {
    "JSON": "a list of tasks, each with a `data` object and a list of `annotations`",
    "JSON_MIN": "a list of records, each with `annotator` and `annotation_id`",
    "CSV": "rows with `annotator` and `annotation_id`",
}
_FLAT_FIELDS = ("annotator", "annotation_id")


def read_export(path: str, export_type: str | None = None, id_field: str = DEFAULT_ID_FIELD) -> list[Annotation]:
    """Reads a Label Studio export file into one `Annotation` per annotation (JSON keeps the cancelled ones).

    A task or record of the wrong shape becomes one `Annotation` with its `problem`; a file
    that is not an export (not JSON, not a list, no record of the export's shape) is a
    `ValueError` naming the file and what was expected.

    Args:
        path: the exported file.
        export_type: `"JSON"`, `"JSON_MIN"` or `"CSV"`; default: CSV for a `.csv`
            file, else JSON or JSON_MIN by the records' shape (tasks with
            `annotations` or `data` are JSON).
        id_field: the task data field holding the item id.

    Example:

    >>> [(a.item_id, a.choices, a.annotator) for a in read_export("tests/data/labelstudio/export.csv")][:2]
    [('a', ('dog',), '3'), ('a', ('cat',), '2')]
    """
    if export_type is not None and export_type not in EXPORT_TYPES:
        raise ValueError(f"Expected export_type in {list(EXPORT_TYPES)}. Received: {export_type!r}")
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"Expected a Label Studio export (UTF-8 text) in {path!r}: {error}") from None
    is_csv = export_type == "CSV" or (export_type is None and path.lower().endswith(".csv"))
    records = _csv_rows(text, path) if is_csv else _json_list(text, path)
    if export_type is None:
        export_type = "CSV" if is_csv else _json_export_type(records)
    if export_type != "JSON" and id_field in FLATTENED_FIELDS:
        raise ValueError(
            f"Expected an id field other than {list(FLATTENED_FIELDS)} in a {export_type} export (Label Studio "
            f"overwrites those when it flattens tasks). Received: id_field={id_field!r}"
        )
    if export_type == "JSON":
        annotations = [annotation for task in records for annotation in _task_annotations(task, id_field)]
    else:
        annotations = [_flat_annotation(record, id_field) for record in records]
    if annotations and all(annotation.problem for annotation in annotations):
        task = "" if annotations[0].task_id is None else f" (task {annotations[0].task_id})"
        raise ValueError(
            f"Expected a Label Studio {export_type} export ({_EXPECTED_SHAPE[export_type]}) in {path!r}; no record "
            f"has that shape. First: {annotations[0].problem}{task}"
        )
    return annotations


def _json_list(text: str, path: str) -> list:
    try:
        records = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"Expected a Label Studio JSON export in {path!r}: {error}") from None
    if not isinstance(records, list):
        raise ValueError(
            f"Expected a Label Studio JSON export (a JSON list of tasks) in {path!r}. Received: {_kind(records)}"
        )
    return records


def _csv_rows(text: str, path: str) -> list[dict]:
    try:
        reader = csv.DictReader(io.StringIO(text))
        missing = [field for field in _FLAT_FIELDS if field not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"Expected a Label Studio CSV export (columns {list(_FLAT_FIELDS)} among others) in {path!r}. "
                f"Received columns: {reader.fieldnames}"
            )
        return list(reader)
    except csv.Error as error:
        raise ValueError(f"Expected a Label Studio CSV export in {path!r}: {error}") from None


def _json_export_type(records: list) -> str:
    # JSON_MIN flattens `data` and `annotations` away: a record holding either is a JSON task.
    tasks = (record for record in records if isinstance(record, dict) and ("annotations" in record or "data" in record))
    return "JSON" if next(tasks, None) is not None else "JSON_MIN"


class _Malformed(Exception):
    """A field of an export record has the wrong shape (internal: becomes an `Annotation.problem`)."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    name = next((name for kind, name in _KINDS if isinstance(value, kind)), type(value).__name__)
    text = repr(value)
    return f"{name} {text if len(text) <= 40 else text[:37] + '...'}"


def _expect(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = dict(_KINDS)[kind]
        raise _Malformed(f"`{name}` is {'missing' if value is None else _kind(value)}, expected {expected}")
    return value


def _malformed(problem: _Malformed, item_id: str | None, task_id: Any, annotation_id: int | None = None) -> Annotation:
    return Annotation(item_id, (), "", annotation_id, task_id, problem=f"{MALFORMED}: {problem}")


def _task_annotations(task: Any, id_field: str) -> list[Annotation]:
    task_id = _task_id(task.get("id")) if isinstance(task, dict) else None
    item_id = None
    try:
        task = _expect(task, dict, "task")
        data = _expect(task.get("data"), dict, "data")
        item_id = _item_id(data.get(id_field), f"data.{id_field}")
        image = _image(data.get(IMAGE_FIELD), f"data.{IMAGE_FIELD}")
        content = _content_hash(data.get(CONTENT_FIELD), f"data.{CONTENT_FIELD}")
        entries = _expect(task.get("annotations", []), list, "annotations")
        return [_json_annotation(entry, f"annotations[{index}]", item_id, task_id, image, content)
                for index, entry in enumerate(entries)]  # fmt: skip
    except _Malformed as problem:
        return [_malformed(problem, item_id, task_id)]


def _json_annotation(
    entry: Any, where: str, item_id: str | None, task_id: Any, image: str | None, content: str | None
) -> Annotation:
    entry = _expect(entry, dict, where)
    annotation_id = _annotation_id(entry.get("id"), f"{where}.id")
    choices = []
    for index, result in enumerate(_expect(entry.get("result", []), list, f"{where}.result")):
        result = _expect(result, dict, f"{where}.result[{index}]")
        if result.get("from_name") == CHOICES_NAME and result.get("type") == "choices":
            value = _expect(result.get("value"), dict, f"{where}.result[{index}].value")
            chosen = _expect(value.get("choices"), list, f"{where}.result[{index}].value.choices")
            for position, choice in enumerate(chosen):
                choices.append(_expect(choice, str, f"{where}.result[{index}].value.choices[{position}]"))
    annotator = entry.get("completed_by")
    if isinstance(annotator, dict):  # some versions expand the user
        annotator = annotator.get("id", annotator.get("email"))
    cancelled = bool(entry.get("was_cancelled"))
    return Annotation(item_id, tuple(choices), str(annotator), annotation_id, task_id, image, cancelled, sha256=content)


def _flat_annotation(record: Any, id_field: str) -> Annotation:
    task_id = _task_id(record.get("id")) if isinstance(record, dict) else None
    item_id = annotation_id = None
    try:
        record = _expect(record, dict, "record")
        item_id = _item_id(record.get(id_field), id_field)
        annotation_id = _annotation_id(record.get("annotation_id"), "annotation_id")
        annotator = record.get("annotator")
        if annotator in (None, "") or isinstance(annotator, (bool, list, dict)):
            raise _Malformed(f"`annotator` is {'missing' if annotator in (None, '') else _kind(annotator)}, "
                             "expected a user id")  # fmt: skip
        return Annotation(
            item_id,
            _flat_choices(record.get(CHOICES_NAME)),
            str(annotator),
            annotation_id,
            task_id,
            _image(record.get(IMAGE_FIELD), IMAGE_FIELD),
            sha256=_content_hash(record.get(CONTENT_FIELD), CONTENT_FIELD),
        )
    except _Malformed as problem:
        return _malformed(problem, item_id, task_id, annotation_id)


def _flat_choices(value: Any) -> tuple[str, ...]:
    # JSON_MIN: a string, {"choices": [...]} for several, absent for none; CSV: the same as text, "" for none.
    if isinstance(value, str) and value.startswith("{"):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return (value,)
    if isinstance(value, dict):
        chosen = _expect(value.get("choices"), list, f"{CHOICES_NAME}.choices")
        return tuple(_expect(choice, str, f"{CHOICES_NAME}.choices[{index}]") for index, choice in enumerate(chosen))
    if value is None or value == "":
        return ()
    if not isinstance(value, str):
        raise _Malformed(f'`{CHOICES_NAME}` is {_kind(value)}, expected a string or {{"choices": [...]}}')
    return (value,)


def _annotation_id(value: Any, name: str) -> int:
    # CSV gives every value as text.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return _expect(value, int, name)


def _task_id(value: Any) -> int | str | None:
    # CSV gives every value as text; a data field named `id` can replace the task id there.
    return int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value


def _item_id(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (bool, list, dict)):
        raise _Malformed(f"`{name}` is {_kind(value)}, expected a string")
    return str(value)


def _image(value: Any, name: str) -> str | None:
    return None if value is None else _expect(value, str, name)


def _content_hash(value: Any, name: str) -> str | None:
    # CSV gives an empty cell for a task without it.
    if value is None or value == "":
        return None
    value = _expect(value, str, name)
    if not is_content_hash(value):
        raise _Malformed(f"`{name}` is {_kind(value)}, expected 64 lowercase hex digits (a SHA-256)")
    return value


# --------------------------------------------------------------------------- resolution
@dataclasses.dataclass(frozen=True)
class ResolvedLabel:
    """An item's label by majority of its annotators.

    Args:
        item_id: the item's id.
        label: the winning class name.
        annotators: who voted for it, sorted.
        votes: valid votes per label.
        image: the task's image URL (the last one seen).
        contents: the distinct content hashes its voters' tasks name (one, or none for tasks without `sha256`).
    """

    item_id: str
    label: str
    annotators: tuple[str, ...]
    votes: Mapping[str, int]
    image: str | None = None
    contents: tuple[str, ...] = ()


def resolve(
    annotations: Iterable[Annotation], class_names: Sequence[str]
) -> tuple[dict[str, ResolvedLabel], list[dict[str, Any]]]:
    """Resolves annotations into one label per item by majority; returns `(labels by id, rejects)`.

    Each annotator's latest annotation of an item is their vote; a vote that is
    not exactly one class name is rejected (and does not count); a tie between
    the most voted labels rejects the item. A malformed task or record (an
    annotation with a `problem`) is rejected and its item gets no label, whatever
    its other votes say. Rejects are records with a `reason`.

    Example:

    >>> votes = [Annotation("a", ("cat",), "1", 1), Annotation("a", ("dog",), "2", 2),
    ...          Annotation("b", ("NotAClass",), "1", 3)]
    >>> labels, rejects = resolve(votes, ["cat", "dog"])
    >>> labels, [reject["reason"] for reject in rejects]
    ({}, ['label not in the class list: NotAClass', 'tie between annotators: cat (1), dog (1)'])
    """
    classes = set(_checked_class_names(class_names))
    latest: dict[tuple[str | None, str | int], Annotation] = {}
    rejects = []
    malformed_items = set()
    for annotation in annotations:
        if annotation.problem is not None:
            rejects.append({**annotation.as_record(), "reason": annotation.problem})
            malformed_items.add(annotation.item_id)
            continue
        if annotation.cancelled:
            continue
        # Without an item id there is nothing to group by: each such annotation is rejected on its own.
        key = (annotation.item_id, annotation.annotator if annotation.item_id is not None else annotation.annotation_id)
        if key not in latest or annotation.annotation_id > latest[key].annotation_id:
            latest[key] = annotation
    votes: dict[str, list[Annotation]] = collections.defaultdict(list)
    for annotation in sorted(latest.values(), key=lambda annotation: annotation.annotation_id):
        reason = _vote_problem(annotation, classes)
        if reason:
            rejects.append({**annotation.as_record(), "reason": reason})
        else:
            votes[annotation.item_id].append(annotation)
    labels = {}
    for item_id, ballots in votes.items():
        if item_id in malformed_items:
            continue  # its malformed task's reject says why
        counts = collections.Counter(ballot.choices[0] for ballot in ballots)
        ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            tied = ", ".join(f"{label} ({count})" for label, count in ranked)
            rejects.append({"id": item_id, "votes": dict(ranked), "reason": f"{TIE}: {tied}"})
            continue
        winner = ranked[0][0]
        annotators = tuple(sorted(ballot.annotator for ballot in ballots if ballot.choices[0] == winner))
        contents = tuple(sorted({ballot.sha256 for ballot in ballots if ballot.sha256}))
        labels[item_id] = ResolvedLabel(item_id, winner, annotators, dict(ranked), ballots[-1].image, contents)
    return labels, rejects


def _vote_problem(annotation: Annotation, classes: set[str]) -> str | None:
    if annotation.item_id is None:
        return f"{NO_ID} (task {annotation.task_id})"
    if not annotation.choices:
        return NO_CHOICE
    if len(annotation.choices) > 1:
        return f"{SEVERAL_CHOICES}: {', '.join(annotation.choices)}"
    if annotation.choices[0] not in classes:
        return f"{NOT_A_CLASS}: {annotation.choices[0]}"
    return None


# --------------------------------------------------------------------------- ingest
@dataclasses.dataclass
class IngestSummary:
    """What `ingest` did: counts, the rejects by reason and where the rejects went.

    Args:
        annotations: annotations read (cancelled ones excluded).
        cancelled: cancelled annotations ignored (only JSON exports hold them).
        added: items added to the manifest.
        present: items already in the manifest with the same label.
        rejects: rejected records (each with a `reason`).
        rejects_path: the rejects file written.
    """

    annotations: int
    cancelled: int
    added: int
    present: int
    rejects: list[dict[str, Any]]
    rejects_path: str

    def reasons(self) -> dict[str, int]:
        """Rejected records per reason (the text before the first colon), most frequent first."""
        counts = collections.Counter(reject["reason"].split(":")[0].split(" (")[0] for reject in self.rejects)
        return dict(sorted(counts.items(), key=lambda pair: (-pair[1], pair[0])))

    def describe(self) -> str:
        """One paragraph for people."""
        reasons = ", ".join(f"{count} {reason}" for reason, count in self.reasons().items())
        cancelled = f" (and {self.cancelled} cancelled, ignored)" if self.cancelled else ""
        text = (
            f"Read {self.annotations} annotation(s){cancelled}: added {self.added} item(s) to the labeled set, "
            f"{self.present} already present with the same label, rejected {len(self.rejects)}"
        )
        return text + (f" ({reasons})" if reasons else "") + f". Rejects: {self.rejects_path}"


def ingest(
    export_path: str,
    manifest_path: str,
    class_names: Sequence[str],
    known_items: Mapping[str, KnownItem | str] | None = None,
    rejects_path: str | None = None,
    export_type: str | None = None,
    id_field: str = DEFAULT_ID_FIELD,
    image_sources: ImageSources | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> IngestSummary:
    """Adds the labels of a Label Studio export to the labeled-set manifest; writes what it refuses to a rejects file.

    Args:
        export_path: the Label Studio export (JSON, JSON_MIN or CSV).
        manifest_path: the labeled-set manifest (JSONL or CSV; created if missing).
        class_names: the classes a label must be one of.
        known_items: item id -> `KnownItem` (or a plain path) of the pool the tasks came from (see
            `keras_lossal.labeling.manifest.merge_known_items`); an id outside it is
            rejected. None accepts every id and takes the path from the task's
            image URL, as far as `image_sources` allows (an item whose URL it
            refuses is rejected with the reason). Either way the file must exist and,
            where the task (`data.sha256`) or the pool records a content hash, match it.
        rejects_path: where rejects go (JSONL, rewritten each run); default
            `<export file name>.rejects.jsonl` beside the manifest.
        export_type: see `read_export`.
        id_field: the task data field holding the item id.
        image_sources: which image URLs give a path (only for `known_items=None`); default
            `ImageSources()`: plain paths inside the current directory, no URL scheme, and
            local-files URLs refused for want of a document root.
        lock_timeout: seconds to wait for another writer of the manifest (see `keras_lossal.labeling.manifest.merge`).
    """
    from keras_lossal.files import atomic_write
    from keras_lossal.labeling import manifest
    from keras_lossal.records import to_jsonl

    image_sources = image_sources or ImageSources()
    annotations = read_export(export_path, export_type, id_field)
    cancelled = sum(annotation.cancelled for annotation in annotations)
    labels, rejects = resolve(annotations, class_names)
    source = os.path.basename(export_path)
    entries = []
    for item_id, resolved in sorted(labels.items()):
        if known_items is not None and item_id not in known_items:
            rejects.append({"id": item_id, "label": resolved.label, "reason": UNKNOWN_ID})
            continue
        try:
            item = _labeled_item(resolved, known_items, image_sources)
            content = checked_content(item.path, {*resolved.contents, *filter(None, [item.sha256])})
        except RefusedImage as refused:
            rejects.append({"id": item_id, "label": resolved.label, "image": resolved.image, "reason": str(refused)})
            continue
        entries.append(_entry(resolved, manifest.relative_to_manifest(item.path, manifest_path), source, content))
    merged = manifest.merge(manifest_path, entries, lock_timeout)
    for entry, existing in merged.conflicts:
        reason = f"{CONFLICT}: it has {existing['label']!r}"
        rejects.append({"id": entry["id"], "label": entry["label"], "reason": reason})
    rejects_path = rejects_path or os.path.join(
        os.path.dirname(os.path.abspath(manifest_path)), source + ".rejects.jsonl"
    )
    atomic_write(rejects_path, to_jsonl(rejects))
    return IngestSummary(
        len(annotations) - cancelled, cancelled, len(merged.added), len(merged.present), rejects, rejects_path
    )


def _labeled_item(
    resolved: ResolvedLabel, known_items: Mapping[str, KnownItem | str] | None, image_sources: ImageSources
) -> KnownItem:
    """The file a label is for: the pool's record of the item, else the file its task's image URL names."""
    from keras_lossal.labeling.manifest import KnownItem

    if known_items is not None:
        known = known_items[resolved.item_id]
        return KnownItem(known) if isinstance(known, str) else known
    if not resolved.image:
        raise RefusedImage(f"{NO_IMAGE} (no {IMAGE_FIELD!r} field in its task)")
    return KnownItem(image_sources.path(resolved.image))


def checked_content(path: str, expected: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The hex SHA-256 of the file at `path`, once it exists and its bytes hash to the `expected` one.

    `RefusedImage` with the reason otherwise: `image missing: <path>`, or `content changed since triage: ...`
    (the bytes changed, or the tasks and the pool name different contents). An object-store or web URL is
    not read here: `None`, unchecked.

    Example:

    >>> checked_content("/nowhere/a.png")
    Traceback (most recent call last):
    ...
    keras_lossal.labeling.labelstudio.RefusedImage: image missing: /nowhere/a.png
    """
    from keras_lossal.records import file_sha256

    scheme = _scheme(path) if "://" in path else None
    if scheme not in (None, "file"):
        return None
    local = unquote(urlsplit(path).path) if scheme == "file" else path
    try:
        actual = file_sha256(local) if os.path.isfile(local) else None
    except OSError:
        actual = None
    if actual is None:
        raise RefusedImage(f"{IMAGE_MISSING}: {path}")
    if len(expected) > 1:
        named = ", ".join(digest[:12] + "..." for digest in sorted(expected))
        raise RefusedImage(f"{CONTENT_CHANGED}: its tasks and the pool name different contents ({named}) for {path}")
    if expected and actual not in expected:
        (wanted,) = expected
        raise RefusedImage(f"{CONTENT_CHANGED}: {path} (sha256 now {actual[:12]}..., at triage {wanted[:12]}...)")
    return actual


def _entry(resolved: ResolvedLabel, path: str, source: str, content: str | None) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    entry = {
        "id": resolved.item_id,
        "path": path,
        "label": resolved.label,
        "source": source,
        "annotators": list(resolved.annotators),
        "ingested_at": now,
    }
    return entry if content is None else {**entry, CONTENT_FIELD: content}
