"""Diversity math (k-means, best per cluster, k-center) and the hard-and-diverse learning-loss strategies."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lossal as kl
from keras_lossal import acquisition as acq
from keras_lossal.acquisition import diversity, strategies
from keras_lossal.acquisition import models as acquisition_models


def echo_model():
    """Features (x, y, loss): the embedding is (x, y) and the predicted loss is the third feature."""
    inputs = keras.Input((3,), name="features")
    embedding = keras.layers.Dense(2, use_bias=False, trainable=False, name="embed")(inputs)
    logits = keras.layers.Dense(3, name="logits")(embedding)
    predicted = keras.layers.Lambda(lambda x: x[:, 2], name="loss")(inputs)
    model = keras.Model(inputs, {"output": logits, "predicted_loss": predicted})
    model.get_layer("embed").set_weights([np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], "float32")])
    return model


def blobs(per_blob=25, seed=0):
    """Four far-apart blobs; the predicted loss is highest everywhere in blob 0."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    positions = np.concatenate([center + rng.normal(size=(per_blob, 2)) for center in centers])
    blob = np.repeat(np.arange(4), per_blob)
    loss = rng.random(len(blob)) + np.where(blob == 0, 10.0, 0.0)
    return np.column_stack([positions, loss]).astype("float32"), blob


def reference_kmeans_assignment(points, labels):
    """A fixed point of Lloyd's algorithm: every point is nearest to its own cluster's mean."""
    centers = np.stack([points[labels == c].mean(0) for c in np.unique(labels)])
    return np.argmin(((points[:, None] - centers[None]) ** 2).sum(-1), axis=1)


def test_kmeans_finds_separated_blobs_and_is_a_lloyd_fixed_point():
    points, blob = blobs()
    labels = diversity.kmeans(points[:, :2], 4, seed=0)
    assert len(np.unique(labels)) == 4
    for c in range(4):  # each cluster is exactly one blob
        assert len(np.unique(blob[labels == c])) == 1
    relabeled = np.unique(labels, return_inverse=True)[1]
    np.testing.assert_array_equal(reference_kmeans_assignment(points[:, :2], relabeled), relabeled)
    np.testing.assert_array_equal(labels, diversity.kmeans(points[:, :2], 4, seed=0))
    with pytest.raises(ValueError, match=r"1 <= k <= 100 .*Received: k=101"):
        diversity.kmeans(points[:, :2], 101)


def test_kmeans_with_duplicates_and_k_equal_n():
    points = np.zeros((5, 2), "float32")
    assert diversity.kmeans(points, 5, seed=1).shape == (5,)
    distinct = np.arange(6, dtype="float32")[:, None]
    assert sorted(diversity.kmeans(distinct, 6, seed=0).tolist()) == list(range(6))


def reference_best_per_cluster(scores, clusters, k):
    leaders = []
    for cluster in set(clusters.tolist()):
        members = [i for i in range(len(scores)) if clusters[i] == cluster]
        leaders.append(max(members, key=lambda i: (scores[i], -i)))
    leaders.sort(key=lambda i: (-scores[i], i))
    if len(leaders) >= k:
        return leaders[:k]
    rest = sorted((i for i in range(len(scores)) if i not in leaders), key=lambda i: (-scores[i], i))
    return leaders + rest[: k - len(leaders)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_best_per_cluster_matches_reference(seed, k):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 20).astype("float32")  # ties on purpose
    clusters = rng.integers(0, 5, 20)
    got = diversity.best_per_cluster(scores, clusters, k).tolist()
    assert got == reference_best_per_cluster(scores, clusters, k)


def test_nearest_center_blocks_match_brute_force():
    rng = np.random.default_rng(0)
    points, centers = rng.normal(size=(37, 3)), rng.normal(size=(5, 3))
    assignment, distance = diversity.nearest_center(points, centers, block_size=8)
    brute = ((points[:, None] - centers[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(assignment, brute.argmin(1))
    np.testing.assert_allclose(distance, brute.min(1), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ strategies
def test_clusters_strategy_spreads_picks_where_plain_learning_loss_piles_up():
    points, blob = blobs()
    model = echo_model()
    plain = acq.get("learning_loss").select(model, points, k=4)
    assert set(blob[plain.indices].tolist()) == {0}  # all four from the hard blob
    selection = acq.get("learning_loss_clusters").select(model, points, k=4, seed=0)
    assert sorted(blob[selection.indices].tolist()) == [0, 1, 2, 3]
    # Each pick is the highest predicted loss of its blob, and scores are those predicted losses, best first.
    for index in selection.indices:
        members = np.flatnonzero(blob == blob[index])
        assert index == members[np.argmax(points[members, 2])]
    np.testing.assert_allclose(selection.scores, points[selection.indices, 2])
    assert selection.indices[0] == np.argmax(points[:, 2])


def test_clusters_strategy_equals_numpy_reference_on_a_loss_learning_model():
    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
    pool = np.random.default_rng(2).normal(size=(60, 8, 8, 1)).astype("float32")
    selection = acq.get("learning_loss_clusters").select(model, pool, k=6, seed=4, batch_size=16)
    predicted = model.predict_loss(pool)
    embeddings = acquisition_models.embedding_model(model).predict(pool, verbose=0)[0].reshape(60, -1)
    clusters = diversity.kmeans(embeddings, 6, seed=4)
    expected = reference_best_per_cluster(predicted, clusters, 6)
    assert selection.indices.tolist() == expected
    np.testing.assert_allclose(selection.scores, predicted[expected], rtol=1e-5)


def reference_kcenter(embeddings, candidates, labeled, k):
    nearest = ((embeddings[candidates][:, None] - labeled[None]) ** 2).sum(-1).min(1)
    chosen = []
    for _ in range(k):
        pick = int(np.argmax(np.where(np.isin(np.arange(len(candidates)), chosen), -1, nearest)))
        chosen.append(pick)
        nearest = np.minimum(nearest, ((embeddings[candidates] - embeddings[candidates][pick]) ** 2).sum(-1))
    return [candidates[i] for i in chosen]


def test_kcenter_strategy_equals_reference_shortlist_then_greedy():
    points, _ = blobs(seed=3)
    model = echo_model()
    labeled = np.array([[0.0, 0.0, 0.0], [20.0, 20.0, 0.0]], "float32")
    selection = acq.get("learning_loss_kcenter", candidates_factor=5).select(model, points, k=4, labeled=labeled)
    shortlist = list(np.lexsort((np.arange(len(points)), -points[:, 2]))[:20])
    expected = reference_kcenter(points[:, :2], shortlist, labeled[:, :2], 4)
    assert selection.indices.tolist() == expected
    # factor 1 is plain learning loss (same set); a factor covering the pool is core-set on the pool.
    same = acq.get("learning_loss_kcenter", candidates_factor=1).select(model, points, k=4, labeled=labeled)
    assert set(same.indices.tolist()) == set(acq.get("learning_loss").select(model, points, k=4).indices.tolist())
    wide = acq.get("learning_loss_kcenter", candidates_factor=25).select(model, points, k=4, labeled=labeled)
    assert wide.indices.tolist() == acq.get("coreset").select(model, points, k=4, labeled=labeled).indices.tolist()
    with pytest.raises(ValueError, match="candidates_factor >= 1. Received: candidates_factor=0.5"):
        acq.get("learning_loss_kcenter", candidates_factor=0.5)


@pytest.mark.parametrize("name", ["learning_loss_clusters", "learning_loss_kcenter"])
def test_hard_and_diverse_strategies_never_pick_non_finite_items(name):
    points, _ = blobs()
    points[[1, 30], 2] = [np.nan, np.inf]  # the hardest-looking items of the pool
    points[50, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="3 of 100"):
        selection = acq.get(name).select(echo_model(), points, k=8, seed=0)
    assert not {1, 30, 50} & set(selection.indices.tolist()) and selection.num_nan == 3
    with pytest.raises(ValueError, match="at least k=98 items with finite features and scores"):
        acq.get(name).select(echo_model(), points, k=98, seed=0)


@pytest.mark.parametrize("name", ["learning_loss_clusters", "learning_loss_kcenter"])
def test_hard_and_diverse_strategies_need_a_loss_model(name):
    inputs = keras.Input((3,))
    classifier = keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Dense(4)(inputs)))
    with pytest.raises(ValueError, match="predicted_loss"):
        acq.get(name).select(classifier, blobs()[0], k=2, seed=0)


def test_hard_and_diverse_strategies_run_the_backbone_once_per_batch():
    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
    pool = np.random.default_rng(3).normal(size=(20, 8, 8, 1)).astype("float32")
    predicted, embedding = acquisition_models.loss_and_embedding(model)(tf.constant(pool))
    np.testing.assert_allclose(predicted.numpy(), model.predict_loss(pool), rtol=1e-5, atol=1e-6)
    expected = acquisition_models.embedding_model(model).predict(pool, verbose=0)[0].reshape(20, -1)
    np.testing.assert_allclose(embedding.numpy(), expected, rtol=1e-5, atol=1e-6)
    calls = []
    first_conv = next(layer for layer in model.backbone.layers if isinstance(layer, keras.layers.Conv2D))
    original_call = first_conv.call
    first_conv.call = lambda *args, **kwargs: calls.append(1) or original_call(*args, **kwargs)
    try:
        acq.get("learning_loss_clusters").select(model, pool, k=3, seed=0, batch_size=32)
    finally:
        first_conv.call = original_call
    assert len(calls) == 1  # traced once, through one backbone pass (two before: the embedding and the head's)


# ------------------------------------------------------------------------------ learning_loss_badge
def test_loss_rank_weights_match_a_numpy_reference():
    predicted = np.random.default_rng(0).normal(size=50).astype("float32")
    predicted[[3, 7]] = predicted[11]  # ties: ordered by position
    expected = np.empty(50)
    expected[np.lexsort((np.arange(50), predicted))] = np.arange(1, 51) / 50
    np.testing.assert_allclose(strategies.loss_rank_weights(predicted), expected)
    assert strategies.loss_rank_weights(predicted)[[3, 7, 11]].tolist() == sorted(
        strategies.loss_rank_weights(predicted)[[3, 7, 11]].tolist()
    )


def test_learning_loss_badge_equals_numpy_reference_on_a_loss_learning_model():
    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
    pool = np.random.default_rng(2).normal(size=(60, 8, 8, 1)).astype("float32")
    selection = acq.get("learning_loss_badge").select(model, pool, k=6, seed=4, batch_size=16)
    predicted = model.predict_loss(pool)
    embeddings, logits = acquisition_models.embedding_model(model).predict(pool, verbose=0)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    residuals = probabilities - np.eye(3)[probabilities.argmax(1)]
    ranks = np.argsort(np.argsort(predicted, kind="stable"), kind="stable") + 1
    expected, _ = diversity.kmeans_plus_plus_gradients(residuals * (ranks / 60.0)[:, None], embeddings, 6, seed=4)
    assert selection.indices.tolist() == expected.tolist()
    np.testing.assert_allclose(selection.scores, predicted[expected], rtol=1e-5)


def test_learning_loss_badge_draws_toward_high_predicted_loss_where_badge_does_not():
    # Embeddings and predicted losses independent: BADGE's picks ignore the loss, the weighted draw favours it.
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.normal(size=(300, 2)), rng.random(300)]).astype("float32")
    top_half = points[:, 2] > np.median(points[:, 2])
    model = echo_model()
    classifier = keras.Model(model.inputs, model.get_layer("logits").output)  # the same weights, logits only
    shares = {}
    for name, scored in (("badge", classifier), ("learning_loss_badge", model)):
        picks = [acq.get(name).select(scored, points, k=10, seed=seed).indices for seed in range(12)]
        shares[name] = float(np.mean([top_half[indices].mean() for indices in picks]))
    assert shares["learning_loss_badge"] >= 0.7 and abs(shares["badge"] - 0.5) < 0.15, shares


def test_learning_loss_badge_never_picks_non_finite_items():
    points, _ = blobs()
    points[[1, 30], 2] = [np.nan, np.inf]
    points[50, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="3 of 100"):
        selection = acq.get("learning_loss_badge").select(echo_model(), points, k=8, seed=0)
    assert not {1, 30, 50} & set(selection.indices.tolist()) and len(set(selection.indices.tolist())) == 8
