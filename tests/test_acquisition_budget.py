"""BudgetSwitch: the strategy that picks follows the labeled items per class; it picks exactly what that strategy picks."""

import keras
import numpy as np
import pytest

import keras_lossal as kl
from keras_lossal import acquisition
from keras_lossal.acquisition import budget


def _classifier(classes=4):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(hidden))


@pytest.mark.parametrize("per_class", [1, 3])
def test_the_switch_point_is_labels_per_class_times_the_models_classes(per_class):
    model = _classifier(classes=4)
    pool = np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32)
    switch = acquisition.get("budget_switch", low="typiclust", high="margin", labels_per_class=per_class)
    threshold = 4 * per_class
    for labeled_count in (0, threshold - 1, threshold, threshold + 7):
        labeled = None if labeled_count == 0 else pool[:labeled_count]
        picked = switch.select(model, pool, k=5, seed=3, labeled=labeled)
        inner = acquisition.get("typiclust" if labeled_count < threshold else "margin")
        expected = inner.select(model, pool, k=5, seed=3, labeled=labeled)
        assert picked.strategy == f"budget_switch:{inner.name}", labeled_count
        np.testing.assert_array_equal(picked.indices, expected.indices)
        np.testing.assert_allclose(picked.scores, expected.scores)


def test_classes_come_from_the_model_or_the_option_and_bad_settings_are_refused():
    lossal = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), num_classes=7, width=4))
    assert budget.model_classes(lossal) == 7 and budget.model_classes(_classifier(3)) == 3
    switch = acquisition.get("budget_switch", labels_per_class=2, num_classes=5)
    assert switch.chosen(None, np.zeros((9, 2))).name == "typiclust"
    assert switch.chosen(None, [np.zeros((6, 2)), np.zeros((4, 2))]).name == "badge"
    assert switch.get_config() == {"low": "typiclust", "high": "badge", "labels_per_class": 2, "num_classes": 5,
                                   "sample_factor": 10.0, "min_sample": 10_000}  # fmt: skip
    with pytest.raises(ValueError, match="labels_per_class to be an integer >= 0. Received: labels_per_class=-1"):
        acquisition.get("budget_switch", labels_per_class=-1)
    with pytest.raises(ValueError, match="Expected a strategy name in"):
        acquisition.get("budget_switch", low="typiclustt")
    with pytest.raises(ValueError, match="other than a budget switch"):
        acquisition.get("budget_switch", high=acquisition.get("budget_switch"))
    with pytest.raises(ValueError, match="count without consuming them.*Received: generator"):
        switch.chosen(None, (batch for batch in [np.zeros((2, 2))]))
    subclassed = keras.Sequential()  # not built: no output to read the classes from
    with pytest.raises(ValueError, match="pass num_classes="):
        budget.model_classes(subclassed)


def test_the_default_switch_picks_exactly_what_badge_picks_once_each_class_has_ten_labels():
    model = _classifier(classes=3)
    pool = np.random.default_rng(4).normal(size=(80, 6)).astype(np.float32)
    labeled = np.random.default_rng(5).normal(size=(30, 6)).astype(np.float32)  # 10 per class
    switch = acquisition.get("budget_switch")
    for seed in (0, 1):
        picked = switch.select(model, pool, k=7, seed=seed, labeled=labeled, subset_size=50)
        expected = acquisition.get("badge").select(model, pool, k=7, seed=seed, labeled=labeled, subset_size=50)
        assert picked.strategy == "budget_switch:badge"
        np.testing.assert_array_equal(picked.indices, expected.indices)


@pytest.mark.parametrize("labeled_count", [0, 40])
def test_a_large_pool_is_sampled_down_to_a_bounded_seeded_subset_before_either_side_picks(labeled_count):
    """Without subset_size, max(10 k, min_sample) seeded random items: what the inner strategy picks on that subset."""
    from keras_lossal.acquisition.ranking import sample_subset

    model = _classifier(classes=4)
    pool = np.random.default_rng(1).normal(size=(3_000, 6)).astype(np.float32)
    labeled = pool[:labeled_count] if labeled_count else None
    switch = acquisition.get("budget_switch", min_sample=500)
    assert (switch.sample_size(20), switch.sample_size(100)) == (500, 1_000)
    picked = switch.select(model, pool, k=20, seed=4, labeled=labeled)
    inner = "typiclust" if labeled_count < 40 else "badge"
    expected = acquisition.get(inner).select(model, pool, k=20, seed=4, labeled=labeled, subset_size=500)
    assert picked.strategy == f"budget_switch:{inner}"
    np.testing.assert_array_equal(picked.indices, expected.indices)
    assert set(picked.indices.tolist()) <= set(sample_subset(3_000, 500, 4).tolist())
    # A subset_size given is kept; sample_factor=None scores the whole pool; a Dataset is sampled like the array.
    given = switch.select(model, pool, k=20, seed=4, labeled=labeled, subset_size=800)
    np.testing.assert_array_equal(
        given.indices,
        acquisition.get(inner).select(model, pool, k=20, seed=4, labeled=labeled, subset_size=800).indices,
    )
    whole = acquisition.get("budget_switch", sample_factor=None, min_sample=500).select(model, pool, k=20, seed=4,
                                                                                         labeled=labeled)  # fmt: skip
    np.testing.assert_array_equal(whole.indices, acquisition.get(inner).select(model, pool, k=20, seed=4,
                                                                               labeled=labeled).indices)  # fmt: skip
    assert not set(whole.indices.tolist()) <= set(sample_subset(3_000, 500, 4).tolist())
    import tensorflow as tf

    from_dataset = switch.select(model, tf.data.Dataset.from_tensor_slices(pool).batch(64), k=20, seed=4,
                                 labeled=labeled)  # fmt: skip
    np.testing.assert_array_equal(from_dataset.indices, picked.indices)
    # A generator's size is unknown: it is used whole, as before.
    generated = switch.select(model, (pool[i : i + 64] for i in range(0, 3_000, 64)), k=20, seed=4, labeled=labeled)
    np.testing.assert_array_equal(generated.indices, whole.indices)
