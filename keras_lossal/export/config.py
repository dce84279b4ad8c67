"""`assets.extra/lossal.json`: what an export serves, written beside the SavedModel and read back by clients.

`ServingContract` holds the resolved choices (task, labels, preprocessing,
limits) that both the traced signatures and `lossal.json` are built from,
so the two never disagree.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import keras
import tensorflow as tf

from keras_lossal.export.versions import resolve_version_dir
from keras_lossal.preprocessing import ImagePreprocessing

__all__ = [
    "EXPORT_CONFIG_FILE",
    "EXPORT_FORMAT_VERSION",
    "ServingContract",
    "read_export_config",
    "write_export_config",
]

EXPORT_CONFIG_FILE = "lossal.json"
EXPORT_FORMAT_VERSION = 1
EXTRA_ASSETS_DIR = "assets.extra"


@dataclasses.dataclass(frozen=True)
class ServingContract:
    """What an export serves, resolved and validated from `export_for_serving`'s arguments.

    Example:

    >>> contract = ServingContract(
    ...     model_name="lossal", input_shape=(8, 8, 3), input_dtype="float32", classifier=True,
    ...     from_logits=True, labels=["cat", "dog"], preprocessing=None, example_feature="image",
    ...     example_encoding="bytes", max_image_pixels=10_000, max_image_bytes=65_536)
    >>> config = contract.to_config(signatures={})
    >>> config["task"], config["labels"], config["input_shape"], config["format_version"]
    ('classification', ['cat', 'dog'], [8, 8, 3], 1)
    """

    model_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    classifier: bool
    from_logits: bool
    labels: list[str] | None
    preprocessing: ImagePreprocessing | None
    example_feature: str
    example_encoding: str
    max_image_pixels: int
    max_image_bytes: int

    def to_config(self, signatures: dict[str, Any]) -> dict[str, Any]:
        """The `lossal.json` content, given the signatures as `finalise_signatures` describes them."""
        return {
            "format_version": EXPORT_FORMAT_VERSION,
            "model_name": self.model_name,
            "task": "classification" if self.classifier else "other",
            "from_logits": self.from_logits,
            "labels": self.labels,
            "input_shape": list(self.input_shape),
            "input_dtype": self.input_dtype,
            "preprocessing": None if self.preprocessing is None else self.preprocessing.get_config(),
            "example_feature": self.example_feature,
            "example_encoding": self.example_encoding,
            "max_image_pixels": self.max_image_pixels,
            "max_image_bytes": self.max_image_bytes,
            "signatures": signatures,
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
        }


def write_export_config(version_dir: str, config: dict[str, Any]) -> str:
    """Writes `config` as `<version_dir>/assets.extra/lossal.json` and returns its path."""
    extra = os.path.join(version_dir, EXTRA_ASSETS_DIR)
    tf.io.gfile.makedirs(extra)
    path = os.path.join(extra, EXPORT_CONFIG_FILE)
    with tf.io.gfile.GFile(path, "w") as handle:
        json.dump(config, handle, indent=2, sort_keys=True)
    return path


def read_export_config(path: str) -> dict[str, Any]:
    """Reads `assets.extra/lossal.json` of an export (base path or version directory).

    Example:

    >>> read_export_config("models/lossal")["preprocessing"]  # doctest: +SKIP
    {'height': 32, 'width': 32, 'channels': 3, ...}
    """
    version_dir = resolve_version_dir(path)
    config_path = os.path.join(version_dir, EXTRA_ASSETS_DIR, EXPORT_CONFIG_FILE)
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(
            f"{config_path!r} is missing: {version_dir!r} was not written by keras_lossal.export_for_serving."
        )
    with tf.io.gfile.GFile(config_path, "r") as handle:
        return json.load(handle)
