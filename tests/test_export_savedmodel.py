"""`keras_lossal.export.savedmodel`: the steps of `export_for_serving`, each alone, and an export through gfile.

The end-to-end checks of the SavedModel itself (run the way TF Serving runs
it) are in `tests/test_export.py`.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lossal as kl
from keras_lossal.export import read_export_config, resolve_version_dir, savedmodel
from keras_lossal.preprocessing import ImagePreprocessing


def tiny_model(units=3, activation=None, name="tiny_lossal"):
    keras.utils.set_random_seed(0)
    image = keras.Input((4, 4, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="conv")(image))
    backbone = keras.Model(image, keras.layers.Dense(units, activation=activation, name="logits")(pooled))
    return kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=2), name=name)


def test_export_for_serving_is_the_package_function():
    assert kl.export_for_serving is kl.export.export_for_serving is savedmodel.export_for_serving


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"model": keras.Sequential()}, TypeError, "Expected a LossLearningModel"),
        ({"task": "detection"}, ValueError, r"Expected task in \('auto', 'classification', 'other'\)"),
        ({"example_encoding": "jpeg"}, ValueError, "Expected example_encoding in"),
        ({"max_image_pixels": 0}, ValueError, "Expected positive limits.*max_image_pixels=0"),
        ({"max_image_bytes": -1}, ValueError, "Expected positive limits.*max_image_bytes=-1"),
    ],
)
def test_check_arguments_names_the_bad_value(overrides, error, message):
    arguments = {"model": tiny_model(), "task": "auto", "example_encoding": "bytes"}
    arguments.update(max_image_pixels=10, max_image_bytes=10)
    arguments.update(overrides)
    with pytest.raises(error, match=message):
        savedmodel._check_arguments(**arguments)


def test_input_spec_needs_one_fully_defined_input():
    assert savedmodel._input_spec(tiny_model().backbone) == ((4, 4, 3), "float32")
    first, second = keras.Input((2,), name="first"), keras.Input((2,), name="second")
    two_inputs = keras.Model([first, second], keras.layers.Dense(2)(keras.layers.Concatenate()([first, second])))
    with pytest.raises(ValueError, match="exactly one input"):
        savedmodel._input_spec(two_inputs)
    image = keras.Input((None, None, 3))
    any_size = keras.Model(image, keras.layers.GlobalAveragePooling2D()(image))
    with pytest.raises(ValueError, match=r"fully defined backbone input shape. Received: \(None, None, 3\)"):
        savedmodel._input_spec(any_size)


def test_resolve_task():
    three_classes, one_unit = keras.Input((3,)), keras.Input((1,))
    assert savedmodel._resolve_task(three_classes, "auto") is True
    assert savedmodel._resolve_task(one_unit, "auto") is False
    assert savedmodel._resolve_task(three_classes, "other") is False
    assert savedmodel._resolve_task(three_classes, "classification") is True
    with pytest.raises(ValueError, match=r"task='classification' needs .* Received output shape: \(None, 1\)"):
        savedmodel._resolve_task(one_unit, "classification")


def test_resolve_labels():
    output = keras.Input((3,))
    assert savedmodel._resolve_labels(output, True, None) == ["0", "1", "2"]
    assert savedmodel._resolve_labels(output, True, ("cat", 7, "bird")) == ["cat", "7", "bird"]
    assert savedmodel._resolve_labels(output, False, None) is None
    with pytest.raises(ValueError, match=r"Expected 3 labels \(one per class\). Received 1: \['a'\]"):
        savedmodel._resolve_labels(output, True, ["a"])
    with pytest.raises(ValueError, match="only apply to classifiers"):
        savedmodel._resolve_labels(output, False, ["a", "b", "c"])


def test_check_preprocessing():
    savedmodel._check_preprocessing(None, (4, 4, 3))
    savedmodel._check_preprocessing(ImagePreprocessing(4, 4, 3), (4, 4, 3))
    with pytest.raises(TypeError, match="Expected an ImagePreprocessing. Received: dict"):
        savedmodel._check_preprocessing({"height": 4}, (4, 4, 3))
    with pytest.raises(ValueError, match=r"does not match the backbone input shape \(4, 4, 3\)"):
        savedmodel._check_preprocessing(ImagePreprocessing(4, 4, 1), (4, 4, 3))


def test_resolve_from_logits_reads_the_last_activation_unless_told():
    assert savedmodel._resolve_from_logits(tiny_model(), None) is True
    assert savedmodel._resolve_from_logits(tiny_model(activation="softmax"), None) is False
    assert savedmodel._resolve_from_logits(tiny_model(activation="softmax"), 1) is True


def test_existing_version_fails_before_anything_is_traced(tmp_path, monkeypatch):
    (tmp_path / "2").mkdir()

    def must_not_trace(*args):
        raise AssertionError("the archive was built although the version exists")

    monkeypatch.setattr(savedmodel, "_build_archive", must_not_trace)
    with pytest.raises(FileExistsError, match="Version 2 already exists"):
        kl.export_for_serving(tiny_model(), str(tmp_path), version="2")
    assert os.listdir(tmp_path) == ["2"]


def test_build_archive_traces_the_contract_signatures(tmp_path):
    model = tiny_model()
    contract = kl.export.config.ServingContract(
        model_name="m",
        input_shape=(4, 4, 3),
        input_dtype="float32",
        classifier=True,
        from_logits=True,
        labels=["a", "b", "c"],
        preprocessing=None,
        example_feature="image",
        example_encoding="bytes",
        max_image_pixels=10,
        max_image_bytes=10,
    )
    archive, method_names = savedmodel._build_archive(model, contract)
    assert method_names == {"serving_default": "tensorflow/serving/predict"}
    archive.write_out(str(tmp_path), verbose=False)
    serving_default = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    outputs = serving_default(images=tf.constant(x))
    expected = model.predict(x, verbose=0)
    assert set(outputs) == {"predicted_loss", "probabilities", "class_id", "embedding"}
    np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(expected["output"]), atol=1e-6)
    np.testing.assert_allclose(outputs["predicted_loss"], expected["predicted_loss"], atol=1e-6)
    embedding = kl.acquisition.models.embedding_model(model)(x, training=False)[0]
    np.testing.assert_allclose(outputs["embedding"], embedding, atol=1e-5)


def test_export_to_a_path_with_a_scheme_publishes_through_gfile(tmp_path, monkeypatch):
    """A `file://` base path takes the object-store (`gs://`) path: gfile copies, never `os.rename`.

    (`ram://` lists directories by raw prefix, so `assets/` appears to hold
    `assets.extra`'s files and TensorFlow's own `rmtree` fails on a SavedModel
    there; `tests/test_export_versions.py` publishes to `ram://` directly.)
    """
    base = (tmp_path / "models" / "lossal").as_uri()
    model = tiny_model()
    monkeypatch.setattr(os, "rename", lambda *args: pytest.fail(f"os.rename{args} on a path with a scheme"))
    first = kl.export_for_serving(model, base, model_name="served")
    second = kl.export_for_serving(model, base, warmup=False)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        kl.export_for_serving(model, base, version=2)
    monkeypatch.undo()
    assert (first, second) == (f"{base}/1", f"{base}/2")
    assert sorted(os.listdir(tmp_path / "models" / "lossal")) == ["1", "2"]  # no staging directory left behind
    assert resolve_version_dir(base) == second
    assert read_export_config(first)["model_name"] == "served"
    assert tf.io.gfile.exists(f"{first}/assets.extra/tf_serving_warmup_requests")
    assert not tf.io.gfile.exists(f"{second}/assets.extra/tf_serving_warmup_requests")
    serving_default = tf.saved_model.load(first).signatures["serving_default"]
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 3)).astype("float32")
    outputs = serving_default(images=tf.constant(x))
    np.testing.assert_allclose(outputs["predicted_loss"], model.predict(x, verbose=0)["predicted_loss"], atol=1e-5)
