"""`export_for_serving`: a `LossLearningModel` -> one new version directory TF Serving loads.

The job is a short sequence of steps: check the arguments, resolve what the
export serves (`ServingContract`), trace the signatures into an
`ExportArchive`, write the SavedModel and its `assets.extra` into a staging
directory, publish it as the next version.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_lossal.export.config import ServingContract, write_export_config
from keras_lossal.export.signatures import EXAMPLE_ENCODINGS, ServingFunctions, finalise_signatures, validate_signatures
from keras_lossal.export.versions import parse_version, publish, staging_dir, unused_version_dir
from keras_lossal.export.warmup import write_warmup
from keras_lossal.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from keras_lossal.outputs import outputs_are_probabilities
from keras_lossal.preprocessing import ImagePreprocessing

__all__ = ["TASKS", "export_for_serving"]

TASKS = ("auto", "classification", "other")


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
    training: Mapping[str, Any] | None = None,
) -> str:
    """Exports a `LossLearningModel` in TF Serving's layout and returns the version directory.

    Writes `<base_path>/<version>/` through a temporary directory inside
    `base_path` and a rename (a copy with `saved_model.pb` last on object
    stores such as `gs://`), so TF Serving never loads a half-written
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
        model_name: name recorded in `lossal.json` and in the warmup requests
            (default: `model.name`).
        training: what the model was trained on, recorded in `lossal.json` as
            `training` (`lossal export` passes `num_items` and `data_sha256` from
            `lossal train`'s `training.json`; the ML backend counts labels the
            served version has not seen from it). JSON values only.

    Example:

    >>> import keras_lossal as kl
    >>> from keras_lossal.export import export_for_serving
    >>> from keras_lossal.preprocessing import ImagePreprocessing
    >>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar((8, 8, 3), num_classes=3, width=4))
    >>> export_for_serving(model, "models/lossal", preprocessing=ImagePreprocessing(8, 8, 3))  # doctest: +SKIP
    'models/lossal/1'
    """
    _check_arguments(model, task, example_encoding, max_image_pixels, max_image_bytes)
    _check_finite_weights(model)
    base_path = os.fspath(base_path)
    if version is not None:
        version = parse_version(version)
        unused_version_dir(base_path, version)  # fail before the seconds of tracing, not after
    input_shape, input_dtype = _input_spec(model.backbone)
    classifier = _resolve_task(model.backbone.output, task)
    labels = _resolve_labels(model.backbone.output, classifier, labels)
    _check_preprocessing(preprocessing, input_shape)
    contract = ServingContract(
        model_name=model_name or model.name,
        input_shape=input_shape,
        input_dtype=input_dtype,
        classifier=classifier,
        from_logits=_resolve_from_logits(model, from_logits),
        labels=labels,
        preprocessing=preprocessing,
        example_feature=example_feature,
        example_encoding=example_encoding,
        max_image_pixels=int(max_image_pixels),
        max_image_bytes=int(max_image_bytes),
    )
    # Staged first, so a base path that is a file or not writable fails before the seconds of tracing.
    with staging_dir(base_path) as staging:
        archive, method_names = _build_archive(model, contract)
        signatures = _write_savedmodel(archive, method_names, staging)
        config = contract.to_config(signatures)
        if training is not None:
            config["training"] = dict(training)
        _write_assets(staging, config, warmup)
        return publish(staging, base_path, version)


def _check_arguments(model, task: str, example_encoding: str, max_image_pixels: int, max_image_bytes: int) -> None:
    if not hasattr(model, "backbone"):
        raise TypeError(f"Expected a LossLearningModel (a model with a `backbone`). Received: {type(model).__name__}")
    if task not in TASKS:
        raise ValueError(f"Expected task in {TASKS}. Received: task={task!r}")
    if example_encoding not in EXAMPLE_ENCODINGS:
        raise ValueError(f"Expected example_encoding in {EXAMPLE_ENCODINGS}. Received: {example_encoding!r}")
    if int(max_image_pixels) <= 0 or int(max_image_bytes) <= 0:
        raise ValueError(
            f"Expected positive limits. Received: max_image_pixels={max_image_pixels}, max_image_bytes={max_image_bytes}"
        )


def _check_finite_weights(model) -> None:
    """Refuses a model with a NaN or infinite weight (a diverged training): every score it served would be NaN."""
    for variable in model.weights:
        if not keras.backend.is_float_dtype(variable.dtype):
            continue
        values = keras.ops.convert_to_numpy(variable)
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ValueError(
                f"Refusing to export a model with non-finite weights: {variable.path!r} has {bad} NaN/inf "
                f"value(s) of {np.size(values)} (did the training diverge? e.g. the learning rate)."
            )


def _input_spec(backbone: keras.Model) -> tuple[tuple[int, ...], str]:
    """`(shape without batch, dtype name)` of the backbone's single input."""
    if len(backbone.inputs) != 1:
        raise ValueError(
            f"export_for_serving supports backbones with exactly one input. Received backbone "
            f"'{backbone.name}' with inputs {[tensor.name for tensor in backbone.inputs]}"
        )
    input_shape = tuple(backbone.inputs[0].shape[1:])
    if any(dim is None for dim in input_shape):
        raise ValueError(f"Expected a fully defined backbone input shape. Received: {input_shape}")
    return input_shape, tf.as_dtype(backbone.inputs[0].dtype).name


def _is_classifier(output: Any) -> bool:
    shape = getattr(output, "shape", None)
    return shape is not None and len(shape) == 2 and shape[-1] is not None and shape[-1] > 1


def _resolve_task(output: Any, task: str) -> bool:
    """Whether the export serves a classifier (`probabilities`, `class_id`, `classify`) for `task`."""
    if task == "auto":
        return _is_classifier(output)
    if task == "classification":
        if not _is_classifier(output):
            raise ValueError(
                f"task='classification' needs a single rank-2 output with more than one unit. "
                f"Received output shape: {getattr(output, 'shape', output)}"
            )
        return True
    return False


def _resolve_labels(output: Any, classifier: bool, labels: Sequence[str] | None) -> list[str] | None:
    """One label per class for a classifier (default `"0"`, `"1"`, ...); `None` otherwise."""
    if not classifier:
        if labels is not None:
            raise ValueError("`labels` only apply to classifiers; this model was not detected as one (see `task`).")
        return None
    num_classes = int(output.shape[-1])
    labels = [str(i) for i in range(num_classes)] if labels is None else [str(label) for label in labels]
    if len(labels) != num_classes:
        raise ValueError(f"Expected {num_classes} labels (one per class). Received {len(labels)}: {labels}")
    return labels


def _check_preprocessing(preprocessing: ImagePreprocessing | None, input_shape: tuple[int, ...]) -> None:
    if preprocessing is None:
        return
    if not isinstance(preprocessing, ImagePreprocessing):
        raise TypeError(f"Expected an ImagePreprocessing. Received: {type(preprocessing).__name__}")
    if tuple(preprocessing.input_shape) != input_shape:
        raise ValueError(
            f"preprocessing.input_shape={preprocessing.input_shape} does not match the backbone input shape {input_shape}"
        )


def _resolve_from_logits(model, from_logits: bool | None) -> bool:
    return not outputs_are_probabilities(model) if from_logits is None else bool(from_logits)


def _build_archive(model, contract: ServingContract) -> tuple[keras.export.ExportArchive, dict[str, str]]:
    """The traced signatures over `model`'s weights, and each signature's TF Serving method name."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    method_names = ServingFunctions(model, contract).add_endpoints(archive)
    return archive, method_names


def _write_savedmodel(archive, method_names: dict[str, str], export_dir: str) -> dict[str, Any]:
    """Writes the SavedModel with its final method names; returns the signatures as `lossal.json` describes them."""
    archive.write_out(export_dir, verbose=False)
    signatures = finalise_signatures(export_dir, method_names)
    validate_signatures(signatures)
    return signatures


def _write_assets(export_dir: str, config: dict[str, Any], warmup: bool) -> None:
    write_export_config(export_dir, config)
    if warmup:
        write_warmup(export_dir, config)
