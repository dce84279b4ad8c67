"""`keras_lossal/head.py`: the loss-prediction head, checked against a NumPy forward pass."""

import keras
import numpy as np
import pytest

from keras_lossal.head import LossPredictionHead


def _numpy_head(head, features):
    """GAP each feature map -> (LayerNorm) -> Dense -> ReLU, concatenate, Dense(1), in NumPy."""
    pooled = []
    for i, feature in enumerate(features):
        feature = np.asarray(feature, np.float64)
        if feature.ndim > 2:
            feature = feature.mean(axis=tuple(range(1, feature.ndim - 1)))
        if head.normalize:
            gamma, beta = (np.asarray(w) for w in head.norms[i].get_weights())
            mean, var = feature.mean(-1, keepdims=True), feature.var(-1, keepdims=True)
            feature = (feature - mean) / np.sqrt(var + head.norms[i].epsilon) * gamma + beta
        kernel, bias = head.branches[i].get_weights()
        pooled.append(np.maximum(feature @ kernel + bias, 0.0))
    kernel, bias = head.output_dense.get_weights()
    return (np.concatenate(pooled, -1) @ kernel + bias)[:, 0]


@pytest.mark.parametrize("normalize", [False, True])
def test_forward_matches_numpy(normalize):
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(5, 6, 6, 4)), rng.normal(size=(5, 3, 3, 8)), rng.normal(size=(5, 7))]
    features = [f.astype("float32") for f in features]
    head = LossPredictionHead(units=16, normalize=normalize)
    got = keras.ops.convert_to_numpy(head(features))
    assert got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _numpy_head(head, features), rtol=1e-4, atol=1e-5)
    assert len(head.trainable_weights) == 2 * 3 + 2 + (2 * 3 if normalize else 0)


def test_normalized_head_ignores_the_scale_of_each_feature():
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(1)
    # Each item's variance across channels well above LayerNormalization's epsilon (1e-3): with 3 channels, an
    # item's pooled features could nearly coincide and the epsilon, not the scale, would decide the output.
    features = [10 * rng.normal(size=(4, 5, 5, 16)).astype("float32"), 10 * rng.normal(size=(4, 12)).astype("float32")]
    head = LossPredictionHead(units=8, normalize=True)
    base = keras.ops.convert_to_numpy(head(features))
    scaled = keras.ops.convert_to_numpy(head([features[0] * 1000.0, features[1] * 50.0]))
    np.testing.assert_allclose(scaled, base, rtol=1e-3, atol=1e-4)


def test_output_is_float32_under_mixed_precision():
    head = LossPredictionHead(units=8, dtype="mixed_float16")
    out = head([np.ones((3, 4, 4, 2), "float16")])
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert head.branches[0].compute_dtype == "float16"


def test_single_feature_tensor_and_config_round_trip():
    head = LossPredictionHead(units=4, normalize=True, name="h")
    assert tuple(head(np.ones((2, 3, 3, 5), "float32")).shape) == (2,)
    clone = LossPredictionHead.from_config(head.get_config())
    assert (clone.units, clone.normalize, clone.name) == (4, True, "h")


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"Expected units > 0. Received: units=0"):
        LossPredictionHead(units=0)
    with pytest.raises(ValueError, match=r"Expected normalize to be True or False. Received: normalize='yes'"):
        LossPredictionHead(normalize="yes")
