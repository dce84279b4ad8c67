"""TF Serving warmup requests: `assets.extra/tf_serving_warmup_requests`, one request per signature.

TF Serving replays these `PredictionLog` records (a TFRecord file, at most
1000 records) when it loads a version, so the first real request does not
pay for graph initialisation. They are built from the export's
`lossal.json` and name its `model_name`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from keras_lossal.export.config import EXTRA_ASSETS_DIR
from keras_lossal.preprocessing import ImagePreprocessing

__all__ = ["WARMUP_FILE", "warmup_requests", "write_warmup"]

WARMUP_FILE = "tf_serving_warmup_requests"


def warmup_requests(config: dict[str, Any], batch_size: int = 2) -> list:
    """One `PredictionLog` of `batch_size` items per signature in `config` (an export's `lossal.json`).

    Example:

    >>> config = {"model_name": "lossal", "input_shape": [4, 4, 3], "input_dtype": "float32",
    ...           "preprocessing": None, "signatures": {"serving_default": {}}}
    >>> [log.predict_log.request.model_spec.name for log in warmup_requests(config)]
    ['lossal']
    """
    model_name = config["model_name"]
    images = np.zeros([batch_size, *config["input_shape"]], tf.as_dtype(config["input_dtype"]).as_numpy_dtype)
    logs = [_predict_log(model_name, "serving_default", "images", images)]
    if config["preprocessing"] is None:
        return logs
    preprocessing = ImagePreprocessing.from_config(config["preprocessing"])
    png = _warmup_png(preprocessing)
    logs.append(_predict_log(model_name, "score_image_bytes", "image_bytes", [png] * batch_size))
    if config["example_encoding"] == "bytes":
        value = png
    else:
        value = np.full(preprocessing.height * preprocessing.width * preprocessing.channels, 128.0)
    example = _example(config["example_feature"], value)
    logs.append(_predict_log(model_name, "score_examples", "examples", [example.SerializeToString()] * batch_size))
    if "classify" in config["signatures"]:
        logs.append(_example_log(model_name, "classify", [example] * batch_size))
    logs.append(_example_log(model_name, "regress", [example] * batch_size))
    return logs


def write_warmup(version_dir: str, config: dict[str, Any]) -> str:
    """Writes `warmup_requests(config)` to `<version_dir>/assets.extra/tf_serving_warmup_requests`; returns the path."""
    path = os.path.join(version_dir, EXTRA_ASSETS_DIR, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(config):
            writer.write(log.SerializeToString())
    return path


def _predict_log(model_name: str, signature: str, input_name: str, value):
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def _example_log(model_name: str, signature: str, examples: list[tf.train.Example]):
    """A Classify or Regress request (`signature` is "classify" or "regress") over `examples`."""
    from tensorflow_serving.apis import classification_pb2, model_pb2, prediction_log_pb2, regression_pb2

    spec = model_pb2.ModelSpec(name=model_name, signature_name=signature)
    if signature == "classify":
        request = classification_pb2.ClassificationRequest(model_spec=spec)
        request.input.example_list.examples.extend(examples)
        return prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
    request = regression_pb2.RegressionRequest(model_spec=spec)
    request.input.example_list.examples.extend(examples)
    return prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))


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
