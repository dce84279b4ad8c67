"""End-to-end acquisition: pools, alignment, strategies, compiled loop, errors, dtype policy."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_lossal as kl
from keras_lossal import acquisition as acq
from keras_lossal.acquisition import models as acquisition_models
from keras_lossal.backbones import resnet18_cifar


class ScoreEcho(keras.Model):
    """Predicted loss = the item's first feature, so expected selections are known exactly."""

    def call(self, inputs, training=False):
        return {"output": inputs, "predicted_loss": inputs[:, 0]}


def reference_indices(scores, k):
    order = sorted(range(len(scores)), key=lambda i: (np.isnan(scores[i]), -np.nan_to_num(scores[i]), i))
    return order[:k]


def dense_classifier(num_classes=4, activation=None, dropout=0.0, seed=0, name="classifier"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), name="features")
    x = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation=activation, name="head")(x)
    return keras.Model(inputs, outputs, name=name)


def features(n=50, dims=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dims)).astype(np.float32)


@pytest.fixture(scope="module")
def lossal_model():
    keras.utils.set_random_seed(0)
    return kl.LossLearningModel(resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))


@pytest.fixture(scope="module")
def image_pool():
    return np.random.default_rng(1).normal(size=(45, 8, 8, 1)).astype(np.float32)


# -------------------------------------------------------------- top-K via the full loop
ECHO_STRATEGY = acq.LearningLoss()  # shared across examples: one trace per batch size
ECHO_MODEL = ScoreEcho()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.sampled_from([0.0, 1.0, 2.0, -1.0, 3.5]) | st.floats(-10, 10, width=32), min_size=1, max_size=40
    ),
    data=st.data(),
)
def test_select_equals_reference_sort(values, data):
    k = data.draw(st.integers(1, len(values)), label="k")
    batch_size = data.draw(st.sampled_from([1, 3, 7, 16]), label="batch_size")
    pool = np.asarray(values, np.float32)[:, None]
    selection = ECHO_STRATEGY.select(ECHO_MODEL, pool, k=k, batch_size=batch_size)
    assert selection.indices.tolist() == reference_indices(pool[:, 0], k)
    np.testing.assert_array_equal(selection.scores, pool[selection.indices, 0])
    assert selection.num_scored == len(values) and selection.num_nan == 0


def test_learning_loss_matches_predict_loss(lossal_model, image_pool):
    expected_scores = lossal_model.predict_loss(image_pool)
    selection = acq.get("learning_loss").select(lossal_model, image_pool, k=10, batch_size=8)
    assert selection.indices.tolist() == reference_indices(expected_scores, 10)
    np.testing.assert_allclose(selection.scores, expected_scores[selection.indices], rtol=1e-5, atol=1e-6)
    assert selection.scores.dtype == np.float32 and selection.indices.dtype == np.int64
    assert selection.scores[0] == pytest.approx(expected_scores.max(), rel=1e-5)  # highest first, not lowest


def test_learning_loss_needs_predicted_loss():
    with pytest.raises(ValueError, match="predicted_loss"):
        acq.get("learning_loss").select(dense_classifier(), features(), k=2)


# ------------------------------------------------------------------ pools and alignment
def test_all_pool_types_give_the_same_selection():
    pool = np.random.default_rng(2).permutation(37).astype(np.float32)[:, None]
    expected = reference_indices(pool[:, 0], 6)
    strategy = acq.LearningLoss()
    items = tf.data.Dataset.from_tensor_slices(pool)
    pools = {
        "array": pool,
        "dataset of items": items,
        "dataset of (item, label)": tf.data.Dataset.from_tensor_slices((pool, np.arange(37))),
        "batched dataset": items.batch(5),
        "list of batches": [pool[i : i + 4] for i in range(0, 37, 4)],
        "generator of (batch, label)": ((pool[i : i + 9], None) for i in range(0, 37, 9)),
    }
    for name, source in pools.items():
        # ScoreEcho has no input spec, so a Dataset is read as batched unless its items are batches.
        source = source.batch(3) if name in ("dataset of items", "dataset of (item, label)") else source
        selection = strategy.select(ECHO_MODEL, source, k=6, batch_size=8)
        assert selection.indices.tolist() == expected, name
        assert selection.num_scored == 37, name


def test_unbatched_dataset_detected_from_model_input(lossal_model, image_pool):
    expected = acq.get("learning_loss").select(lossal_model, image_pool, k=5, batch_size=16)
    for pool in (
        tf.data.Dataset.from_tensor_slices(image_pool),
        tf.data.Dataset.from_tensor_slices(image_pool).batch(7),
    ):
        selection = acq.get("learning_loss").select(lossal_model, pool, k=5, batch_size=16)
        np.testing.assert_array_equal(selection.indices, expected.indices)


def test_scores_stay_aligned_through_shuffled_parallel_pipeline(lossal_model, image_pool):
    """Positions refer to the order the pipeline yields; parallel maps and shuffles cannot misalign them."""
    reference = lossal_model.predict_loss(image_pool)

    def load(item_id):
        # Slow, uneven work so a non-deterministic parallel map would reorder elements.
        image = tf.gather(image_pool, item_id)
        image = image + 0.0 * tf.reduce_sum(
            tf.random.stateless_uniform([tf.cast(item_id % 5, tf.int32) * 500], seed=[1, 2])
        )
        return image, item_id

    pipeline = (
        tf.data.Dataset.range(len(image_pool))
        .shuffle(64, seed=3, reshuffle_each_iteration=False)
        .map(load, num_parallel_calls=4, deterministic=True)
    )
    yielded_ids = np.array([int(item_id) for _, item_id in pipeline])
    assert not np.array_equal(yielded_ids, np.arange(len(image_pool)))  # it really is shuffled
    selection = acq.get("learning_loss").select(lossal_model, pipeline, k=45, batch_size=8)
    picked_ids = yielded_ids[selection.indices]
    np.testing.assert_allclose(selection.scores, reference[picked_ids], rtol=1e-5, atol=1e-6)
    assert picked_ids.tolist() == reference_indices(reference, 45)


def test_feature_dtype_cast_to_model_input(lossal_model, image_pool):
    as_float64 = acq.get("learning_loss").select(lossal_model, image_pool.astype(np.float64), k=4)
    as_float32 = acq.get("learning_loss").select(lossal_model, image_pool, k=4)
    np.testing.assert_array_equal(as_float64.indices, as_float32.indices)


# ------------------------------------------------------------------------------ subsets
def test_subset_is_seeded_reproducible_and_shared_across_strategies():
    pool = np.arange(200, dtype=np.float32)[::-1].copy()[:, None]  # score = 199 - index
    strategy = acq.LearningLoss()
    first = strategy.select(ECHO_MODEL, pool, k=5, subset_size=30, seed=4)
    again = strategy.select(ECHO_MODEL, pool, k=5, subset_size=30, seed=4)
    other = strategy.select(ECHO_MODEL, pool, k=5, subset_size=30, seed=5)
    subset = acq.sample_subset(200, 30, seed=4)
    np.testing.assert_array_equal(first.indices, again.indices)
    np.testing.assert_array_equal(first.indices, subset[:5])  # lowest positions have the highest scores
    assert not np.array_equal(first.indices, other.indices)
    assert first.num_scored == 30
    dataset_selection = strategy.select(ECHO_MODEL, tf.data.Dataset.from_tensor_slices(pool).batch(16), 5, 30, seed=4)
    np.testing.assert_array_equal(dataset_selection.indices, first.indices)
    random_selection = acq.get("random").select(None, pool, k=30, subset_size=30, seed=4)
    assert sorted(random_selection.indices.tolist()) == subset.tolist()


def test_subset_larger_than_pool_scores_everything():
    pool = np.arange(10, dtype=np.float32)[:, None]
    selection = acq.LearningLoss().select(ECHO_MODEL, pool, k=3, subset_size=50, seed=0)
    assert selection.num_scored == 10 and selection.indices.tolist() == [9, 8, 7]


def test_subset_needs_known_size():
    generator = (np.zeros((4, 1), np.float32) for _ in range(3))
    with pytest.raises(ValueError, match="known size"):
        acq.LearningLoss().select(ECHO_MODEL, generator, k=1, subset_size=5, seed=0)


def test_random_is_seeded_and_valid():
    pool = np.zeros((100, 3), np.float32)
    first = acq.get("random").select(None, pool, k=20, seed=0)
    assert len(set(first.indices.tolist())) == 20 and first.indices.max() < 100
    np.testing.assert_array_equal(first.indices, acq.get("random").select(None, pool, k=20, seed=0).indices)
    assert not np.array_equal(first.indices, acq.get("random").select(None, pool, k=20, seed=1).indices)
    generator_selection = acq.get("random").select(None, (pool[i : i + 7] for i in range(0, 100, 7)), k=20, seed=0)
    np.testing.assert_array_equal(generator_selection.indices, first.indices)
    assert np.all(np.diff(first.scores) <= 0)


# --------------------------------------------------------------------- compiled loop
def test_one_trace_per_strategy_and_batch_size(lossal_model, image_pool):
    class CountingLearningLoss(acq.LearningLoss):
        traces = 0

        def score(self, model, features):
            CountingLearningLoss.traces += 1  # Python side effect: runs only while tracing
            return super().score(model, features)

    strategy = CountingLearningLoss()
    strategy.select(lossal_model, image_pool, k=3, batch_size=8)  # 45 items: 5 full batches + a padded one
    strategy.select(lossal_model, image_pool[:13], k=3, batch_size=8)
    strategy.select(lossal_model, tf.data.Dataset.from_tensor_slices(image_pool[:21]), k=3, batch_size=8)
    assert CountingLearningLoss.traces == 1


def test_progress_bar(lossal_model, image_pool, capsys):
    acq.get("learning_loss").select(lossal_model, image_pool, k=3, batch_size=16, verbose=1)
    assert "3/3" in capsys.readouterr().out


# ----------------------------------------------------------------------- uncertainty
@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("entropy", lambda p: -(p * np.log(p)).sum(1)),
        ("margin", lambda p: np.sort(p, 1)[:, -2] - np.sort(p, 1)[:, -1]),
        ("least_confidence", lambda p: 1 - p.max(1)),
    ],
)
def test_uncertainty_strategies_match_numpy(name, reference):
    logits_model = dense_classifier()
    softmax_model = dense_classifier(activation="softmax")
    x = features()
    for model in (logits_model, softmax_model):
        outputs = np.asarray(model.predict(x, verbose=0), np.float64)
        is_probability = acquisition_models.outputs_are_probabilities(model)
        assert is_probability == (model is softmax_model)
        p = outputs if is_probability else np.exp(outputs) / np.exp(outputs).sum(1, keepdims=True)
        expected = reference(p)
        selection = acq.get(name).select(model, x, k=8, batch_size=16)
        np.testing.assert_allclose(selection.scores, expected[selection.indices], rtol=1e-4, atol=1e-6)
        assert selection.indices.tolist() == np.argsort(-expected, kind="stable")[:8].tolist()


def test_from_logits_option_overrides_detection():
    model = dense_classifier()
    x = features()
    outputs = model.predict(x, verbose=0)
    assumed_probabilities = acq.get("least_confidence", from_logits=False).select(model, x, k=5)
    np.testing.assert_allclose(
        assumed_probabilities.scores, 1 - outputs.max(1)[assumed_probabilities.indices], rtol=1e-5
    )


def test_uncertainty_on_loss_learning_model_uses_output(lossal_model, image_pool):
    logits = lossal_model.predict(image_pool, verbose=0)["output"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = -(p * np.log(p)).sum(1)
    selection = acq.get("entropy").select(lossal_model, image_pool, k=6, batch_size=16)
    np.testing.assert_allclose(selection.scores, expected[selection.indices], rtol=1e-4)


def test_bald_valid_and_zero_without_dropout_noise():
    model = dense_classifier(dropout=0.5)
    x = features(60)
    selection = acq.get("bald", num_samples=8).select(model, x, k=10, seed=0, batch_size=16)
    assert len(set(selection.indices.tolist())) == 10 and selection.indices.max() < 60
    assert np.all(selection.scores > 0) and np.all(np.diff(selection.scores) <= 0)
    again = acq.get("bald", num_samples=8).select(model, x, k=10, seed=0, batch_size=16)
    np.testing.assert_array_equal(selection.indices, again.indices)
    # With dropout rate 0 every pass agrees: mutual information is 0 everywhere.
    silent = acq.get("bald", num_samples=4).select(dense_classifier(dropout=1e-9), x, k=5, seed=0)
    np.testing.assert_allclose(silent.scores, 0, atol=1e-5)


def test_bald_needs_dropout_and_keeps_batch_norm_frozen(lossal_model, image_pool):
    with pytest.raises(ValueError, match="dropout"):
        acq.get("bald").select(lossal_model, image_pool, k=2)
    inputs = keras.Input((6,))
    x = keras.layers.BatchNormalization(name="bn")(inputs)
    x = keras.layers.Dropout(0.3)(keras.layers.Dense(8, activation="relu")(x))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    moving_mean = model.get_layer("bn").moving_mean.numpy().copy()
    acq.get("bald", num_samples=3).select(model, features(40) + 5.0, k=4, seed=0)
    np.testing.assert_array_equal(model.get_layer("bn").moving_mean.numpy(), moving_mean)


def test_badge_valid_and_seeded(lossal_model, image_pool):
    for model, x in ((dense_classifier(), features(70)), (lossal_model, image_pool)):
        selection = acq.get("badge").select(model, x, k=12, seed=3, batch_size=16)
        assert len(set(selection.indices.tolist())) == 12 and 0 <= selection.indices.min()
        assert selection.indices.max() < len(x) and selection.num_scored == len(x)
        again = acq.get("badge").select(model, x, k=12, seed=3, batch_size=16)
        np.testing.assert_array_equal(selection.indices, again.indices)


def test_coreset_selects_far_points_and_respects_labeled():
    inputs = keras.Input((2,))
    embedding = keras.layers.Identity(name="embedding")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(embedding))
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 2)).astype(np.float32)
    labeled = rng.normal(size=(5, 2)).astype(np.float32)
    selection = acq.get("coreset").select(model, points, k=8, batch_size=16, labeled=labeled)
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    nearest = np.sqrt(((points[:, None] - labeled[None]) ** 2).sum(-1)).min(1)
    expected = []
    for _ in range(8):
        pick = int(np.argmax(np.where(np.isin(np.arange(50), expected), -1, nearest)))
        expected.append(pick)
        nearest = np.minimum(nearest, distances[pick])
    assert selection.indices.tolist() == expected
    unlabeled = acq.get("coreset").select(model, points, k=8, seed=2)
    assert len(set(unlabeled.indices.tolist())) == 8 and unlabeled.scores[0] == np.inf


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_rejects_bad_k(k):
    with pytest.raises(ValueError, match=f"Received: k={k!r}"):
        acq.LearningLoss().select(ECHO_MODEL, np.zeros((5, 1), np.float32), k=k)


@pytest.mark.parametrize("name", ["learning_loss", "random", "coreset", "badge"])
def test_rejects_k_larger_than_pool(name):
    model = ECHO_MODEL if name == "learning_loss" else dense_classifier()
    x = np.zeros((5, 1), np.float32) if name == "learning_loss" else features(5)
    with pytest.raises(ValueError, match="Received: k=6"):
        acq.get(name).select(model, x, k=6)
    with pytest.raises(ValueError, match="k <= subset_size"):
        acq.get(name).select(model, x, k=4, subset_size=3, seed=0)


def test_rejects_k_larger_than_unknown_length_pool():
    with pytest.raises(ValueError, match=r"k <= the number of pool items scored \(6\). Received: k=7"):
        acq.LearningLoss().select(ECHO_MODEL, (np.ones((3, 1), np.float32) for _ in range(2)), k=7)


def test_rejects_empty_pools():
    for pool in (np.zeros((0, 1), np.float32), [], iter([])):
        with pytest.raises(ValueError, match="non-empty pool"):
            acq.LearningLoss().select(ECHO_MODEL, pool, k=1)
    with pytest.raises(ValueError, match="non-empty pool"):
        acq.LearningLoss().select(ECHO_MODEL, tf.data.Dataset.from_tensor_slices(np.zeros((0, 2, 1), np.float32)), k=1)


def test_rejects_shape_mismatch(lossal_model):
    with pytest.raises(
        ValueError, match=r"Expected pool items of shape \(8, 8, 1\).*Received: array items of shape \(8, 8\)"
    ):
        acq.get("learning_loss").select(lossal_model, np.zeros((4, 8, 8), np.float32), k=1)
    with pytest.raises(ValueError, match=r"Received: dataset items of shape \(8, 8, 3\)"):
        acq.get("entropy").select(lossal_model, tf.data.Dataset.from_tensor_slices(np.zeros((4, 8, 8, 3))), k=1)


def test_rejects_unknown_strategy_and_bad_options():
    with pytest.raises(ValueError, match="Received: name='lowest_loss'"):
        acq.get("lowest_loss")
    with pytest.raises(ValueError, match="num_samples"):
        acq.get("bald", num_samples=0)
    with pytest.raises(ValueError, match="Invalid options"):
        acq.get("entropy", temperature=2)
    strategy = acq.get("entropy")
    assert acq.get(strategy) is strategy
    assert set(acq.STRATEGIES) == {
        "learning_loss",
        "random",
        "entropy",
        "margin",
        "least_confidence",
        "coreset",
        "bald",
        "badge",
        "learning_loss_clusters",
        "learning_loss_kcenter",
        "learning_loss_badge",
        "mc_dropout_variance",
        "typiclust",
        "budget_switch",
    }


def test_rejects_bad_pool_type():
    with pytest.raises(TypeError, match="Received: int"):
        acq.LearningLoss().select(ECHO_MODEL, 5, k=1)


def test_nan_scores_ranked_last_counted_and_never_selected():
    pool = np.array([1.0, np.nan, 3.0, np.nan, 2.0, 0.0], np.float32)[:, None]
    with pytest.warns(RuntimeWarning, match="2 of 6"):
        selection = acq.LearningLoss().select(ECHO_MODEL, pool, k=4, batch_size=4)
    assert selection.indices.tolist() == [2, 4, 0, 5] and selection.num_nan == 2
    with pytest.raises(ValueError, match="at least k=5 items with a finite score, but 2 of 6"):
        acq.LearningLoss().select(ECHO_MODEL, pool, k=5, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert acq.LearningLoss().select(ECHO_MODEL, pool[[0, 2]], k=1).num_nan == 0


# -------------------------------------------------------------------- mixed precision
def test_mixed_precision_gives_float32_scores():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        _check_mixed_precision_scores()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _check_mixed_precision_scores():
    classifier = dense_classifier()
    x = features(30)
    raw = classifier(x[:4])
    assert keras.backend.standardize_dtype(raw.dtype) == "bfloat16"
    logits = np.asarray(keras.ops.cast(classifier(x), "float32"))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    selection = acq.get("entropy").select(classifier, x, k=5, batch_size=8)
    assert selection.scores.dtype == np.float32
    np.testing.assert_allclose(selection.scores, -(p * np.log(p)).sum(1)[selection.indices], rtol=1e-4)
    model = kl.LossLearningModel(resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
    images = np.random.default_rng(0).normal(size=(20, 8, 8, 1)).astype(np.float32)
    for name in ("learning_loss", "margin", "badge", "coreset"):
        selection = acq.get(name).select(model, images, k=4, batch_size=8, seed=0)
        assert selection.scores.dtype == np.float32 and len(set(selection.indices.tolist())) == 4, name


def test_random_counts_dataset_items_using_the_model(lossal_model, image_pool):
    items = tf.data.Dataset.from_tensor_slices(image_pool)  # 45 items of shape (8, 8, 1)
    selection = acq.get("random").select(lossal_model, items, k=45, seed=0)
    assert selection.num_scored == 45 and sorted(selection.indices.tolist()) == list(range(45))


def test_coreset_leaves_out_nan_embeddings():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Identity(name="embedding")(inputs)))
    points = np.random.default_rng(0).normal(size=(10, 2)).astype(np.float32)
    points[3, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="1 of 10 pool items have NaN/inf"):
        selection = acq.get("coreset").select(model, points, k=9, seed=0)
    assert 3 not in selection.indices.tolist() and selection.num_nan == 1
    with pytest.raises(ValueError, match="at least k=10 items with finite features and scores, but 1 of 10"):
        acq.get("coreset").select(model, points, k=10, seed=0)


@pytest.mark.parametrize("name", ["learning_loss", "entropy", "margin", "bald", "badge", "coreset", "random"])
def test_non_finite_pool_items_are_counted_and_never_picked(name, lossal_model, image_pool):
    # A NaN/inf pixel can still give a finite-looking score: the item itself is refused.
    pool = image_pool.copy()
    pool[4, 1, 1, 0] = np.nan
    pool[9, 0, 0, 0] = np.inf
    pool[20] = -np.inf
    model = lossal_model
    if name == "bald":
        inputs = keras.Input((8, 8, 1))
        hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
        model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    with pytest.warns(RuntimeWarning, match="3 of 45 pool items have NaN/inf"):
        selection = acq.get(name).select(model, pool, k=42, seed=0, batch_size=16)
    assert not {4, 9, 20} & set(selection.indices.tolist())
    assert selection.num_nan == 3 and len(set(selection.indices.tolist())) == 42
    with pytest.raises(ValueError, match="at least k=43 items with (a )?finite"):
        acq.get(name).select(model, pool, k=43, seed=0, batch_size=16)


def test_every_strategy_takes_the_base_arguments_and_keeps_no_per_call_state():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Dropout(0.3)(hidden))
    model = kl.LossLearningModel(
        keras.Model(inputs, outputs), feature_layers=["hidden"], head=kl.LossPredictionHead(units=4)
    )
    pool = features(30)
    for name in acq.STRATEGIES:
        strategy = acq.get(name)
        selection = strategy.select(model, pool, 4, subset_size=None, seed=0, batch_size=8, verbose=0, labeled=pool[:5])
        assert len(set(selection.indices.tolist())) == 4, name
        # Settings only (compiled steps are cached on the model): nothing a second loop sharing it could trip on.
        assert set(vars(strategy)) <= set(strategy.get_config()), (name, sorted(vars(strategy)))


def test_coreset_and_learning_loss_kcenter_measure_labeled_items_alike(lossal_model, image_pool):
    labeled = np.random.default_rng(5).normal(size=(6, 8, 8, 1)).astype(np.float32)
    embeddings = np.random.default_rng(6).normal(size=(4, 3)).astype(np.float32)
    coreset, kcenter = acq.CoreSet(), acq.LearningLossKCenter()
    assert coreset._distances_to_labeled(lossal_model, None, embeddings, 8) is None
    embedder = acquisition_models.embedding_model(lossal_model)
    labeled_embeddings = embedder(labeled, training=False)[0].numpy().reshape(6, -1)
    pool_embeddings = embedder(image_pool[:4], training=False)[0].numpy().reshape(4, -1)
    expected = ((pool_embeddings[:, None, :] - labeled_embeddings[None, :, :]) ** 2).sum(-1).min(axis=1)
    for strategy in (coreset, kcenter):
        got = strategy._distances_to_labeled(lossal_model, labeled, pool_embeddings, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


class _CountingLearningLoss(acq.LearningLoss):
    """Learning loss that counts its traces (Python side effects run only while tracing)."""

    traces = 0

    def score(self, model, features):
        type(self).traces += 1
        return super().score(model, features)


def _select_on_a_fresh_model(pool):
    """Selects on a new model; returns a weak reference to it and its number of cached steps."""
    import weakref

    keras.utils.set_random_seed(1)
    other = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
    _CountingLearningLoss().select(other, pool, k=3, batch_size=8)
    return weakref.ref(other), len(acq.strategies.compiled_steps(other))


def test_the_documented_call_traces_once_per_model_and_settings(lossal_model, image_pool):
    import gc

    _CountingLearningLoss.traces = 0
    first = [_CountingLearningLoss().select(lossal_model, image_pool, k=3, batch_size=8).indices for _ in range(3)]
    assert _CountingLearningLoss.traces == 1  # three fresh strategies, one trace: the step is cached on the model
    assert all(indices.tolist() == first[0].tolist() for indices in first)
    _CountingLearningLoss().select(lossal_model, image_pool, k=3, batch_size=16)
    assert _CountingLearningLoss.traces == 2  # another batch size is another step
    reference, num_steps = _select_on_a_fresh_model(image_pool)
    assert _CountingLearningLoss.traces == 3 and num_steps == 1  # another model is another step
    gc.collect()
    assert reference() is None  # the cache lives and dies with its model
