"""The model factory: a `ModelSpec` -> a new compiled model (backbone, loss-prediction head, optimizer).

The one place a model is built from a spec, for an experiment's every cycle
(`keras_lossal.experiment`) and for `lossal train` (`keras_lossal.training`).

Example:

>>> from keras_lossal.contracts import ModelSpec
>>> model = build_model(ModelSpec(backbone="small_cnn", width=4), (28, 28, 1), 10, with_head=True)
>>> type(model).__name__, type(model.optimizer).__name__, round(float(model.optimizer.learning_rate), 4)
('LossLearningModel', 'SGD', 0.1)
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable

import keras

from keras_lossal.backbones import BACKBONES
from keras_lossal.contracts import OPTIMIZER_NAMES, ModelSpec
from keras_lossal.head import LossPredictionHead
from keras_lossal.model import RECIPES, LossLearningModel

__all__ = ["backbone_builder", "backbone_fingerprint", "build_model", "make_model_factory", "optimizer"]

# `ModelSpec.backbone` may also name your own backbone: a `.keras` file or a `package.module:function` factory.
KERAS_FILE_SUFFIX = ".keras"
FACTORY_SEPARATOR = ":"
OPTIMIZERS = OPTIMIZER_NAMES


def backbone_builder(backbone: str) -> Callable[[tuple[int, ...], int, int], keras.Model]:
    """A callable `(input_shape, num_classes, width) -> new backbone` for a `ModelSpec.backbone`.

    - a name in `BACKBONES` (`"resnet18_cifar"`, `"small_cnn"`): built fresh,
      with `width`;
    - a `.keras` file: reloaded on every call, so every run and cycle gets a
      model of its own, and **its stored weights are the initialisation** (a
      pretrained backbone, or the `model.keras` of `lossal train`, whose
      backbone is taken). Every (strategy, seed) starts from the same weights;
      the seed still sets the head's initialisation, the initial labeled set
      and the shuffles. For a random initialisation per seed, use a factory;
      custom layers must be registered (`keras.saving.register_keras_serializable`);
    - `"package.module:function"`: an importable factory called as
      `function(input_shape=(H, W, C), num_classes=N)` returning a new,
      uncompiled, functional or Sequential `keras.Model` that outputs logits
      `(batch, N)`. It is called after the loop seeds Keras' global generator
      (`keras.utils.set_random_seed`) from the run's seed and cycle, so create
      layers inside it with default (unseeded) initialisers.

    The model must take inputs of the dataset's `input_shape` (checked).

    Example:

    >>> build = backbone_builder("keras_lossal.backbones:small_cnn")
    >>> build((8, 8, 1), 3, 16).output.shape
    (None, 3)
    >>> backbone_builder("resnet50")
    Traceback (most recent call last):
    ...
    ValueError: Expected backbone in ['resnet18_cifar', 'small_cnn'], a .keras file or a 'package.module:function' factory. Received: backbone='resnet50'
    """
    if backbone in BACKBONES:
        builtin = BACKBONES[backbone]
        return lambda input_shape, num_classes, width: builtin(
            input_shape=tuple(input_shape), num_classes=num_classes, width=width
        )
    if backbone.endswith(KERAS_FILE_SUFFIX):
        if not os.path.isfile(backbone):
            raise ValueError(f"Expected a .keras backbone file. Received: backbone={backbone!r} (no such file)")
        return lambda input_shape, num_classes, width: _checked(_load_backbone(backbone), backbone, input_shape)
    if FACTORY_SEPARATOR in backbone:
        factory = _import_factory(backbone)
        return lambda input_shape, num_classes, width: _checked(
            factory(input_shape=tuple(input_shape), num_classes=num_classes), backbone, input_shape
        )
    raise ValueError(
        f"Expected backbone in {sorted(BACKBONES)}, a .keras file or a 'package.module:function' factory. "
        f"Received: backbone={backbone!r}"
    )


def _import_factory(backbone: str) -> Callable[..., keras.Model]:
    module_name, _, function_name = backbone.partition(FACTORY_SEPARATOR)
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"Expected an importable backbone factory 'package.module:function'. Received: backbone={backbone!r} "
            f"({type(error).__name__}: {error})"
        ) from None
    if not callable(factory):
        raise ValueError(f"Expected {backbone!r} to be a callable factory. Received: {type(factory).__name__}")
    return factory


def _load_backbone(path: str) -> keras.Model:
    """The model in a `.keras` file; a `LossLearningModel`'s backbone (a model of `lossal train`)."""
    model = keras.saving.load_model(path, compile=False)
    return model.backbone if isinstance(model, LossLearningModel) else model


def _checked(model, backbone: str, input_shape: tuple[int, ...]) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise ValueError(f"Expected backbone {backbone!r} to give a keras.Model. Received: {type(model).__name__}")
    expected = tuple(int(size) for size in input_shape)
    inputs = getattr(model, "inputs", None) or []
    received = tuple(inputs[0].shape[1:]) if len(inputs) == 1 else None
    if received != expected:
        raise ValueError(
            f"Expected backbone {backbone!r} to take one input of shape {expected} (the data's). Received: {received}"
        )
    return model


def backbone_fingerprint(backbone: str) -> str | None:
    """The SHA-256 of a `.keras` backbone file (recorded so a resume with a changed file is refused), else `None`."""
    if not backbone.endswith(KERAS_FILE_SUFFIX) or not os.path.isfile(backbone):
        return None  # a missing file is refused by `backbone_builder`
    digest = hashlib.sha256()
    with open(backbone, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_model_factory(
    spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, with_head: bool
) -> Callable[[], keras.Model]:
    """A zero-argument callable building a fresh compiled model from `spec` (see `build_model`).

    The spec's backbone and optimizer are checked now, so a bad one fails before anything trains.
    """
    build_backbone = backbone_builder(spec.backbone)
    _check_optimizer(spec)
    return lambda: _build(spec, build_backbone, input_shape, num_classes, with_head)


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, with_head: bool) -> keras.Model:
    """A new model from `spec`, compiled with its optimizer, the task loss (logits) and accuracy.

    Args:
        spec: the `ModelSpec` (its backbone: see `backbone_builder`).
        input_shape: model input shape, e.g. `(28, 28, 1)`.
        num_classes: number of classes.
        with_head: wrap the backbone in a `LossLearningModel` with the spec's head and recipe.
    """
    return make_model_factory(spec, input_shape, num_classes, with_head)()


def _build(spec: ModelSpec, build_backbone, input_shape, num_classes: int, with_head: bool) -> keras.Model:
    backbone = build_backbone(tuple(input_shape), num_classes, spec.width)
    if spec.batch_norm_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(spec.batch_norm_momentum)
    model = _with_head(spec, backbone) if with_head else backbone
    model.compile(
        optimizer=optimizer(spec),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _with_head(spec: ModelSpec, backbone: keras.Model) -> LossLearningModel:
    options = spec.head_options()
    normalize = options.get("normalize_head_inputs", RECIPES[spec.recipe]["normalize_head_inputs"])
    head = LossPredictionHead(units=spec.head_units, normalize=normalize, name="loss_prediction_head")
    return LossLearningModel(backbone, head=head, **options)


def _check_optimizer(spec: ModelSpec) -> None:
    if spec.optimizer not in OPTIMIZERS:
        raise ValueError(f"Expected optimizer in {OPTIMIZERS}. Received: optimizer={spec.optimizer!r}")


def optimizer(spec: ModelSpec) -> keras.optimizers.Optimizer:
    """The spec's optimizer at its learning rate: SGD with momentum, or Adam; decoupled weight decay."""
    _check_optimizer(spec)
    if spec.optimizer == "sgd":
        return keras.optimizers.SGD(spec.learning_rate, momentum=spec.momentum, weight_decay=spec.weight_decay or None)
    return keras.optimizers.Adam(spec.learning_rate, weight_decay=spec.weight_decay or None)
