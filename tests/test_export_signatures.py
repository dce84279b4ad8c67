"""`keras_lossal.export.signatures`: the in-graph image-size guard, which signatures exist, and their checks."""

import struct

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from keras_lossal.export import signatures
from keras_lossal.export.config import ServingContract
from keras_lossal.images import image_header_size
from keras_lossal.preprocessing import ImagePreprocessing


def bmp(height: int, width: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54, 0, 0, 54)
    return header + struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, 0, 2835, 2835, 0, 0)


def encoded_images():
    pixels = np.random.default_rng(0).integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    return {
        "png": tf.io.encode_png(pixels).numpy(),
        "jpeg": tf.io.encode_jpeg(pixels).numpy(),
        "bmp (top-down, negative height)": bmp(13, 5),
    }


@pytest.mark.parametrize("kind", list(encoded_images()))
def test_graph_image_size_agrees_with_the_python_header_reader(kind):
    data = encoded_images()[kind]
    _, height, width = image_header_size(data)
    assert signatures.graph_image_size(tf.constant(data)).numpy().tolist() == [height, width]


@pytest.mark.parametrize("data", [b"GIF89a" + bytes(40), b"not an image", b"\x89PNG\r\n\x1a\n", b""])
def test_graph_image_size_is_unknown_for_other_or_truncated_data(data):
    assert signatures.graph_image_size(tf.constant(data)).numpy().tolist() == [-1, -1]


class RecordingArchive:
    """Stands in for `keras.export.ExportArchive`: records each endpoint's name and input names."""

    def __init__(self):
        self.endpoints = {}

    def add_endpoint(self, name, fn, input_signature):
        self.endpoints[name] = [spec.name for spec in input_signature]


PREP = ImagePreprocessing(8, 8, 3)


def contract(classifier=True, preprocessing=PREP):
    return ServingContract(
        model_name="lossal",
        input_shape=(8, 8, 3),
        input_dtype="float32",
        classifier=classifier,
        from_logits=True,
        labels=["a", "b"] if classifier else None,
        preprocessing=preprocessing,
        example_feature="image",
        example_encoding="bytes",
        max_image_pixels=100,
        max_image_bytes=200,
    )


def test_classifier_with_preprocessing_gets_every_signature():
    archive = RecordingArchive()
    method_names = signatures.ServingFunctions(None, contract()).add_endpoints(archive)
    assert archive.endpoints == {
        "serving_default": ["images"],
        "score_image_bytes": ["image_bytes"],
        "score_examples": ["examples"],
        "classify": ["inputs"],
        "regress": ["inputs"],
    }
    assert method_names == {
        "serving_default": signatures.PREDICT_METHOD_NAME,
        "score_image_bytes": signatures.PREDICT_METHOD_NAME,
        "score_examples": signatures.PREDICT_METHOD_NAME,
        "classify": signatures.CLASSIFY_METHOD_NAME,
        "regress": signatures.REGRESS_METHOD_NAME,
    }


def test_other_tasks_have_no_classify_and_no_preprocessing_means_only_serving_default():
    archive = RecordingArchive()
    signatures.ServingFunctions(None, contract(classifier=False)).add_endpoints(archive)
    assert list(archive.endpoints) == ["serving_default", "score_image_bytes", "score_examples", "regress"]
    archive = RecordingArchive()
    assert signatures.ServingFunctions(None, contract(preprocessing=None)).add_endpoints(archive) == {
        "serving_default": signatures.PREDICT_METHOD_NAME
    }
    assert list(archive.endpoints) == ["serving_default"]


def test_decode_image_enforces_the_contract_limits():
    functions = signatures.ServingFunctions(None, contract())
    small = tf.io.encode_png(np.zeros((5, 5, 3), np.uint8))
    assert functions.decode_image(small).shape == (8, 8, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="decompression-bomb guard"):
        functions.decode_image(tf.io.encode_png(np.zeros((11, 10, 3), np.uint8)))  # 110 pixels > 100
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_bytes=200"):
        noise = np.random.default_rng(0).integers(0, 256, (9, 9, 3), np.uint8)  # 81 pixels, but > 200 bytes
        functions.decode_image(tf.io.encode_png(noise))


def spec(shape, dtype="float32"):
    return {"dtype": dtype, "shape": shape}


def test_validate_signatures_accepts_batched_servable_tensors():
    signatures.validate_signatures(
        {"s": {"inputs": {"x": spec([None, 4])}, "outputs": {"y": spec([None]), "c": spec([None, 2], "string")}}}
    )


@pytest.mark.parametrize(
    "inputs, outputs, message",
    [
        ({"x": spec([2, 4])}, {"y": spec([None])}, "'x' must have a None batch dimension"),
        ({"x": spec(None)}, {"y": spec([None])}, "'x' must have a None batch dimension"),
        ({"x": spec([None])}, {"y": spec([])}, "'y' must have a None batch dimension"),
        ({"x": spec([None])}, {"y": spec([None], "float16")}, "dtype float16"),
        ({"x": spec([None])}, {"y": spec([None], "uint8")}, "dtype uint8"),
    ],
)
def test_validate_signatures_refuses_what_tf_serving_cannot_batch_or_encode(inputs, outputs, message):
    with pytest.raises(ValueError, match=message):
        signatures.validate_signatures({"s": {"inputs": inputs, "outputs": outputs}})


def test_finalise_signatures_sets_method_names_describes_and_refreshes_the_fingerprint(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", model.call, [tf.TensorSpec((None, 3), tf.float32, name="x")])
    archive.add_endpoint(
        "regress", lambda inputs: {"outputs": model(inputs)[:, 0]}, [tf.TensorSpec((None, 3), name="inputs")]
    )
    export_dir = str(tmp_path)
    archive.write_out(export_dir, verbose=False)
    before = tf.saved_model.experimental.read_fingerprint(export_dir).saved_model_checksum

    described = signatures.finalise_signatures(export_dir, {"regress": signatures.REGRESS_METHOD_NAME})

    assert described["regress"] == {
        "method_name": signatures.REGRESS_METHOD_NAME,
        "inputs": {"inputs": {"dtype": "float32", "shape": [None, 3]}},
        "outputs": {"outputs": {"dtype": "float32", "shape": [None]}},
    }
    assert described["serving_default"]["method_name"] == signatures.PREDICT_METHOD_NAME
    assert not [name for name in described if name.startswith("__")]
    saved_model = saved_model_pb2.SavedModel.FromString((tmp_path / "saved_model.pb").read_bytes())
    assert saved_model.meta_graphs[0].signature_def["regress"].method_name == signatures.REGRESS_METHOD_NAME
    after = tf.saved_model.experimental.read_fingerprint(export_dir).saved_model_checksum
    assert after != before  # the fingerprint describes the rewritten saved_model.pb, not the old one


def loss_learning_model(backbone_layers):
    import keras_lossal as kl

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for layer in backbone_layers:
        x = layer(x)
    return kl.LossLearningModel(keras.Model(inputs, x), head=kl.LossPredictionHead(units=4))


def test_embedding_is_the_last_dense_input_from_the_same_pass_and_left_out_without_one():
    from keras_lossal.acquisition import models

    images = tf.constant(np.random.default_rng(0).normal(size=(3, 8, 8, 3)), tf.float32)

    def conv():
        return [keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.Conv2D(6, 3, strides=2)]

    with_dense = loss_learning_model([*conv(), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    outputs = signatures.ServingFunctions(with_dense, contract()).outputs(images)
    expected = with_dense(images, training=False)
    np.testing.assert_array_equal(outputs["predicted_loss"], expected["predicted_loss"])
    np.testing.assert_allclose(outputs["probabilities"], tf.nn.softmax(expected["output"]), atol=1e-6)
    embedding = models.embedding_model(with_dense)(images, training=False)[0]
    assert outputs["embedding"].dtype == tf.float32 and outputs["embedding"].shape == (3, 6)
    np.testing.assert_allclose(outputs["embedding"], embedding, atol=1e-6)
    # No Dense layer: no penultimate features to serve; the other outputs are the model's own call's.
    without_dense = loss_learning_model([*conv(), keras.layers.GlobalAveragePooling2D()])
    outputs = signatures.ServingFunctions(without_dense, contract(classifier=False)).outputs(images)
    assert set(outputs) == {"predicted_loss", "output"}
    np.testing.assert_array_equal(outputs["output"], without_dense(images, training=False)["output"])
