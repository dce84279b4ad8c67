"""What triage writes for people to label: Label Studio tasks, their label config, images out of TFRecords.

Label Studio loads a task's image from a URL it serves. `LabelStudioOptions`
says how an item's path becomes that URL (`keras_lossal.labeling.labelstudio.image_url`):

- `document_root`: the server's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`; tasks
  name `/data/local-files/?d=<path relative to it>` (an item outside it is refused);
- `url_prefix`: a cloud storage or web prefix (`gs://bucket/dir/`, `s3://...`,
  `https://...`) standing for `document_root` (default: the current directory);
- neither: the path as it is.

Paths that are URLs already (`gs://...` items) are used as they are. An item
of a TFRecord (`pool.tfrecord#7`) is no image file: its encoded image is
written to `<output>/label_studio_images/` (queued items only) and that file is
named instead, or, with `tfrecord_images="refuse"`, the tasks are refused.
`label_config.xml` lists the class names as single-choice labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence

from keras_lossal.files import atomic_open, atomic_write
from keras_lossal.images import image_header_size
from keras_lossal.labeling.labelstudio import CLOUD_SCHEMES, image_url, write_label_config
from keras_lossal.records import LABEL_CONFIG_FILE, LABEL_STUDIO_FILE, LABEL_STUDIO_IMAGES_DIR, label_studio_tasks

__all__ = ["TFRECORD_IMAGES", "LabelStudioOptions", "prediction_model_version", "write_labeling_files"]

TFRECORD_IMAGES = ("write", "refuse")
_TFRECORD_ITEM = re.compile(r"^(?P<file>.+)#(?P<index>[0-9]+)$")
_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp"}


@dataclasses.dataclass(frozen=True)
class LabelStudioOptions:
    """How triage's Label Studio tasks name their images.

    Args:
        document_root: Label Studio's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT` (an existing folder).
        url_prefix: a `gs://`, `s3://`, `azure-blob://` or `http(s)://` prefix standing for `document_root`.
        tfrecord_images: `"write"` (queued TFRecord items' images go to `label_studio_images/`) or `"refuse"`.
        example_feature: the `tf.Example` feature holding a TFRecord item's encoded image.

    Example:

    >>> LabelStudioOptions(url_prefix="gs://bucket/pool/").url_prefix
    'gs://bucket/pool/'
    >>> LabelStudioOptions(url_prefix="bucket/pool")
    Traceback (most recent call last):
    ...
    ValueError: Expected a Label Studio url_prefix starting with one of ['gs://', 's3://', 'azure-blob://', 'http://', 'https://']. Received: url_prefix='bucket/pool'
    """

    document_root: str | None = None
    url_prefix: str | None = None
    tfrecord_images: str = "write"
    example_feature: str = "image"

    def __post_init__(self):
        if self.url_prefix is not None and not self.url_prefix.startswith(CLOUD_SCHEMES):
            raise ValueError(
                f"Expected a Label Studio url_prefix starting with one of {list(CLOUD_SCHEMES)}. "
                f"Received: url_prefix={self.url_prefix!r}"
            )
        if self.document_root is not None and not os.path.isdir(self.document_root):
            raise ValueError(
                "Expected the Label Studio document root to be an existing directory. "
                f"Received: document_root={self.document_root!r}"
            )
        if self.tfrecord_images not in TFRECORD_IMAGES:
            raise ValueError(f"Expected tfrecord_images in {TFRECORD_IMAGES}. Received: {self.tfrecord_images!r}")

    def url(self, path: str) -> str:
        """The URL Label Studio loads the image at `path` from."""
        if "://" in path:
            return path  # an object-store item: Label Studio reads it through a connected cloud storage
        if self.document_root is None and self.url_prefix is None:
            return path
        return image_url(path, self.document_root, self.url_prefix)


def write_labeling_files(
    output_dir: str,
    queue: Sequence[Mapping],
    labels: Sequence[str] | None,
    options: LabelStudioOptions,
    model_name: str,
) -> None:
    """Writes `label_studio_tasks.json`, `label_config.xml` (when class names are known) and TFRecord images.

    Args:
        output_dir: triage's output directory.
        queue: the ranked queue records.
        labels: the class names (default: `"0"`, `"1"`, ... from the records' probabilities).
        options: how paths become image URLs.
        model_name: triage's description of the model without its version (`saved_model:<base path>`,
            `server:<name>`); Label Studio shows `prediction_model_version` of it, e.g. `lossal/2`.
    """
    image_files = _tfrecord_images(output_dir, queue, options)
    urls = {}
    for record in queue:
        path = image_files.get(record["id"], record["path"])
        try:
            urls[record["id"]] = options.url(path)
        except ValueError as error:
            raise ValueError(
                f"Label Studio tasks not written: item {record['id']!r}: {error}. The scores are kept; re-run "
                "with another document root (nothing is scored again)."
            ) from None
    versions = {record["id"]: prediction_model_version(model_name, record.get("model_version")) for record in queue}
    tasks = label_studio_tasks(queue, image_urls=urls, model_versions=versions)
    atomic_write(os.path.join(output_dir, LABEL_STUDIO_FILE), json.dumps(tasks, indent=1) + "\n")
    class_names = _class_names(queue, labels)
    if class_names:
        write_label_config(os.path.join(output_dir, LABEL_CONFIG_FILE), class_names)


def prediction_model_version(model: str, version: int | None) -> str:
    """What Label Studio shows as a prediction's model version: `<model name>/<version>`.

    The name is the SavedModel base path's last folder or the served model's name, so it reads the same
    however the model's path was typed, and the Data Manager can filter a project's tasks by it.

    Example:

    >>> prediction_model_version("saved_model:/srv/models/lossal", 2), prediction_model_version("server:lossal", None)
    ('lossal/2', 'lossal')
    """
    kind, _, rest = model.partition(":")
    name = {"saved_model": os.path.basename(rest.rstrip("/")), "server": rest}.get(kind) or model
    return name if version is None else f"{name}/{version}"


def _class_names(queue: Sequence[Mapping], labels: Sequence[str] | None) -> list[str] | None:
    if labels:
        return list(labels)
    widths = {len(record["probabilities"]) for record in queue if "probabilities" in record}
    return [str(index) for index in range(max(widths))] if widths else None


def _tfrecord_images(output_dir: str, queue: Sequence[Mapping], options: LabelStudioOptions) -> dict[str, str]:
    """`{id: image file}` for the queued TFRecord items, written under `label_studio_images/`; stale files removed."""
    wanted: dict[str, dict[int, str]] = {}
    for record in queue:
        match = _TFRECORD_ITEM.match(record["path"])
        if match and not os.path.exists(record["path"]):
            wanted.setdefault(match["file"], {})[int(match["index"])] = record["id"]
    if wanted and options.tfrecord_images == "refuse":
        first = next(iter(wanted))
        raise ValueError(
            f"Label Studio tasks not written: the queue holds items of TFRecord files ({first!r}, ...), which are no "
            "image URLs. Let triage write their images for labeling (tfrecord_images='write', the default)."
        )
    folder = os.path.join(output_dir, LABEL_STUDIO_IMAGES_DIR)
    files = {}
    for tfrecord, items in wanted.items():
        files.update(_write_images(tfrecord, items, folder, options.example_feature))
    if os.path.isdir(folder):
        keep = {os.path.basename(path) for path in files.values()}
        for name in set(os.listdir(folder)) - keep:
            os.remove(os.path.join(folder, name))
    return files


def _write_images(tfrecord: str, items: dict[int, str], folder: str, feature: str) -> dict[str, str]:
    """Writes the encoded image of each wanted record of `tfrecord` (read once, up to the last one wanted)."""
    import tensorflow as tf

    os.makedirs(folder, exist_ok=True)
    files, last = {}, max(items)
    for index, serialized in enumerate(tf.data.TFRecordDataset(tfrecord).take(last + 1).as_numpy_iterator()):
        if index not in items:
            continue
        item_id = items[index]
        values = tf.train.Example.FromString(serialized).features.feature[feature].bytes_list.value
        try:
            kind = image_header_size(values[0])[0] if values else None
        except ValueError:
            kind = None
        if kind is None:
            raise ValueError(
                f"Label Studio tasks not written: item {item_id!r} ({tfrecord}#{index}) has no encoded image in its "
                f"tf.Example feature {feature!r} to show people."
            )
        path = os.path.join(folder, _file_name(item_id) + _EXTENSIONS[kind])
        if not os.path.exists(path):
            with atomic_open(path, binary=True) as handle:
                handle.write(values[0])
        files[item_id] = path
    return files


def _file_name(item_id: str) -> str:
    """A file name for an item id: readable, and unique (a digest of the id) even where ids differ only in symbols."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._")[:80] or "item"
    return f"{readable}-{hashlib.sha256(item_id.encode()).hexdigest()[:10]}"
