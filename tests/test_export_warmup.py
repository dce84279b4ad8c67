"""`keras_lossal.export.warmup`: one TF Serving warmup request per signature, naming the served model."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import keras_lossal as kl
from keras_lossal.export import read_export_config, warmup
from keras_lossal.preprocessing import ImagePreprocessing

PREP = ImagePreprocessing(6, 5, 3)
ALL_SIGNATURES = {
    name: {} for name in ("serving_default", "score_image_bytes", "score_examples", "classify", "regress")
}


def config(**overrides):
    """A `lossal.json` as `export_for_serving` writes it, reduced to what warmup reads."""
    base = {
        "model_name": "lossal",
        "input_shape": [6, 5, 3],
        "input_dtype": "float32",
        "preprocessing": PREP.get_config(),
        "example_feature": "image",
        "example_encoding": "bytes",
        "signatures": ALL_SIGNATURES,
    }
    return {**base, **overrides}


def request_of(log):
    return getattr(log, log.WhichOneof("log_type")).request


def test_one_request_per_signature_in_signature_order():
    logs = warmup.warmup_requests(config())
    assert [request_of(log).model_spec.signature_name for log in logs] == list(ALL_SIGNATURES)
    assert [log.WhichOneof("log_type") for log in logs] == [
        "predict_log",
        "predict_log",
        "predict_log",
        "classify_log",
        "regress_log",
    ]


def test_every_request_names_the_served_model():
    for name in ("lossal", "fashion_mnist_v2"):
        names = {request_of(log).model_spec.name for log in warmup.warmup_requests(config(model_name=name))}
        assert names == {name}


def test_requests_carry_batches_the_signatures_accept():
    serving_default, image_bytes, examples, classify, regress = warmup.warmup_requests(config(), batch_size=3)
    images = tf.make_ndarray(serving_default.predict_log.request.inputs["images"])
    assert images.shape == (3, 6, 5, 3) and images.dtype == np.float32 and not images.any()
    encoded = tf.make_ndarray(image_bytes.predict_log.request.inputs["image_bytes"])
    assert encoded.shape == (3,)
    assert tf.io.decode_png(encoded[0]).shape == (6, 5, 3)  # the export's own size: no resize cost hidden
    serialized = tf.make_ndarray(examples.predict_log.request.inputs["examples"])
    parsed = tf.io.parse_example(serialized, {"image": tf.io.FixedLenFeature([], tf.string)})["image"].numpy()
    assert list(parsed) == list(encoded)
    for log in (classify, regress):
        assert len(request_of(log).input.example_list.examples) == 3
        assert request_of(log).input.example_list.examples[0].SerializeToString() == serialized[0]


def test_float_examples_hold_raw_pixels():
    logs = warmup.warmup_requests(config(example_encoding="float", example_feature="pixels"))
    example = request_of(logs[-1]).input.example_list.examples[0]
    values = example.features.feature["pixels"].float_list.value
    assert len(values) == 6 * 5 * 3 and set(values) == {128.0}


def test_only_serving_default_without_preprocessing_and_no_classify_for_other_tasks():
    assert len(warmup.warmup_requests(config(preprocessing=None, input_dtype="uint8"))) == 1
    only = warmup.warmup_requests(config(preprocessing=None, input_dtype="uint8"))[0]
    assert tf.make_ndarray(only.predict_log.request.inputs["images"]).dtype == np.uint8
    regressor = config(signatures={name: {} for name in ALL_SIGNATURES if name != "classify"})
    kinds = [log.WhichOneof("log_type") for log in warmup.warmup_requests(regressor)]
    assert kinds == ["predict_log", "predict_log", "predict_log", "regress_log"]


def test_write_warmup_round_trips_as_tfrecord(tmp_path):
    (tmp_path / "assets.extra").mkdir()
    path = warmup.write_warmup(str(tmp_path), config(model_name="served"))
    assert path == os.path.join(str(tmp_path), "assets.extra", warmup.WARMUP_FILE)
    records = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.compat.v1.io.tf_record_iterator(path)]
    assert records == warmup.warmup_requests(config(model_name="served"))
    assert 0 < len(records) <= 1000


@pytest.mark.parametrize("name", ["served", None])
def test_exported_warmup_names_the_model_name(tmp_path, name):
    """`model_name` (default `model.name`) is what lossal.json and every warmup request name."""
    image = keras.Input((4, 4, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="conv")(image))
    backbone = keras.Model(image, keras.layers.Dense(2, name="logits")(pooled), name="tiny_backbone")
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=2), name="tiny_lossal")
    path = kl.export_for_serving(model, str(tmp_path), model_name=name)
    expected = name or "tiny_lossal"
    assert read_export_config(path)["model_name"] == expected
    records = tf.compat.v1.io.tf_record_iterator(os.path.join(path, "assets.extra", warmup.WARMUP_FILE))
    names = [request_of(prediction_log_pb2.PredictionLog.FromString(record)).model_spec.name for record in records]
    assert names == [expected]
