"""The streaming passes: the device-side running top-K against NumPy, XLA, mixed precision, indices carried."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lossal as kl
from keras_lossal import acquisition as acq
from keras_lossal.acquisition import ranking, streaming
from keras_lossal.backbones import resnet18_cifar

TINY = np.float32(1.4e-45)  # the smallest positive subnormal


class ScoreEcho(keras.Model):
    """Predicted loss = the item's first feature."""

    def call(self, inputs, training=False):
        return {"output": inputs, "predicted_loss": inputs[:, 0]}


def numpy_top_k(scores, k):
    order = ranking.rank_order(scores, np.arange(len(scores)))[:k]
    return order.tolist()


def test_order_key_orders_like_the_floats_including_subnormals_and_signed_zero():
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, TINY, -TINY, 2 * TINY, np.inf, -np.inf, 1.0, -1.0, 3.4e38, -3.4e38], np.float32)
    values = np.concatenate([special, rng.normal(size=500).astype(np.float32), rng.normal(size=100) * 1e-40])
    values = values.astype(np.float32)
    keys = streaming._order_key(tf.constant(values)).numpy()
    for a, b in zip(*np.triu_indices(len(values), 1)):
        assert np.sign(int(keys[a]) - int(keys[b])) == np.sign(values[a] - values[b]), (values[a], values[b])
    assert keys[0] == keys[1]  # -0.0 ties with 0.0, as in NumPy


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_device_top_k_equals_numpy_on_subnormals_zeros_ties_and_nan(batch_size):
    values = np.array([0.0, TINY, -0.0, -TINY, 1.0, 1.0, np.nan, 2 * TINY, -1.0, 0.0, 1.0, np.inf], np.float32)
    pool = values[:, None]
    masked = np.where(np.isfinite(values), values, np.nan)  # NaN/inf scores are never picked
    for k in range(1, int(np.isfinite(values).sum()) + 1):
        with pytest.warns(RuntimeWarning, match="2 of 12 pool items"):
            selection = acq.LearningLoss().select(ScoreEcho(), pool, k=k, batch_size=batch_size)
        assert selection.indices.tolist() == numpy_top_k(masked, k), k
        np.testing.assert_array_equal(selection.scores, values[selection.indices])
        assert (selection.num_scored, selection.num_nan) == (12, 2)


def test_indices_travel_with_the_items_across_subsets_padding_and_pool_types():
    # Each item's score is its own position: any drift between scores and indices shows.
    pool = np.arange(1000, dtype=np.float32)[:, None]
    pools = {
        "array": pool,
        "tf.data": tf.data.Dataset.from_tensor_slices(pool).batch(37),
        "list": [pool[:333], pool[333:]],
    }
    for name, source in pools.items():
        for subset_size in (None, 401):
            selection = acq.LearningLoss().select(
                ScoreEcho(), source, k=50, subset_size=subset_size, seed=3, batch_size=64
            )
            np.testing.assert_array_equal(selection.scores, selection.indices.astype(np.float32), err_msg=name)
            expected = np.arange(1000) if subset_size is None else ranking.sample_subset(1000, 401, 3)
            assert selection.indices.tolist() == sorted(expected.tolist(), reverse=True)[:50], name


def test_one_trace_across_repeated_selects():
    strategy = acq.LearningLoss()
    model = kl.LossLearningModel(resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
    pool = np.random.default_rng(0).random((70, 8, 8, 1), dtype=np.float32)
    strategy.select(model, pool, k=5, batch_size=16)
    function = strategy._batch_function(model, None, 16)
    assert function._forward.experimental_get_tracing_count() == 1  # the model's forward, once
    traced = function.tracing_count()
    for _ in range(2):  # 70 items in batches of 16: a group of 5 batches, the last one padded
        acq.get("learning_loss").select(model, pool, k=5, batch_size=16)
        acq.get("learning_loss").select(model, pool[:20], k=5, batch_size=16)  # a group of 2 batches
    assert function.tracing_count() == traced


def test_jit_compiled_scoring_when_the_model_is_compiled_with_xla():
    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
    pool = np.random.default_rng(1).random((90, 8, 8, 1), dtype=np.float32)
    plain = acq.LearningLoss().select(model, pool, k=10, batch_size=32)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=True)
    strategy = acq.LearningLoss()
    with_xla = strategy.select(model, pool, k=10, batch_size=32)
    assert strategy._batch_function(model, None, 32).jit_compile
    assert with_xla.indices.tolist() == plain.indices.tolist()
    np.testing.assert_allclose(with_xla.scores, plain.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_models_score_in_float32_equal_to_their_own_predictions(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = kl.LossLearningModel(resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
        pool = np.random.default_rng(2).random((75, 8, 8, 1), dtype=np.float32)
        selection = acq.LearningLoss().select(model, pool, k=75, batch_size=32)
        expected = model.predict_loss(pool).astype(np.float32)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert selection.scores.dtype == np.float32
    np.testing.assert_array_equal(selection.scores, expected[selection.indices])
    assert selection.indices.tolist() == numpy_top_k(expected, 75)


# ------------------------------------------------------------------ bounded candidates (collect_top)
def _echo_function():
    """A batch function returning (score, 2-d embedding) straight from 3-feature items."""
    return streaming.BatchFunction(lambda features: (features[:, 0], features[:, 1:]), False)


@pytest.mark.parametrize("capacity", [1, 7, 40, 200])
def test_collect_top_keeps_the_highest_scores_in_the_order_scored(capacity):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(150, 3)).astype("float32")
    items[::10, 0] = items[5, 0]  # ties: the item scored first wins
    items[[3, 77], 0] = np.nan
    items[40, 2] = np.inf  # a non-finite embedding is never a candidate either
    indexed = acq.pool.index_pool(items, 16, tf.TensorSpec((None, 3), tf.float32))
    indices, (scores, embeddings), num_scored, num_excluded = streaming.collect_top(_echo_function(), indexed, capacity)
    finite = np.flatnonzero(np.isfinite(items).all(axis=1))
    order = finite[np.lexsort((finite, -items[finite, 0]))][:capacity]
    assert indices.tolist() == sorted(order.tolist())  # the top `capacity`, back in pool (scoring) order
    np.testing.assert_array_equal(scores, items[indices, 0])
    np.testing.assert_array_equal(embeddings, items[indices, 1:])
    assert (num_scored, num_excluded) == (150, 3)


def test_collect_top_memory_is_bounded_by_the_capacity_not_the_pool():
    items = np.random.default_rng(1).normal(size=(5000, 3)).astype("float32")
    indexed = acq.pool.index_pool(items, 64, tf.TensorSpec((None, 3), tf.float32))
    peak = []
    original_add = streaming._TopRows.add

    def add(self, indices, outputs):
        original_add(self, indices, outputs)
        peak.append(self.buffered)

    streaming._TopRows.add = add
    try:
        indices, _, _, _ = streaming.collect_top(_echo_function(), indexed, capacity=100)
    finally:
        streaming._TopRows.add = original_add
    assert max(peak) <= 2 * 100 + 64  # at most twice the capacity plus one batch, whatever the pool's size
    assert sorted(indices.tolist()) == sorted(np.argsort(-items[:, 0], kind="stable")[:100].tolist())


def test_learning_loss_clusters_clusters_only_its_candidates():
    from keras_lossal.acquisition import diversity

    rng = np.random.default_rng(2)
    items = np.column_stack([rng.normal(size=(400, 2)) * 10, rng.random(400)]).astype("float32")
    from test_acquisition_diversity import echo_model

    model = echo_model()  # embedding = the first two features, predicted loss = the third
    strategy = acq.get("learning_loss_clusters", candidates_factor=5, min_candidates=1)
    assert strategy.num_candidates(8) == 40 and acq.get("learning_loss_clusters").num_candidates(8) == 10_000
    selection = strategy.select(model, items, k=8, seed=3)
    candidates = np.sort(np.argsort(-items[:, 2], kind="stable")[:40])
    clusters = diversity.kmeans(items[candidates, :2], 8, seed=3)
    expected = candidates[diversity.best_per_cluster(items[candidates, 2], clusters, 8)]
    assert selection.indices.tolist() == expected.tolist() and selection.num_scored == 400
    # Pools up to min_candidates are clustered whole, as before the bound.
    whole = acq.get("learning_loss_clusters").select(model, items, k=8, seed=3)
    clusters = diversity.kmeans(items[:, :2], 8, seed=3)
    assert whole.indices.tolist() == diversity.best_per_cluster(items[:, 2], clusters, 8).tolist()
    with pytest.raises(ValueError, match="candidates_factor >= 1. Received: candidates_factor=0.5"):
        acq.get("learning_loss_clusters", candidates_factor=0.5)


@pytest.mark.parametrize("group", [1, 2, 3, 8])
def test_groups_of_batches_score_and_merge_exactly_as_one_batch_per_call(monkeypatch, group):
    # Ties and NaN across group boundaries, a padded last batch, a short last group, a subset, a tf.data pool.
    rng = np.random.default_rng(4)
    values = rng.integers(0, 6, 203).astype(np.float32)
    values[rng.choice(203, 9, replace=False)] = np.nan
    pool = values[:, None]
    masked = np.where(np.isfinite(values), values, np.nan)
    monkeypatch.setattr(acq.pool.IndexedPool, "group_size", lambda self, *args: group)
    for source in (pool, tf.data.Dataset.from_tensor_slices(pool).batch(11)):
        with pytest.warns(RuntimeWarning, match="9 of 203 pool items"):
            selection = acq.LearningLoss().select(ScoreEcho(), source, k=40, batch_size=8)
        assert selection.indices.tolist() == numpy_top_k(masked, 40)
        assert (selection.num_scored, selection.num_nan) == (203, 9)
    subset = acq.LearningLoss().select(ScoreEcho(), np.nan_to_num(pool), k=7, batch_size=8, subset_size=50, seed=2)
    positions = ranking.sample_subset(203, 50, 2)
    expected = positions[numpy_top_k(np.nan_to_num(values)[positions], 7)]
    assert subset.indices.tolist() == expected.tolist()
    function = streaming.BatchFunction(lambda x: (x[:, 0] * 2, x + 1))
    indexed = acq.pool.index_pool(pool, batch_size=8)
    indices, (doubled, plus_one) = streaming.collect(function, indexed)
    assert indices.tolist() == list(range(203))
    np.testing.assert_array_equal(doubled, values * 2)
    np.testing.assert_array_equal(plus_one, pool + 1)


@pytest.mark.parametrize("items", [1, 7, 8, 9, 23, 64, 65])
def test_a_pool_comes_in_two_group_sizes_at_most(items):
    # XLA compiles a step once per input shape: full groups, then the batches left over one at a time.
    pool = np.arange(items, dtype=np.float32)[:, None]
    for source in (pool, tf.data.Dataset.from_tensor_slices(pool)):
        indexed = acq.pool.index_pool(source, batch_size=4)
        groups = [(np.asarray(i), np.asarray(f)) for i, f in indexed.groups(3)]
        assert {len(i) for i, _ in groups} <= {3, 1}
        indices = np.concatenate([i.reshape(-1) for i, _ in groups])
        assert indices[indices >= 0].tolist() == list(range(items))
        assert [len(i) for i, _ in groups] == [3] * (-(-items // 4) // 3) + [1] * (-(-items // 4) % 3)
