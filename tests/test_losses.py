import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_lossal import losses


def reference_ranking_loss(predicted, target, margin=1.0):
    predicted = np.asarray(predicted, np.float64)
    target = np.asarray(target, np.float64)
    half = len(predicted) // 2
    if half == 0:
        return 0.0
    total = 0.0
    for i in range(half):
        j = len(predicted) - 1 - i
        sign = 1.0 if target[i] > target[j] else -1.0
        total += max(0.0, -sign * (predicted[i] - predicted[j]) + margin)
    return total / half


@pytest.mark.parametrize(
    "predicted, target",
    [
        ([0.3, 2.0, -1.0, 0.5], [1.0, 0.2, 0.2, 3.0]),
        ([1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]),  # ties give A = -1
        ([0.1, 0.9, 2.5], [0.4, 9.0, 0.1]),  # odd: the middle sample is unpaired
        ([5.0, -5.0], [1.0, 0.0]),  # ordered far beyond the margin: zero loss
        ([-5.0, 5.0], [1.0, 0.0]),
    ],
)
def test_ranking_loss_matches_reference(predicted, target):
    got = float(losses.loss_prediction_loss(predicted, target, margin=1.0))
    assert got == pytest.approx(reference_ranking_loss(predicted, target), abs=1e-6)


def test_fixed_values():
    # pairs (0,3): target 1 < 3 -> A=-1: max(0, (0.3-0.5)+1)=0.8; (1,2): tie -> A=-1: max(0, (2+1)+1)=4
    assert float(losses.loss_prediction_loss([0.3, 2.0, -1.0, 0.5], [1.0, 0.2, 0.2, 3.0])) == pytest.approx(2.4)


@pytest.mark.parametrize("size", [0, 1])
def test_fewer_than_two_samples_give_zero(size):
    value = losses.loss_prediction_loss(np.ones(size, np.float32), np.ones(size, np.float32))
    assert float(value) == 0.0
    assert float(losses.loss_prediction_mse(np.ones(size), np.ones(size))) == 0.0
    assert losses.ranking_accuracy(np.ones(size), np.ones(size)).shape == (0,)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-10, 10), st.integers(0, 4)), min_size=0, max_size=17),
    st.floats(0.0, 3.0),
)
def test_ranking_loss_property(pairs, margin):
    predicted = np.array([p for p, _ in pairs], np.float32)
    target = np.array([t for _, t in pairs], np.float32)  # small integers: many ties
    got = float(losses.loss_prediction_loss(predicted, target, margin=margin))
    assert got == pytest.approx(reference_ranking_loss(predicted, target, margin), rel=1e-5, abs=1e-5)


def test_no_gradient_reaches_the_target():
    predicted = tf.Variable([0.0, 1.0, 2.0, 3.0])
    target = tf.Variable([3.0, 1.0, 0.0, 2.0])
    with tf.GradientTape(persistent=True) as tape:
        value = losses.loss_prediction_loss(predicted, target)
    assert tape.gradient(value, target) is None
    gradient = tape.gradient(value, predicted).numpy()
    # pair (0,3): target 3 > 2 -> A=+1, relu(-(0-3)+1) active: d/dp0=-1/2, d/dp3=+1/2; pair (1,2) likewise
    np.testing.assert_allclose(gradient, [-0.5, -0.5, 0.5, 0.5])


def test_ranking_accuracy_reference():
    predicted = np.array([0.9, 0.1, 0.5, 0.2, 0.3])
    target = np.array([2.0, 1.0, 7.0, 3.0, 0.5])
    # pairs (0,4): 2>0.5 wants p0>p4: 0.9>0.3 yes; (1,3): 1<3 wants p1<p3: 0.1<0.2 yes
    np.testing.assert_array_equal(losses.ranking_accuracy(predicted, target), [1.0, 1.0])
    np.testing.assert_array_equal(losses.ranking_accuracy(-predicted, target), [0.0, 0.0])


def test_mse_variant():
    np.testing.assert_allclose(float(losses.loss_prediction_mse([1.0, 3.0], [0.0, 1.0])), 2.5)


def test_per_sample_loss_any_rank():
    y_true = np.zeros((3, 4, 5, 1), np.float32)
    y_pred = np.arange(60, dtype=np.float32).reshape(3, 4, 5, 1) / 60
    got = losses.per_sample_loss(keras.losses.MeanSquaredError(), y_true, y_pred)
    np.testing.assert_allclose(got, (y_pred**2).reshape(3, -1).mean(1), rtol=1e-6)
    got = losses.per_sample_loss("mae", y_true, y_pred)
    np.testing.assert_allclose(got, y_pred.reshape(3, -1).mean(1), rtol=1e-6)
    got = losses.per_sample_loss(lambda t, p: tf.abs(p - t) * 2, y_true, y_pred)
    np.testing.assert_allclose(got, 2 * y_pred.reshape(3, -1).mean(1), rtol=1e-6)


def test_per_sample_loss_rejects_scalar_loss():
    with pytest.raises(ValueError, match="one value per sample"):
        losses.per_sample_loss(lambda t, p: tf.reduce_mean(p), np.zeros((2, 1)), np.zeros((2, 1)))


def test_task_loss_structure_errors():
    with pytest.raises(ValueError, match="needs a task loss"):
        losses.TaskLoss(None, None, ["out"])
    with pytest.raises(ValueError, match="unknown keys: \\['nope'\\]"):
        losses.TaskLoss({"nope": "mse"}, None, ["a", "b"])
    with pytest.raises(ValueError, match="one entry per backbone output"):
        losses.TaskLoss(["mse"], None, ["a", "b"])
    task = losses.TaskLoss({"a": "mse", "b": "mae"}, {"b": 3.0}, ["a", "b"])
    y_true, y_pred = [np.zeros((2, 1)), np.zeros((2, 1))], [np.ones((2, 1)), np.full((2, 1), 2.0)]
    unweighted, weighted = task(y_true, y_pred)
    np.testing.assert_allclose(unweighted, [1.0 + 3 * 2.0] * 2)
    np.testing.assert_allclose(weighted, unweighted)
    # Sample weights apply per output to the weighted sum only; the ranking target stays unweighted.
    unweighted, weighted = task(y_true, y_pred, [np.array([1.0, 0.0]), np.array([0.5, 2.0])])
    np.testing.assert_allclose(unweighted, [7.0, 7.0])
    np.testing.assert_allclose(weighted, [1.0 + 3 * 2.0 * 0.5, 0.0 + 3 * 2.0 * 2.0])


def _all_pairs_reference(predicted, target, margin):
    total, count = 0.0, 0
    for i in range(len(predicted)):
        for j in range(i + 1, len(predicted)):
            sign = 1.0 if target[i] > target[j] else -1.0
            total += max(0.0, -sign * (predicted[i] - predicted[j]) + margin)
            count += 1
    return total / count if count else 0.0


@pytest.mark.parametrize("size", [0, 1, 2, 5, 16])
def test_all_pairs_ranking_loss_matches_numpy(size):
    rng = np.random.default_rng(size)
    predicted = rng.normal(size=size).astype("float32")
    target = rng.normal(size=size).astype("float32")
    if size > 3:
        target[3] = target[1]  # a tie gives A = -1
    got = float(losses.loss_prediction_loss(predicted, target, margin=0.7, pairs="all"))
    assert got == pytest.approx(_all_pairs_reference(predicted, target, 0.7), rel=1e-5, abs=1e-6)


def test_all_pairs_gradient_reaches_every_sample_and_bad_pairs_are_refused():
    import tensorflow as tf

    predicted = tf.Variable(np.array([0.3, -0.2, 0.1, 0.25, -0.4], "float32"))
    target = np.array([2.0, 0.0, 4.0, 1.0, 3.0])
    gradients = {}
    for pairs in ("disjoint", "all"):
        with tf.GradientTape() as tape:
            value = losses.loss_prediction_loss(predicted, target, pairs=pairs)
        gradients[pairs] = tape.gradient(value, predicted).numpy()
    assert gradients["disjoint"][2] == 0  # the disjoint pairing leaves the middle sample of 5 out
    # The analytic gradient of the all-pairs mean: each active pair pushes its two samples apart by 1/10.
    expected = np.zeros(5)
    for i in range(5):
        for j in range(i + 1, 5):
            sign = 1.0 if target[i] > target[j] else -1.0
            if -sign * (predicted.numpy()[i] - predicted.numpy()[j]) + 1.0 > 0:
                expected[i] -= sign / 10
                expected[j] += sign / 10
    np.testing.assert_allclose(gradients["all"], expected, atol=1e-6)
    assert gradients["all"][2] != 0
    with pytest.raises(ValueError, match="pairs in"):
        losses.loss_prediction_loss(predicted, np.arange(5.0), pairs="some")
