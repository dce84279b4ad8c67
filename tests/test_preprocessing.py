"""`keras_lossal/preprocessing.py`: one description of pixels -> model input, for training and serving."""

import numpy as np
import pytest

from keras_lossal.preprocessing import ImagePreprocessing, infer_preprocessing


def test_normalises_per_channel_like_numpy():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)
    prep = ImagePreprocessing(4, 5, 3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    expected = (pixels / 255.0 - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(prep(pixels).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_resizes_only_when_the_size_differs():
    prep = ImagePreprocessing(2, 2, 1, scale=1.0)
    same = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(prep(same).numpy(), same)
    bigger = np.full((1, 6, 4, 1), 7.0, np.float32)
    assert prep(bigger).numpy().shape == (1, 2, 2, 1)
    np.testing.assert_allclose(prep(bigger).numpy(), 7.0)


def test_config_round_trip_and_description():
    prep = ImagePreprocessing(28, 28, 1, mean=(0.286,), std=(0.353,))
    assert ImagePreprocessing.from_config(prep.get_config()) == prep
    assert prep.to_json() == (
        '{"channels": 1, "height": 28, "mean": [0.286], "scale": 0.00392156862745098, "std": [0.353], "width": 28}'
    )
    assert ImagePreprocessing(2, 2, 3, scale=1.0).describe() == "x unchanged, at 2x2x3"
    assert ImagePreprocessing(2, 2, 3, scale=0.5).describe() == "x / 2, at 2x2x3"


def test_bad_values_name_the_value():
    with pytest.raises(ValueError, match=r"Received: height=0, width=2, channels=1"):
        ImagePreprocessing(0, 2, 1)
    with pytest.raises(ValueError, match=r"Expected `mean` to have 1 or 3 values. Received: mean=\(0.1, 0.2\)"):
        ImagePreprocessing(2, 2, 3, mean=(0.1, 0.2))
    with pytest.raises(ValueError, match=r"Expected std > 0. Received: std=\(0.0,\)"):
        ImagePreprocessing(2, 2, 1, std=(0.0,))


def test_inferred_scale_follows_the_dtype():
    assert infer_preprocessing(np.zeros((1, 3, 3, 1), np.uint8)).scale == 1 / 255
    assert infer_preprocessing(np.zeros((1, 3, 3, 1), np.uint16)).scale == 1 / 65535
    assert infer_preprocessing(np.zeros((1, 3, 3, 2), np.float64)).scale == 1.0
    with pytest.raises(ValueError, match="Received dtype int32"):
        infer_preprocessing(np.zeros((1, 3, 3, 1), np.int32), name="pool")


def test_identity_preprocessing_lives_beside_image_preprocessing_and_stays_importable_from_data():
    from keras_lossal import data, preprocessing

    assert data.IdentityPreprocessing is preprocessing.IdentityPreprocessing
    assert data.preprocessing_from_config is preprocessing.preprocessing_from_config
    identity = preprocessing.IdentityPreprocessing((3,))
    assert preprocessing.preprocessing_from_config(identity.get_config()) == identity
