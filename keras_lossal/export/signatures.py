"""The serving signatures: traced functions over one model, and the checks TF Serving's C++ path needs.

- `serving_default`: model input tensor `images` -> `predicted_loss` [B], plus
  `probabilities` [B, C] and `class_id` [B] for classifiers, or the raw
  backbone `output` for other tasks, and `embedding` [B, D] (float32): the
  penultimate features (the input of the backbone's last Dense layer, from the
  same forward pass), which the triage queue's diverse selections cluster;
  left out for a model without such a layer or with several outputs;
- `score_image_bytes`: encoded JPEG/PNG/BMP bytes `image_bytes` [B] (GIF
  refused: frames can exceed the header size) -> decoded, resized and
  normalised in the graph with the training `ImagePreprocessing` -> the same outputs;
- `score_examples`: serialized `tf.Example`s `examples` [B] -> the same outputs;
- `classify` / `regress`: TF Serving's Classify and Regress API contracts
  (input `inputs`; `classes` + `scores`, resp. `outputs` = predicted loss).

Every decode is guarded in the graph by the image header (the twin of
`keras_lossal.images.image_header_size`): too many bytes, too many pixels or
an unknown format fail the request before any pixel is decoded.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from keras_lossal.export.config import ServingContract
from keras_lossal.images import BMP_MAGIC, JPEG_MAGIC, PNG_MAGIC
from keras_lossal.records import EMBEDDING

__all__ = [
    "CLASSIFY_METHOD_NAME",
    "EXAMPLE_ENCODINGS",
    "PREDICT_METHOD_NAME",
    "REGRESS_METHOD_NAME",
    "ServingFunctions",
    "finalise_signatures",
    "graph_image_size",
    "validate_signatures",
]

# How `score_examples`, `classify` and `regress` read the image feature: encoded bytes or raw pixel floats.
EXAMPLE_ENCODINGS = ("bytes", "float")
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
# TF Serving's REST codec rejects half floats; these are the dtypes every client decodes.
SERVABLE_DTYPES = {"float32", "int64", "string", "int32"}


def graph_image_size(data: tf.Tensor) -> tf.Tensor:
    """`[height, width]` (int64) read from an encoded image's header, in the graph; `[-1, -1]` if unknown.

    Example:

    >>> png = tf.io.encode_png(tf.zeros((3, 5, 1), tf.uint8))
    >>> graph_image_size(png).numpy().tolist()
    [3, 5]
    >>> graph_image_size(tf.constant(b"GIF89a" + bytes(40))).numpy().tolist()
    [-1, -1]
    """

    def magic(prefix: bytes) -> tf.Tensor:
        return tf.equal(tf.strings.substr(data, 0, len(prefix)), prefix)

    def raw(position: int, length: int, dtype, little_endian: bool) -> tf.Tensor:
        field = tf.strings.substr(data, position, length)
        return tf.cast(tf.io.decode_raw(field, dtype, little_endian=little_endian), tf.int64)

    long_enough = tf.greater_equal(tf.strings.length(data), 26)

    def png():
        width_height = raw(16, 8, tf.int32, little_endian=False)
        return tf.stack([width_height[1], width_height[0]])

    def bmp():
        width_height = tf.abs(raw(18, 8, tf.int32, little_endian=True))
        return tf.stack([width_height[1], width_height[0]])

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)

    def unknown():
        return tf.constant([-1, -1], tf.int64)

    return tf.case(
        [
            (tf.logical_and(long_enough, magic(PNG_MAGIC)), png),
            (tf.logical_and(long_enough, magic(BMP_MAGIC)), bmp),
            (magic(JPEG_MAGIC), jpeg),
        ],
        default=unknown,
        exclusive=False,
    )


class ServingFunctions:
    """The traced functions behind every signature, over one model and one `ServingContract`.

    Args:
        model: the `LossLearningModel` to serve.
        contract: the resolved task, labels, preprocessing and limits.
    """

    def __init__(self, model, contract: ServingContract):
        self.model = model
        self.contract = contract
        self._forward_with_embedding = _forward_with_embedding(model)

    def add_endpoints(self, archive) -> dict[str, str]:
        """Adds every signature the contract allows to a `keras.export.ExportArchive`; returns their method names."""
        contract = self.contract
        image_spec = tf.TensorSpec((None, *contract.input_shape), contract.input_dtype, name="images")
        archive.add_endpoint("serving_default", self.serving_default, [image_spec])
        method_names = {"serving_default": PREDICT_METHOD_NAME}
        if contract.preprocessing is None:
            return method_names
        archive.add_endpoint(
            "score_image_bytes", self.score_image_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")]
        )
        archive.add_endpoint("score_examples", self.score_examples, [tf.TensorSpec([None], tf.string, name="examples")])
        method_names.update(score_image_bytes=PREDICT_METHOD_NAME, score_examples=PREDICT_METHOD_NAME)
        inputs_spec = [tf.TensorSpec([None], tf.string, name="inputs")]
        if contract.classifier:
            archive.add_endpoint("classify", self.classify, inputs_spec)
            method_names["classify"] = CLASSIFY_METHOD_NAME
        archive.add_endpoint("regress", self.regress, inputs_spec)
        method_names["regress"] = REGRESS_METHOD_NAME
        return method_names

    def forward(self, images: tf.Tensor) -> tuple[tf.Tensor, Any, tf.Tensor | None]:
        """`(predicted loss, backbone output, embedding or None)` from one backbone pass."""
        if self._forward_with_embedding is not None:
            predicted_loss, embedding, output = self._forward_with_embedding(images)
            return predicted_loss, output, embedding
        result = self.model(images, training=False)
        return result["predicted_loss"], result["output"], None

    def outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        predicted_loss, output, embedding = self.forward(images)
        outputs = {"predicted_loss": tf.cast(tf.reshape(predicted_loss, [-1]), tf.float32)}
        if embedding is not None:
            outputs[EMBEDDING] = tf.cast(embedding, tf.float32)
        if self.contract.classifier:
            logits = tf.cast(output, tf.float32)
            probabilities = tf.nn.softmax(logits, axis=-1) if self.contract.from_logits else logits
            outputs["probabilities"] = probabilities
            outputs["class_id"] = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        elif isinstance(output, dict):
            for key, value in output.items():
                outputs[f"output_{key}"] = _servable_dtype(value)
        elif isinstance(output, (list, tuple)):
            for index, value in enumerate(output):
                outputs[f"output_{index}"] = _servable_dtype(value)
        else:
            outputs["output"] = _servable_dtype(output)
        return outputs

    def decode_image(self, data: tf.Tensor) -> tf.Tensor:
        prep = self.contract.preprocessing
        max_image_bytes, max_image_pixels = self.contract.max_image_bytes, self.contract.max_image_pixels
        size = graph_image_size(data)
        checks = [
            tf.debugging.assert_less_equal(
                tf.cast(tf.strings.length(data), tf.int64),
                tf.constant(max_image_bytes, tf.int64),
                message=f"Image rejected: encoded size exceeds max_image_bytes={max_image_bytes}",
            ),
            tf.debugging.Assert(
                tf.reduce_all(size >= 0),
                ["Image rejected: unsupported or corrupt image (expected JPEG, PNG or BMP)"],
            ),
            tf.debugging.Assert(
                tf.less_equal(size[0] * size[1], tf.constant(max_image_pixels, tf.int64)),
                [
                    "Image rejected (decompression-bomb guard): header height*width exceeds "
                    f"max_image_pixels={max_image_pixels}; header [height, width] =",
                    size,
                ],
            ),
        ]
        with tf.control_dependencies(checks):
            image = self._decode_pixels(data)
        image = tf.ensure_shape(image, [None, None, prep.channels])
        return tf.ensure_shape(prep(image), [prep.height, prep.width, prep.channels])

    def _decode_pixels(self, data: tf.Tensor) -> tf.Tensor:
        channels = self.contract.preprocessing.channels
        if channels != 1:
            return tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)
        # TensorFlow's BMP decoder refuses channels=1: decode BMP as RGB, then convert to grayscale.
        return tf.cond(
            tf.equal(tf.strings.substr(data, 0, len(BMP_MAGIC)), BMP_MAGIC),
            lambda: tf.image.rgb_to_grayscale(tf.io.decode_bmp(data, channels=3)),
            lambda: tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False),
        )

    def images_from_bytes(self, image_bytes: tf.Tensor) -> tf.Tensor:
        prep = self.contract.preprocessing
        return tf.map_fn(
            self.decode_image,
            image_bytes,
            fn_output_signature=tf.TensorSpec([prep.height, prep.width, prep.channels], tf.float32),
            parallel_iterations=4,
        )

    def images_from_examples(self, examples: tf.Tensor) -> tf.Tensor:
        prep, feature = self.contract.preprocessing, self.contract.example_feature
        if self.contract.example_encoding == "bytes":
            parsed = tf.io.parse_example(examples, {feature: tf.io.FixedLenFeature([], tf.string)})[feature]
            return self.images_from_bytes(parsed)
        spec = {feature: tf.io.FixedLenFeature([prep.height * prep.width * prep.channels], tf.float32)}
        parsed = tf.io.parse_example(examples, spec)[feature]
        return prep(tf.reshape(parsed, [-1, prep.height, prep.width, prep.channels]))

    def serving_default(self, images):
        return self.outputs(images)

    def score_image_bytes(self, image_bytes):
        return self.outputs(self.images_from_bytes(image_bytes))

    def score_examples(self, examples):
        return self.outputs(self.images_from_examples(examples))

    def classify(self, inputs):
        probabilities = self.outputs(self.images_from_examples(inputs))["probabilities"]
        batch = tf.shape(probabilities)[0]
        classes = tf.tile(tf.constant([self.contract.labels], tf.string), tf.stack([batch, 1]))
        return {"classes": classes, "scores": probabilities}

    def regress(self, inputs):
        return {"outputs": self.outputs(self.images_from_examples(inputs))["predicted_loss"]}


def _forward_with_embedding(model):
    """`fn(images) -> (predicted loss, embedding, output)` in one pass, or `None` without an embedding to serve.

    `None` for a model with several outputs (served by its own call, whose output structure the signatures
    keep) or without a final Dense layer whose input is the penultimate features.
    """
    from keras_lossal.acquisition import models

    graph = None if model is None else models.graph_model(model)
    if graph is None or not _has_one_output(graph):
        return None
    try:
        one_pass = models.loss_embedding_and_outputs(model)
    except ValueError:
        return None
    if one_pass is None:
        return None
    dims = models.embedding_model(model).outputs[0].shape[1:]
    # A static feature size in the signature, so clients see [None, D].
    size = int(np.prod(dims)) if all(dim is not None for dim in dims) else -1

    def forward(images):
        predicted_loss, embedding, output = one_pass(images)
        return predicted_loss, tf.reshape(embedding, [tf.shape(embedding)[0], size]), output

    return forward


def _has_one_output(graph) -> bool:
    try:
        return len(graph.outputs) == 1
    except (AttributeError, ValueError):
        return False


def _servable_dtype(tensor):
    tensor = tf.convert_to_tensor(tensor)
    if tensor.dtype.is_floating and tensor.dtype != tf.float32:
        return tf.cast(tensor, tf.float32)
    if tensor.dtype in (tf.int8, tf.int16, tf.uint8, tf.uint16, tf.uint32, tf.int32):
        return tf.cast(tensor, tf.int64)
    return tensor


def finalise_signatures(export_dir: str, method_names: dict[str, str]) -> dict[str, Any]:
    """Sets Classify/Regress method names (ExportArchive writes only Predict) and describes the signatures.

    Returns `{name: {"method_name", "inputs", "outputs"}}` with each tensor as
    `{"dtype", "shape"}` (`None` for an unknown dimension), as `lossal.json` records it.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(pb_path, "rb") as handle:
        saved_model.ParseFromString(handle.read())
    described = {}
    for meta_graph in saved_model.meta_graphs:
        for name, signature in meta_graph.signature_def.items():
            if name.startswith("__"):  # e.g. __saved_model_init_op, not a servable signature
                continue
            if name in method_names:
                signature.method_name = method_names[name]
            described[name] = {
                "method_name": signature.method_name,
                "inputs": {key: _describe_tensor(info) for key, info in signature.inputs.items()},
                "outputs": {key: _describe_tensor(info) for key, info in signature.outputs.items()},
            }
    with tf.io.gfile.GFile(pb_path, "wb") as handle:
        handle.write(saved_model.SerializeToString())
    _refresh_fingerprint(export_dir)
    return described


def _refresh_fingerprint(export_dir: str) -> None:
    fingerprint = os.path.join(export_dir, "fingerprint.pb")
    try:
        from tensorflow.python.saved_model import fingerprinting_utils

        fingerprinting_utils.write_fingerprint(export_dir)
    except Exception:  # noqa: BLE001 - the fingerprint is optional metadata; a stale one is worse than none
        if tf.io.gfile.exists(fingerprint):
            tf.io.gfile.remove(fingerprint)


def _describe_tensor(info) -> dict[str, Any]:
    dims = None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    return {"dtype": tf.as_dtype(info.dtype).name, "shape": dims}


def validate_signatures(signatures: dict[str, Any]) -> None:
    """Refuses signatures TF Serving cannot batch or encode: every tensor needs a `None` batch dimension.

    Example:

    >>> validate_signatures({"serving_default": {"inputs": {"images": {"dtype": "float32", "shape": [None, 4]}},
    ...                                          "outputs": {"loss": {"dtype": "float16", "shape": [None]}}}})
    Traceback (most recent call last):
    ...
    ValueError: Signature 'serving_default' output 'loss' has dtype float16; expected one of ['float32', 'int32', 'int64', 'string'] (TF Serving's REST codec rejects half floats)
    """
    for name, signature in signatures.items():
        for key, spec in {**signature["inputs"], **signature["outputs"]}.items():
            shape = spec["shape"]
            if shape is None or not shape or shape[0] is not None:
                raise ValueError(f"Signature {name!r} tensor {key!r} must have a None batch dimension: {shape}")
        for key, spec in signature["outputs"].items():
            if spec["dtype"] not in SERVABLE_DTYPES:
                raise ValueError(
                    f"Signature {name!r} output {key!r} has dtype {spec['dtype']}; expected one of "
                    f"{sorted(SERVABLE_DTYPES)} (TF Serving's REST codec rejects half floats)"
                )
