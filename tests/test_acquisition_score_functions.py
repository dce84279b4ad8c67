"""Uncertainty scores and diversity selection against NumPy references."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_lossal.acquisition import diversity, score_functions


def random_probabilities(n=50, classes=5, seed=0):
    logits = np.random.default_rng(seed).normal(size=(n, classes)).astype(np.float32) * 2
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, exp / exp.sum(axis=1, keepdims=True)


def numpy_entropy(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def test_class_probabilities_softmax_and_identity():
    logits, probabilities = random_probabilities()
    np.testing.assert_allclose(
        ops.convert_to_numpy(score_functions.class_probabilities(logits, True)), probabilities, rtol=1e-5
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(score_functions.class_probabilities(probabilities, False)), probabilities
    )


def test_class_probabilities_binary_column():
    logits = np.array([[0.0], [2.0]], np.float32)
    result = ops.convert_to_numpy(score_functions.class_probabilities(logits, True))
    positive = 1 / (1 + np.exp(-logits[:, 0]))
    np.testing.assert_allclose(result, np.stack([1 - positive, positive], axis=1), rtol=1e-6)


def test_class_probabilities_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        score_functions.class_probabilities(np.zeros((2, 3, 4)), True)


def test_entropy_matches_numpy_including_zeros():
    _, p = random_probabilities()
    p[0] = [1, 0, 0, 0, 0]
    p[1] = [0.5, 0.5, 0, 0, 0]
    result = ops.convert_to_numpy(score_functions.entropy(p))
    np.testing.assert_allclose(result, numpy_entropy(p), rtol=1e-5, atol=1e-6)
    assert result[0] == 0.0 and np.isclose(result[1], np.log(2))


def test_margin_matches_numpy():
    _, p = random_probabilities()
    top = np.sort(p, axis=1)[:, ::-1]
    np.testing.assert_allclose(ops.convert_to_numpy(score_functions.margin(p)), top[:, 1] - top[:, 0], rtol=1e-6)


def test_least_confidence_matches_numpy():
    _, p = random_probabilities()
    np.testing.assert_allclose(ops.convert_to_numpy(score_functions.least_confidence(p)), 1 - p.max(axis=1), rtol=1e-6)


def test_mutual_information_matches_numpy():
    samples = np.stack([random_probabilities(seed=seed)[1] for seed in range(6)])
    expected = numpy_entropy(samples.mean(axis=0)) - numpy_entropy(samples).mean(axis=0)
    result = ops.convert_to_numpy(score_functions.mutual_information(samples))
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-6)
    assert np.all(result >= -1e-6)
    # Identical passes carry no model uncertainty.
    np.testing.assert_allclose(
        ops.convert_to_numpy(score_functions.mutual_information(samples[:1].repeat(4, 0))), 0, atol=1e-6
    )


def test_scores_are_float32_for_low_precision_input():
    _, p = random_probabilities()
    for fn in (score_functions.entropy, score_functions.margin, score_functions.least_confidence):
        assert keras.backend.standardize_dtype(fn(ops.cast(p, "bfloat16")).dtype) == "float32"


# ------------------------------------------------------------------ diversity
def brute_force_farthest_first(points, k, first=None, labeled=None):
    """Farthest-first traversal from the full pairwise distance matrix (the N x N reference)."""
    distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    chosen = []
    if labeled is not None:
        nearest = np.sqrt(((points[:, None, :] - labeled[None, :, :]) ** 2).sum(-1)).min(axis=1)
    else:
        chosen = [first]
        nearest = distances[first].copy()
    while len(chosen) < k:
        nearest_masked = np.where(np.isin(np.arange(len(points)), chosen), -1, nearest)
        pick = int(np.argmax(nearest_masked))
        chosen.append(pick)
        nearest = np.minimum(nearest, distances[pick])
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_greedy_matches_brute_force(seed):
    points = np.random.default_rng(seed).normal(size=(80, 2)).astype(np.float32)
    chosen, distances = diversity.k_center_greedy(points, 12, first_index=5)
    assert chosen.tolist() == brute_force_farthest_first(points, 12, first=5)
    assert distances[0] == np.inf and np.all(np.diff(distances[1:]) <= 1e-6)  # farthest-first: non-increasing


def test_k_center_greedy_with_labeled_matches_brute_force():
    rng = np.random.default_rng(3)
    points, labeled = rng.normal(size=(60, 2)).astype(np.float32), rng.normal(size=(7, 2)).astype(np.float32)
    initial = diversity.squared_distances_to_set(points, labeled, block_size=3)
    np.testing.assert_allclose(initial, ((points[:, None] - labeled[None]) ** 2).sum(-1).min(1), rtol=1e-4, atol=1e-5)
    chosen, _ = diversity.k_center_greedy(points, 10, initial)
    assert chosen.tolist() == brute_force_farthest_first(points, 10, labeled=labeled)


def test_k_center_greedy_distinct_with_duplicates():
    points = np.zeros((6, 2), np.float32)
    points[5] = 1.0
    chosen, _ = diversity.k_center_greedy(points, 6)
    assert sorted(chosen.tolist()) == list(range(6))


def test_kmeans_plus_plus_factorized_distances_and_validity():
    rng = np.random.default_rng(0)
    residuals, features = rng.normal(size=(40, 3)), rng.normal(size=(40, 4))
    chosen, distances = diversity.kmeans_plus_plus_gradients(residuals, features, 15, seed=1)
    assert len(set(chosen.tolist())) == 15 and chosen.min() >= 0 and chosen.max() < 40
    gradients = (residuals[:, :, None] * features[:, None, :]).reshape(40, -1)
    assert chosen[0] == np.argmax(np.linalg.norm(gradients, axis=1))  # BADGE starts from the largest gradient
    for step in range(1, 15):
        to_earlier = np.linalg.norm(gradients[chosen[step]] - gradients[chosen[:step]], axis=1).min()
        np.testing.assert_allclose(distances[step], to_earlier, rtol=1e-3, atol=1e-4)
    again, _ = diversity.kmeans_plus_plus_gradients(residuals, features, 15, seed=1)
    np.testing.assert_array_equal(chosen, again)


def test_kmeans_plus_plus_all_duplicates_still_distinct():
    chosen, _ = diversity.kmeans_plus_plus_gradients(np.ones((5, 2)), np.ones((5, 3)), 5, seed=0)
    assert sorted(chosen.tolist()) == list(range(5))


def test_mc_dropout_variance_ranks_like_the_analytic_variance():
    # Dropout(p) then a fixed linear map: Var[output] = p / (1 - p) * sum_j w_j^2 x_j^2, known exactly.
    import keras

    from keras_lossal import acquisition

    p = 0.5
    weights = np.array([[1.0], [0.5], [2.0], [0.25]], "float32")
    inputs = keras.Input((4,))
    dropped = keras.layers.Dropout(p, name="dropout")(inputs)
    dense = keras.layers.Dense(1, use_bias=False, name="out")
    model = keras.Model(inputs, dense(dropped))
    dense.set_weights([weights])
    x = np.random.default_rng(0).uniform(0, 3, size=(60, 4)).astype("float32")
    analytic = p / (1 - p) * (np.square(x) @ np.square(weights[:, 0]))
    strategy = acquisition.get("mc_dropout_variance", num_samples=400)
    selection = strategy.select(model, x, k=60, seed=0, batch_size=32)
    estimated = np.empty(60)
    estimated[selection.indices] = selection.scores
    rank = lambda values: np.argsort(np.argsort(values))  # noqa: E731
    assert np.corrcoef(rank(estimated), rank(analytic))[0, 1] > 0.95
    np.testing.assert_allclose(estimated.mean(), analytic.mean(), rtol=0.1)
    # No dropout noise, no variance; no dropout layer, a clear error.
    quiet = keras.Model(inputs, dense(keras.layers.Dropout(0.0)(inputs)))
    assert np.all(acquisition.get("mc_dropout_variance").select(quiet, x, k=5, seed=0).scores < 1e-9)
    with pytest.raises(ValueError, match="[Dd]ropout"):
        acquisition.get("mc_dropout_variance").select(keras.Model(inputs, dense(inputs)), x, k=5, seed=0)
