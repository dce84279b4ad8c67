"""TypiClust: typicality and the per-cluster picks against NumPy references, and the strategy on separable data."""

import itertools

import keras
import numpy as np
import pytest

from keras_lossal import acquisition
from keras_lossal.acquisition import diversity


def _typicality_reference(points, neighbours):
    """Brute force: for each point, 1 / mean distance to its nearest `min(neighbours, n-1)` others."""
    result = []
    for i, point in enumerate(points):
        others = sorted(float(np.linalg.norm(point - other)) for j, other in enumerate(points) if j != i)
        nearest = others[: min(neighbours, len(points) - 1)]
        # Points at distance 0 from all their neighbours get the largest finite typicality, not inf.
        result.append(1.0 / max(np.mean(nearest), np.finfo(np.float64).tiny) if nearest else 0.0)
    return np.array(result)


def test_typicality_against_brute_force():
    rng = np.random.default_rng(0)
    for count, dims, neighbours in [(1, 3, 20), (2, 2, 20), (7, 3, 3), (40, 5, 20), (25, 4, 1)]:
        points = rng.normal(size=(count, dims))
        np.testing.assert_allclose(
            diversity.typicality(points, neighbours), _typicality_reference(points, neighbours), rtol=1e-6
        )


def _picks_reference(embeddings, clusters, labeled_clusters, k, neighbours, min_size, labeled):
    """TypiClust's loop written plainly: least covered cluster, largest first, then its most typical candidate."""
    count = int(max(clusters.max(), labeled_clusters.max(initial=-1))) + 1
    covered = [int(np.sum(labeled_clusters == c)) for c in range(count)]
    sizes = [int(np.sum(clusters == c)) + covered[c] for c in range(count)]
    typical = np.zeros(len(clusters))
    for c in range(count):
        members = np.flatnonzero(clusters == c)
        points = np.concatenate([embeddings[members], labeled[labeled_clusters == c]])
        typical[members] = _typicality_reference(points, neighbours)[: len(members)]
    left = set(range(len(clusters)))
    picks = []
    for _ in range(k):
        open_clusters = [c for c in range(count) if any(clusters[i] == c for i in left)]
        large = [c for c in open_clusters if sizes[c] >= min_size] or open_clusters
        best = sorted(large, key=lambda c: (covered[c], -sizes[c], c))[0]
        candidates = sorted((i for i in left if clusters[i] == best), key=lambda i: (-typical[i], i))
        picks.append(candidates[0])
        left.remove(candidates[0])
        covered[best] += 1
    return picks, typical[picks]


def test_typical_per_cluster_against_the_plain_loop():
    rng = np.random.default_rng(1)
    cases = itertools.product([12, 30], [0, 6], [1, 5, 12], [1, 5], [4, 15], [False, True])
    for trial, (n, labeled_count, k, min_size, cluster_count, ties) in enumerate(cases):
        # Many clusters (some empty, some only labeled) make the picks revisit clusters as their counts grow;
        # points on an integer grid make typicalities tie, so the order among equals is checked too.
        draw = (
            (lambda shape: rng.integers(0, 3, size=shape).astype(float))
            if ties
            else (lambda shape: rng.normal(size=shape))
        )
        embeddings = draw((n, 3))
        labeled = draw((labeled_count, 3))
        clusters = rng.integers(0, cluster_count, n)
        labeled_clusters = rng.integers(0, cluster_count, labeled_count)
        got, scores = diversity.typical_per_cluster(embeddings, clusters, labeled_clusters, k, 4, min_size, labeled)
        expected, expected_scores = _picks_reference(embeddings, clusters, labeled_clusters, k, 4, min_size, labeled)
        assert got.tolist() == expected, trial
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    with pytest.raises(ValueError, match=r"Expected 1 <= k <= 3 \(the candidates\). Received: k=4"):
        diversity.typical_per_cluster(np.zeros((3, 2)), np.zeros(3, int), np.zeros(0, int), 4)


def _blobs(rng, centers, per_blob, spread, outliers=0):
    points = np.concatenate([center + spread * rng.normal(size=(per_blob, 2)) for center in centers])
    if outliers:
        points = np.concatenate([points, rng.uniform(-30, 30, size=(outliers, 2))])
    return points.astype(np.float32)


def _identity_embedding_model():
    """A model whose penultimate features are its 2-D input (so the embedding is the data itself)."""
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(2, name="hidden", use_bias=False, kernel_initializer="identity")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden))


def test_typiclust_covers_every_blob_with_a_typical_item_and_fills_what_labels_leave_uncovered():
    rng = np.random.default_rng(2)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    pool = _blobs(rng, centers, 60, 1.0, outliers=8)
    model = _identity_embedding_model()
    strategy = acquisition.get("typiclust")
    selection = strategy.select(model, pool, k=4, seed=0)
    picked = pool[selection.indices]
    nearest_center = np.argmin(np.linalg.norm(picked[:, None] - centers[None], axis=2), axis=1)
    assert sorted(nearest_center.tolist()) == [0, 1, 2, 3]  # one per blob
    assert np.all(np.linalg.norm(picked - centers[nearest_center], axis=1) < 1.0)  # typical: near the middle
    assert np.all(selection.indices < 240)  # never an outlier
    # Labeled items in blobs 0 and 1: the next picks go to blobs 2 and 3 first.
    labeled = _blobs(rng, centers[:2], 3, 1.0)
    selection = strategy.select(model, pool, k=2, seed=0, labeled=labeled)
    nearest = np.argmin(np.linalg.norm(pool[selection.indices][:, None] - centers[None], axis=2), axis=1)
    assert sorted(nearest.tolist()) == [2, 3]
    assert strategy.get_config() == {"layer": None, "neighbours": 20, "min_cluster_size": 5}


def test_typiclust_refuses_bad_options_and_never_picks_non_finite_items():
    with pytest.raises(ValueError, match="Expected neighbours to be an integer >= 1. Received: neighbours=0"):
        acquisition.get("typiclust", neighbours=0)
    with pytest.raises(ValueError, match="min_cluster_size"):
        acquisition.get("typiclust", min_cluster_size=1.5)
    pool = _blobs(np.random.default_rng(3), np.array([[0.0, 0.0], [9.0, 9.0]]), 10, 0.5)
    pool[[0, 11]] = np.nan
    with pytest.warns(RuntimeWarning, match="2 of 20"):
        selection = acquisition.get("typiclust").select(_identity_embedding_model(), pool, k=3, seed=0)
    assert selection.num_nan == 2 and not {0, 11} & set(selection.indices.tolist())
