"""`keras_lossal.export.config`: the `lossal.json` an export carries, written and read back."""

import json
import os

import keras
import pytest
import tensorflow as tf

from keras_lossal.export import config as export_config
from keras_lossal.export import read_export_config
from keras_lossal.preprocessing import ImagePreprocessing

PREP = ImagePreprocessing(8, 8, 3, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
# The fields of lossal.json format version 1: clients (serving, Beam, triage) read these names.
FIELDS = {
    "format_version",
    "model_name",
    "task",
    "from_logits",
    "labels",
    "input_shape",
    "input_dtype",
    "preprocessing",
    "example_feature",
    "example_encoding",
    "max_image_pixels",
    "max_image_bytes",
    "signatures",
    "keras_version",
    "tensorflow_version",
}


def contract(**overrides):
    values = dict(
        model_name="lossal",
        input_shape=(8, 8, 3),
        input_dtype="float32",
        classifier=True,
        from_logits=False,
        labels=["cat", "dog", "bird"],
        preprocessing=PREP,
        example_feature="image",
        example_encoding="bytes",
        max_image_pixels=1_000,
        max_image_bytes=2_000,
    )
    return export_config.ServingContract(**{**values, **overrides})


def test_to_config_records_every_field_of_the_contract():
    signatures = {"serving_default": {"method_name": "tensorflow/serving/predict", "inputs": {}, "outputs": {}}}
    config = contract().to_config(signatures)
    assert set(config) == FIELDS
    assert config["format_version"] == export_config.EXPORT_FORMAT_VERSION == 1
    assert config["task"] == "classification" and config["from_logits"] is False
    assert config["labels"] == ["cat", "dog", "bird"] and config["input_shape"] == [8, 8, 3]
    assert ImagePreprocessing.from_config(config["preprocessing"]) == PREP
    assert (config["max_image_pixels"], config["max_image_bytes"]) == (1_000, 2_000)
    assert config["signatures"] == signatures
    assert config["keras_version"] == keras.__version__ and config["tensorflow_version"] == tf.__version__


def test_other_task_without_preprocessing():
    config = contract(classifier=False, labels=None, preprocessing=None).to_config({})
    assert config["task"] == "other" and config["labels"] is None and config["preprocessing"] is None


def test_written_config_is_plain_sorted_json_read_back_from_a_base_path(tmp_path):
    version_dir = tmp_path / "3"
    version_dir.mkdir()
    (version_dir / "saved_model.pb").write_bytes(b"")
    written = contract().to_config({})
    path = export_config.write_export_config(str(version_dir), written)
    assert path == os.path.join(str(version_dir), "assets.extra", export_config.EXPORT_CONFIG_FILE)
    text = (version_dir / "assets.extra" / "lossal.json").read_text()
    assert list(json.loads(text)) == sorted(written)
    assert read_export_config(str(tmp_path)) == read_export_config(str(version_dir)) == json.loads(text)


def test_reading_an_export_without_lossal_json_names_the_file(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lossal.json' is missing.*not written by keras_lossal"):
        read_export_config(str(tmp_path))
