"""The loss-prediction module: a small network that predicts a sample's loss."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["LossPredictionHead"]


@keras.saving.register_keras_serializable(package="keras_lossal")
class LossPredictionHead(keras.layers.Layer):
    """Predicts the target network's loss from its intermediate features.

    One branch per tapped feature: global average pooling (for spatial features
    of rank >= 3) -> Dense(units) -> ReLU; the branches are concatenated and a
    final Dense(1) gives the predicted loss. The output has shape `(batch,)` and
    is float32 under every dtype policy.

    Args:
        units: width of each branch (the paper uses 128).
        normalize: apply a per-sample `LayerNormalization` to each pooled
            feature before its Dense layer, so the head sees inputs of a fixed
            scale however the backbone's feature scales drift (not in the paper).
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    >>> import numpy as np
    >>> head = LossPredictionHead(units=8)
    >>> tuple(head([np.ones((2, 4, 4, 3)), np.ones((2, 5))]).shape)
    (2,)
    """

    def __init__(self, units: int = 128, normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"Expected units > 0. Received: units={units}")
        if not isinstance(normalize, bool):
            raise ValueError(f"Expected normalize to be True or False. Received: normalize={normalize!r}")
        self.units = int(units)
        self.normalize = normalize
        self.branches: list[keras.layers.Dense] = []
        self.norms: list[keras.layers.LayerNormalization] = []
        self.output_dense = keras.layers.Dense(1, dtype="float32", name="predicted_loss")

    def build(self, input_shape):
        shapes = _as_shape_list(input_shape)
        # A list attribute assigned on a Layer is tracked, so every branch trains and saves.
        self.branches = [
            keras.layers.Dense(self.units, activation="relu", dtype=self.dtype_policy, name=f"branch_{i}")
            for i in range(len(shapes))
        ]
        for branch, shape in zip(self.branches, shapes):
            branch.build((shape[0], shape[-1]))
        if self.normalize:
            self.norms = [
                keras.layers.LayerNormalization(dtype="float32", name=f"norm_{i}") for i in range(len(shapes))
            ]
            for norm, shape in zip(self.norms, shapes):
                norm.build((shape[0], shape[-1]))
        self.output_dense.build((None, self.units * len(shapes)))
        self.built = True

    def call(self, features):
        features = features if isinstance(features, (list, tuple)) else [features]
        pooled = []
        for i, (branch, feature) in enumerate(zip(self.branches, features)):
            feature = ops.cast(feature, self.compute_dtype)
            if len(feature.shape) > 2:
                feature = ops.mean(feature, axis=tuple(range(1, len(feature.shape) - 1)))
            if self.normalize:
                feature = ops.cast(self.norms[i](ops.cast(feature, "float32")), self.compute_dtype)
            pooled.append(ops.cast(branch(feature), "float32"))
        joined = pooled[0] if len(pooled) == 1 else ops.concatenate(pooled, axis=-1)
        return ops.squeeze(self.output_dense(joined), axis=-1)

    def compute_output_shape(self, input_shape):
        return (_as_shape_list(input_shape)[0][0],)

    def compute_output_spec(self, features):
        features = features if isinstance(features, (list, tuple)) else [features]
        return keras.KerasTensor((features[0].shape[0],), dtype="float32")

    def get_config(self):
        return {**super().get_config(), "units": self.units, "normalize": self.normalize}


def _as_shape_list(input_shape) -> list[tuple]:
    if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
        return [tuple(shape) for shape in input_shape]
    return [tuple(input_shape)]
