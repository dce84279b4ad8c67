"""Backbones as functional Keras models with named taps: the paper's CIFAR ResNet-18, a small CNN and a dense MLP."""

from __future__ import annotations

import keras
from keras import layers

__all__ = ["BACKBONES", "dense_mlp", "resnet18_cifar", "small_cnn", "unsafe_strided_1x1"]

# oneDNN's reduce-to-unit-stride workspace holds one block of input channels (16 floats with AVX-512, 8 with AVX2).
_ONEDNN_CHANNEL_BLOCK = 16


def unsafe_strided_1x1(model: keras.Model) -> list[str]:
    """Names of the layers whose weight gradient can crash TensorFlow's oneDNN CPU kernels.

    A `Conv2D` with a 1x1 kernel, a stride above 1 and fewer than 16 input
    channels: with oneDNN on (TensorFlow's x86 default), its weight gradient
    writes past a workspace and corrupts the heap whenever the batch does not
    divide evenly among the intra-op threads, which aborts or segfaults the
    process (measured on TF 2.21 with AVX-512; oneDNN issue #6035). Rebuild
    such a layer as `MaxPooling2D(pool_size=1, strides=s)` followed by a
    unit-stride 1x1 `Conv2D` (the same function and weights, as
    `resnet18_cifar` does), or set `TF_ENABLE_ONEDNN_OPTS=0` before importing
    TensorFlow.

    Example:

    >>> unsafe_strided_1x1(resnet18_cifar(width=4))
    []
    >>> inputs = keras.Input((8, 8, 4))
    >>> unsafe_strided_1x1(keras.Model(inputs, layers.Conv2D(8, 1, strides=2, name="proj")(inputs)))
    ['proj']
    """
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(unsafe_strided_1x1(layer))
            continue
        if not isinstance(layer, layers.Conv2D) or max(layer.strides) <= 1 or tuple(layer.kernel_size) != (1, 1):
            continue
        channels_axis = -1 if layer.data_format == "channels_last" else 1
        if layer.input.shape[channels_axis] < _ONEDNN_CHANNEL_BLOCK:
            found.append(layer.name)
    return found


def _basic_block(x, filters: int, stride: int, name: str, weight_decay: float):
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    conv = dict(kernel_size=3, padding="same", use_bias=False, kernel_regularizer=regularizer)
    shortcut = x
    x = layers.Conv2D(filters, strides=stride, name=f"{name}_conv1", **conv)(x)
    x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(filters, name=f"{name}_conv2", **conv)(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    if stride != 1 or shortcut.shape[-1] != filters:
        if stride != 1:
            # A 1x1 conv with stride s equals taking every s-th pixel, then a unit-stride 1x1 conv. Built
            # this way because oneDNN's strided 1x1 weight gradient corrupts the heap (see `unsafe_strided_1x1`).
            shortcut = layers.MaxPooling2D(pool_size=1, strides=stride, name=f"{name}_proj_subsample")(shortcut)
        shortcut = layers.Conv2D(filters, 1, use_bias=False, kernel_regularizer=regularizer, name=f"{name}_proj")(
            shortcut
        )
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def resnet18_cifar(
    input_shape: tuple[int, ...] = (32, 32, 3),
    num_classes: int = 10,
    width: int = 64,
    weight_decay: float = 0.0,
    name: str = "resnet18_cifar",
) -> keras.Model:
    """The paper's CIFAR ResNet-18: a 3x3 stem and 4 stages of 2 basic blocks.

    Stage outputs are the layers `stage1`..`stage4` (width, 2x, 4x, 8x channels
    at full, 1/2, 1/4 and 1/8 resolution), which `LossLearningModel` taps
    automatically. The model returns logits.

    Args:
        input_shape: image shape, channels last.
        num_classes: number of logits.
        width: channels of the first stage (64 in the paper; 16 runs well on CPU).
        weight_decay: L2 factor on convolution kernels (the paper's 5e-4 is
            applied by SGD's weight decay instead when this is 0).
        name: model name.

    Example:

    >>> model = resnet18_cifar(width=8)
    >>> model.get_layer("stage4").output.shape
    (None, 4, 4, 64)
    """
    if int(width) <= 0 or int(num_classes) <= 0:
        raise ValueError(f"Expected width > 0 and num_classes > 0. Received: width={width}, num_classes={num_classes}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage in range(4):
        filters = width * 2**stage
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, stride, f"stage{stage + 1}_block{block + 1}", weight_decay)
        x = layers.Identity(name=f"stage{stage + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def small_cnn(
    input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10, width: int = 16, name: str = "small_cnn"
) -> keras.Model:
    """A two-stage CNN for quick CPU runs and tests (not in the paper).

    Example:

    >>> small_cnn(width=4).get_layer("stage2").output.shape
    (None, 7, 7, 8)
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for stage in range(2):
        x = layers.Conv2D(width * 2**stage, 3, padding="same", use_bias=False, name=f"stage{stage + 1}_conv")(x)
        x = layers.BatchNormalization(name=f"stage{stage + 1}_bn")(x)
        x = layers.ReLU(name=f"stage{stage + 1}_relu")(x)
        x = layers.MaxPooling2D(name=f"stage{stage + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def dense_mlp(
    input_shape: tuple[int, ...] = (64,),
    num_classes: int = 10,
    units: tuple[int, ...] = (128, 64),
    name: str = "dense_mlp",
) -> keras.Model:
    """A multilayer perceptron for tabular features: Dense + ReLU hidden layers, then a logits layer.

    The hidden layers are named `hidden1`, `hidden2`, ...; `LossLearningModel`
    taps the last three of them automatically (a backbone without spatial
    outputs). Its signature fits `ModelSpec(backbone="keras_lossal.backbones:dense_mlp")`.

    Args:
        input_shape: feature shape, `(F,)`.
        num_classes: number of logits.
        units: width of each hidden layer, input side first.
        name: model name.

    Example:

    >>> model = dense_mlp((64,), 10)
    >>> [layer.name for layer in model.layers[1:]], model.output.shape
    (['hidden1', 'hidden2', 'logits'], (None, 10))
    """
    units = tuple(int(width) for width in units)
    if len(tuple(input_shape)) != 1 or not units or min(units) <= 0 or int(num_classes) <= 0:
        raise ValueError(
            "Expected input_shape=(F,), at least one hidden layer of units > 0 and num_classes > 0. "
            f"Received: input_shape={tuple(input_shape)}, units={units}, num_classes={num_classes}"
        )
    inputs = keras.Input(shape=tuple(input_shape), name="features")
    x = inputs
    for index, width in enumerate(units):
        x = layers.Dense(width, activation="relu", name=f"hidden{index + 1}")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# The built-in backbones by name (`keras_lossal.contracts.BACKBONE_NAMES`, which the command line reads).
BACKBONES = {builder.__name__: builder for builder in (resnet18_cifar, small_cnn)}
