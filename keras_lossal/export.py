"""Export a `LossLearningModel` as a SavedModel that TensorFlow Serving runs.

The artifact follows TF Serving's layout, `<base_path>/<integer version>/`,
and carries several signatures over one set of weights:

- `serving_default`: model input tensor `images` -> `predicted_loss` [B], plus
  `probabilities` [B, C] and `class_id` [B] for classifiers, or the raw
  backbone `output` for other tasks;
- `score_image_bytes`: encoded JPEG/PNG/BMP bytes (GIF refused: frames can exceed the header size) `image_bytes` [B] ->
  decoded, resized and normalised in the graph with the training
  `ImagePreprocessing` -> the same outputs;
- `score_examples`: serialized `tf.Example`s `examples` [B] (feature `image`)
  -> the same outputs;
- `classify` / `regress`: TF Serving's Classify and Regress API contracts
  (input `inputs`; `classes` + `scores`, resp. `outputs` = predicted loss).

`assets.extra/lossal.json` records the preprocessing, labels, task and
signature contracts; `assets.extra/tf_serving_warmup_requests` holds warmup
requests for every signature.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_lossal.acquisition.models import outputs_are_probabilities
from keras_lossal.images import BMP_MAGIC, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, JPEG_MAGIC, PNG_MAGIC
from keras_lossal.preprocessing import ImagePreprocessing

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "EXPORT_CONFIG_FILE",
    "WARMUP_FILE",
    "export_for_serving",
    "read_export_config",
    "resolve_version_dir",
]

EXPORT_CONFIG_FILE = "lossal.json"
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_FORMAT_VERSION = 1

TASKS = ("auto", "classification", "other")
EXAMPLE_ENCODINGS = ("bytes", "float")
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"

_VERSION_PATTERN = re.compile(r"^[0-9]+$")


# --------------------------------------------------------------------------- versions
def _parse_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer, str)):
        raise ValueError(
            f"Expected `version` to be a non-negative integer (TF Serving version directories are integers). "
            f"Received: version={version!r}"
        )
    if isinstance(version, str) and not _VERSION_PATTERN.match(version):
        raise ValueError(
            "Expected `version` to be a non-negative integer (TF Serving version directories are integers). "
            f"Received: version={version!r}"
        )
    value = int(version)
    if value < 0:
        raise ValueError(f"Expected `version` >= 0. Received: version={version!r}")
    return value


def _existing_versions(base_path: str) -> list[int]:
    if not tf.io.gfile.isdir(base_path):
        return []
    versions = []
    for name in tf.io.gfile.listdir(base_path):
        name = name.rstrip("/")
        if _VERSION_PATTERN.match(name) and tf.io.gfile.isdir(os.path.join(base_path, name)):
            versions.append(int(name))
    return sorted(versions)


def resolve_version_dir(path: str, version: int | str | None = None) -> str:
    """Finds the SavedModel directory to load under a TF Serving base path.

    `path` may be a version directory itself (it holds `saved_model.pb`) or a
    base path whose children are integer version directories; then the
    highest version (or `version`) is chosen, like TF Serving's default policy.
    Non-numeric children (including half-written `.tmp-*` exports) are never
    chosen.

    Args:
        path: a base path or a version directory.
        version: a specific version under a base path, or `None` for the highest.

    Example:

    >>> resolve_version_dir("models/lossal")  # doctest: +SKIP
    'models/lossal/3'
    """
    path = os.fspath(path)
    if version is None and tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        leaf = os.path.basename(os.path.normpath(path))
        if not _VERSION_PATTERN.match(leaf):
            raise ValueError(
                f"Refusing to load SavedModel directory {path!r}: its name {leaf!r} is not an integer version. "
                "TF Serving only loads <base_path>/<integer version>/; pass the base path or a version directory."
            )
        return path
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"No such model directory: {path!r}")
    versions = _existing_versions(path)
    if version is not None:
        wanted = _parse_version(version)
        if wanted not in versions:
            raise FileNotFoundError(f"Version {wanted} not found under {path!r}; available versions: {versions}")
        return os.path.join(path, str(wanted))
    if not versions:
        raise FileNotFoundError(
            f"No integer version directory with a SavedModel under {path!r}; found: {sorted(tf.io.gfile.listdir(path))}"
        )
    return os.path.join(path, str(versions[-1]))


def read_export_config(path: str) -> dict[str, Any]:
    """Reads `assets.extra/lossal.json` of an export (base path or version directory).

    Example:

    >>> read_export_config("models/lossal")["preprocessing"]  # doctest: +SKIP
    {'height': 32, 'width': 32, 'channels': 3, ...}
    """
    version_dir = resolve_version_dir(path)
    config_path = os.path.join(version_dir, "assets.extra", EXPORT_CONFIG_FILE)
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(
            f"{config_path!r} is missing: {version_dir!r} was not written by keras_lossal.export_for_serving."
        )
    with tf.io.gfile.GFile(config_path, "r") as handle:
        return json.load(handle)


# --------------------------------------------------------------------------- image headers, in the graph
def _graph_image_size(data: tf.Tensor) -> tf.Tensor:
    """`[height, width]` (int64) read from an encoded image's header, in the graph."""

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


# --------------------------------------------------------------------------- the serving module
class _ServingFunctions:
    """Builds the traced functions behind every signature."""

    def __init__(
        self,
        model,
        preprocessing: ImagePreprocessing | None,
        classifier: bool,
        from_logits: bool,
        labels: list[str] | None,
        example_feature: str,
        example_encoding: str,
        max_image_pixels: int,
        max_image_bytes: int,
    ):
        self.model = model
        self.preprocessing = preprocessing
        self.classifier = classifier
        self.from_logits = from_logits
        self.labels = labels
        self.example_feature = example_feature
        self.example_encoding = example_encoding
        self.max_image_pixels = int(max_image_pixels)
        self.max_image_bytes = int(max_image_bytes)

    def outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        result = self.model(images, training=False)
        predicted_loss = tf.cast(tf.reshape(result["predicted_loss"], [-1]), tf.float32)
        outputs = {"predicted_loss": predicted_loss}
        output = result["output"]
        if self.classifier:
            logits = tf.cast(output, tf.float32)
            probabilities = tf.nn.softmax(logits, axis=-1) if self.from_logits else logits
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
        prep = self.preprocessing
        size = _graph_image_size(data)
        checks = [
            tf.debugging.assert_less_equal(
                tf.cast(tf.strings.length(data), tf.int64),
                tf.constant(self.max_image_bytes, tf.int64),
                message=f"Image rejected: encoded size exceeds max_image_bytes={self.max_image_bytes}",
            ),
            tf.debugging.Assert(
                tf.reduce_all(size >= 0),
                ["Image rejected: unsupported or corrupt image (expected JPEG, PNG or BMP)"],
            ),
            tf.debugging.Assert(
                tf.less_equal(size[0] * size[1], tf.constant(self.max_image_pixels, tf.int64)),
                [
                    "Image rejected (decompression-bomb guard): header height*width exceeds "
                    f"max_image_pixels={self.max_image_pixels}; header [height, width] =",
                    size,
                ],
            ),
        ]
        with tf.control_dependencies(checks):
            image = self._decode_pixels(data)
        image = tf.ensure_shape(image, [None, None, prep.channels])
        return tf.ensure_shape(prep(image), [prep.height, prep.width, prep.channels])

    def _decode_pixels(self, data: tf.Tensor) -> tf.Tensor:
        channels = self.preprocessing.channels
        if channels != 1:
            return tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)
        # TensorFlow's BMP decoder refuses channels=1: decode BMP as RGB, then convert to grayscale.
        return tf.cond(
            tf.equal(tf.strings.substr(data, 0, len(BMP_MAGIC)), BMP_MAGIC),
            lambda: tf.image.rgb_to_grayscale(tf.io.decode_bmp(data, channels=3)),
            lambda: tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False),
        )

    def images_from_bytes(self, image_bytes: tf.Tensor) -> tf.Tensor:
        prep = self.preprocessing
        return tf.map_fn(
            self.decode_image,
            image_bytes,
            fn_output_signature=tf.TensorSpec([prep.height, prep.width, prep.channels], tf.float32),
            parallel_iterations=4,
        )

    def images_from_examples(self, examples: tf.Tensor) -> tf.Tensor:
        prep = self.preprocessing
        if self.example_encoding == "bytes":
            spec = {self.example_feature: tf.io.FixedLenFeature([], tf.string)}
            parsed = tf.io.parse_example(examples, spec)[self.example_feature]
            return self.images_from_bytes(parsed)
        spec = {self.example_feature: tf.io.FixedLenFeature([prep.height * prep.width * prep.channels], tf.float32)}
        parsed = tf.io.parse_example(examples, spec)[self.example_feature]
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
        classes = tf.tile(tf.constant([self.labels], tf.string), tf.stack([batch, 1]))
        return {"classes": classes, "scores": probabilities}

    def regress(self, inputs):
        return {"outputs": self.outputs(self.images_from_examples(inputs))["predicted_loss"]}


def _servable_dtype(tensor):
    tensor = tf.convert_to_tensor(tensor)
    if tensor.dtype.is_floating and tensor.dtype != tf.float32:
        return tf.cast(tensor, tf.float32)
    if tensor.dtype in (tf.int8, tf.int16, tf.uint8, tf.uint16, tf.uint32, tf.int32):
        return tf.cast(tensor, tf.int64)
    return tensor


def _is_classifier(output: Any) -> bool:
    shape = getattr(output, "shape", None)
    return shape is not None and len(shape) == 2 and shape[-1] is not None and shape[-1] > 1


# --------------------------------------------------------------------------- export
def export_for_serving(
    model,
    base_path: str,
    version: int | str | None = None,
    preprocessing: ImagePreprocessing | None = None,
    labels: Sequence[str] | None = None,
    task: str = "auto",
    from_logits: bool | None = None,
    example_feature: str = "image",
    example_encoding: str = "bytes",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    warmup: bool = True,
    model_name: str | None = None,
) -> str:
    """Exports a `LossLearningModel` in TF Serving's layout and returns the version directory.

    Writes `<base_path>/<version>/` through a temporary directory inside
    `base_path` and a rename, so TF Serving never sees a half-written
    version; an existing version is never overwritten.

    Args:
        model: a `LossLearningModel` (or any Keras model whose call returns
            `{"output": ..., "predicted_loss": (B,)}` and has a `backbone`).
        base_path: the model's base path (TF Serving's `base_path`).
        version: the integer version to write, or `None` for the next free one.
        preprocessing: the `ImagePreprocessing` used in training. Required for
            the image signatures (`score_image_bytes`, `score_examples`,
            `classify`, `regress`); without it only `serving_default` is exported.
        labels: class names for classifiers (default `"0"`, `"1"`, ...).
        task: `"auto"` (a rank-2 output with more than one unit is a
            classifier), `"classification"` or `"other"` (raw `output`).
        from_logits: whether a classifier's output is logits (softmax is
            applied in the graph) or already probabilities; `None` decides
            from the model's last layer (softmax/sigmoid means probabilities).
        example_feature: the `tf.Example` feature holding the image.
        example_encoding: `"bytes"` (encoded image) or `"float"` (raw pixel
            values, `height*width*channels` floats, preprocessed in the graph).
        max_image_pixels: images whose header declares more pixels are
            rejected before decoding (decompression-bomb guard).
        max_image_bytes: larger encoded images are rejected.
        warmup: write `assets.extra/tf_serving_warmup_requests`.
        model_name: name recorded in `lossal.json` (default: `model.name`).

    Example:

    >>> import keras_lossal as kl
    >>> from keras_lossal.export import export_for_serving
    >>> from keras_lossal.preprocessing import ImagePreprocessing
    >>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar((8, 8, 3), num_classes=3, width=4))
    >>> export_for_serving(model, "models/lossal", preprocessing=ImagePreprocessing(8, 8, 3))  # doctest: +SKIP
    'models/lossal/1'
    """
    if not hasattr(model, "backbone"):
        raise TypeError(f"Expected a LossLearningModel (a model with a `backbone`). Received: {type(model).__name__}")
    if task not in TASKS:
        raise ValueError(f"Expected task in {TASKS}. Received: task={task!r}")
    if version is not None:
        version = _parse_version(version)
        if tf.io.gfile.exists(os.path.join(os.fspath(base_path), str(version))):
            raise FileExistsError(
                f"Version {version} already exists at {os.path.join(os.fspath(base_path), str(version))!r}; "
                "refusing to overwrite it."
            )
    if example_encoding not in EXAMPLE_ENCODINGS:
        raise ValueError(f"Expected example_encoding in {EXAMPLE_ENCODINGS}. Received: {example_encoding!r}")
    if int(max_image_pixels) <= 0 or int(max_image_bytes) <= 0:
        raise ValueError(
            f"Expected positive limits. Received: max_image_pixels={max_image_pixels}, max_image_bytes={max_image_bytes}"
        )
    backbone = model.backbone
    if len(backbone.inputs) != 1:
        raise ValueError(
            f"export_for_serving supports backbones with exactly one input. Received backbone "
            f"'{backbone.name}' with inputs {[tensor.name for tensor in backbone.inputs]}"
        )
    input_shape = tuple(backbone.inputs[0].shape[1:])
    if any(dim is None for dim in input_shape):
        raise ValueError(f"Expected a fully defined backbone input shape. Received: {input_shape}")
    input_dtype = tf.as_dtype(backbone.inputs[0].dtype)
    output = backbone.output
    if task == "auto":
        classifier = _is_classifier(output)
    elif task == "classification":
        if not _is_classifier(output):
            raise ValueError(
                f"task='classification' needs a single rank-2 output with more than one unit. "
                f"Received output shape: {getattr(output, 'shape', output)}"
            )
        classifier = True
    else:
        classifier = False
    num_classes = int(output.shape[-1]) if classifier else 0
    if classifier:
        labels = [str(i) for i in range(num_classes)] if labels is None else [str(label) for label in labels]
        if len(labels) != num_classes:
            raise ValueError(f"Expected {num_classes} labels (one per class). Received {len(labels)}: {labels}")
    elif labels is not None:
        raise ValueError("`labels` only apply to classifiers; this model was not detected as one (see `task`).")
    if preprocessing is not None:
        if not isinstance(preprocessing, ImagePreprocessing):
            raise TypeError(f"Expected an ImagePreprocessing. Received: {type(preprocessing).__name__}")
        if tuple(preprocessing.input_shape) != input_shape:
            raise ValueError(
                f"preprocessing.input_shape={preprocessing.input_shape} does not match the backbone input "
                f"shape {input_shape}"
            )

    if from_logits is None:
        from_logits = not outputs_are_probabilities(model)
    functions = _ServingFunctions(
        model,
        preprocessing,
        classifier,
        bool(from_logits),
        labels,
        example_feature,
        example_encoding,
        max_image_pixels,
        max_image_bytes,
    )
    archive = keras.export.ExportArchive()
    archive.track(model)
    image_spec = tf.TensorSpec((None, *input_shape), input_dtype, name="images")
    archive.add_endpoint("serving_default", functions.serving_default, [image_spec])
    method_names = {"serving_default": PREDICT_METHOD_NAME}
    if preprocessing is not None:
        archive.add_endpoint(
            "score_image_bytes", functions.score_image_bytes, [tf.TensorSpec([None], tf.string, name="image_bytes")]
        )
        archive.add_endpoint(
            "score_examples", functions.score_examples, [tf.TensorSpec([None], tf.string, name="examples")]
        )
        method_names.update(score_image_bytes=PREDICT_METHOD_NAME, score_examples=PREDICT_METHOD_NAME)
        inputs_spec = [tf.TensorSpec([None], tf.string, name="inputs")]
        if classifier:
            archive.add_endpoint("classify", functions.classify, inputs_spec)
            method_names["classify"] = CLASSIFY_METHOD_NAME
        archive.add_endpoint("regress", functions.regress, inputs_spec)
        method_names["regress"] = REGRESS_METHOD_NAME

    base_path = os.fspath(base_path)
    tf.io.gfile.makedirs(base_path)
    staging = os.path.join(base_path, f".tmp-export-{uuid.uuid4().hex}")
    try:
        archive.write_out(staging, verbose=False)
        signatures = _finalise_signatures(staging, method_names)
        _validate_signatures(signatures)
        extra = os.path.join(staging, "assets.extra")
        tf.io.gfile.makedirs(extra)
        config = {
            "format_version": EXPORT_FORMAT_VERSION,
            "model_name": model_name or model.name,
            "task": "classification" if classifier else "other",
            "from_logits": bool(from_logits),
            "labels": labels,
            "input_shape": list(input_shape),
            "input_dtype": input_dtype.name,
            "preprocessing": None if preprocessing is None else preprocessing.get_config(),
            "example_feature": example_feature,
            "example_encoding": example_encoding,
            "max_image_pixels": int(max_image_pixels),
            "max_image_bytes": int(max_image_bytes),
            "signatures": signatures,
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
        }
        with tf.io.gfile.GFile(os.path.join(extra, EXPORT_CONFIG_FILE), "w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        if warmup:
            _write_warmup(os.path.join(extra, WARMUP_FILE), config, model_name or model.name)
        return _publish(staging, base_path, version)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)


def _publish(staging: str, base_path: str, version: int | str | None) -> str:
    explicit = version is not None
    number = _parse_version(version) if explicit else (max(_existing_versions(base_path), default=0) + 1)
    while True:
        target = os.path.join(base_path, str(number))
        if tf.io.gfile.exists(target):
            if explicit:
                raise FileExistsError(f"Version {number} already exists at {target!r}; refusing to overwrite it.")
            number += 1
            continue
        try:
            # A directory rename is atomic on POSIX and fails (instead of merging) if a racer won.
            os.rename(staging, target)
        except OSError:
            if explicit or not os.path.isdir(target):
                raise
            number += 1
            continue
        return target


def _finalise_signatures(export_dir: str, method_names: dict[str, str]) -> dict[str, Any]:
    """Sets Classify/Regress method names (ExportArchive writes only Predict) and describes signatures."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb_path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as handle:
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
    with open(pb_path, "wb") as handle:
        handle.write(saved_model.SerializeToString())
    _refresh_fingerprint(export_dir)
    return described


def _refresh_fingerprint(export_dir: str) -> None:
    fingerprint = os.path.join(export_dir, "fingerprint.pb")
    try:
        from tensorflow.python.saved_model import fingerprinting_utils

        fingerprinting_utils.write_fingerprint(export_dir)
    except Exception:  # noqa: BLE001 - the fingerprint is optional metadata; a stale one is worse than none
        if os.path.exists(fingerprint):
            os.remove(fingerprint)


def _describe_tensor(info) -> dict[str, Any]:
    dims = None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    return {"dtype": tf.as_dtype(info.dtype).name, "shape": dims}


_SERVABLE_DTYPES = {"float32", "int64", "string", "int32"}


def _validate_signatures(signatures: dict[str, Any]) -> None:
    for name, signature in signatures.items():
        for key, spec in {**signature["inputs"], **signature["outputs"]}.items():
            shape = spec["shape"]
            if shape is None or not shape or shape[0] is not None:
                raise ValueError(f"Signature {name!r} tensor {key!r} must have a None batch dimension: {shape}")
        for key, spec in signature["outputs"].items():
            if spec["dtype"] not in _SERVABLE_DTYPES:
                raise ValueError(
                    f"Signature {name!r} output {key!r} has dtype {spec['dtype']}; expected one of "
                    f"{sorted(_SERVABLE_DTYPES)} (TF Serving's REST codec rejects half floats)"
                )


# --------------------------------------------------------------------------- warmup
def _warmup_png(preprocessing: ImagePreprocessing) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(preprocessing.height, preprocessing.width, preprocessing.channels))
    return tf.io.encode_png(tf.constant(pixels, tf.uint8)).numpy()


def _example(feature: str, value) -> tf.train.Example:
    if isinstance(value, bytes):
        entry = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    else:
        entry = tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(value).tolist()))
    return tf.train.Example(features=tf.train.Features(feature={feature: entry}))


def _write_warmup(path: str, config: dict[str, Any], model_name: str, batch_size: int = 2) -> None:
    from tensorflow_serving.apis import (
        classification_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
        regression_pb2,
    )

    def spec(signature: str):
        return model_pb2.ModelSpec(name=model_name, signature_name=signature)

    signatures = config["signatures"]
    logs = []
    shape = [batch_size, *config["input_shape"]]
    request = predict_pb2.PredictRequest(model_spec=spec("serving_default"))
    request.inputs["images"].CopyFrom(
        tf.make_tensor_proto(np.zeros(shape, tf.as_dtype(config["input_dtype"]).as_numpy_dtype))
    )
    logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
    if config["preprocessing"] is not None:
        preprocessing = ImagePreprocessing.from_config(config["preprocessing"])
        png = _warmup_png(preprocessing)
        request = predict_pb2.PredictRequest(model_spec=spec("score_image_bytes"))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png] * batch_size))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
        if config["example_encoding"] == "bytes":
            value = png
        else:
            value = np.full(preprocessing.height * preprocessing.width * preprocessing.channels, 128.0)
        example = _example(config["example_feature"], value)
        request = predict_pb2.PredictRequest(model_spec=spec("score_examples"))
        request.inputs["examples"].CopyFrom(tf.make_tensor_proto([example.SerializeToString()] * batch_size))
        logs.append(prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request)))
        if "classify" in signatures:
            request = classification_pb2.ClassificationRequest(model_spec=spec("classify"))
            request.input.example_list.examples.extend([example] * batch_size)
            log = prediction_log_pb2.ClassifyLog(request=request)
            logs.append(prediction_log_pb2.PredictionLog(classify_log=log))
        request = regression_pb2.RegressionRequest(model_spec=spec("regress"))
        request.input.example_list.examples.extend([example] * batch_size)
        logs.append(prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request)))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
