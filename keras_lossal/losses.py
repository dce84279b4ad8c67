"""Loss-prediction objectives and per-sample task losses.

The paper's loss-prediction loss compares the predicted losses of sample pairs
instead of regressing raw loss values, because the scale of the task loss drifts
while the target network trains. Everything here is a small pure function of
tensors so it can be checked against NumPy directly.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = [
    "loss_prediction_loss",
    "loss_prediction_mse",
    "ranking_accuracy",
    "pair_up",
    "PAIRINGS",
    "per_sample_loss",
    "TaskLoss",
]


def pair_up(values):
    """Splits a batch into the reference code's disjoint pairs (i, B-1-i).

    Returns `(first, second)`, each of shape `(B // 2,)`; for an odd batch the
    middle sample is left out.
    """
    values = ops.reshape(values, (-1,))
    half = ops.shape(values)[0] // 2
    return values[:half], ops.flip(values, axis=0)[:half]


PAIRINGS = ("disjoint", "all")


def loss_prediction_loss(predicted, target, margin: float = 1.0, pairs: str = "disjoint"):
    """The paper's pairwise margin ranking loss.

    For each pair (i, j): `max(0, -A * (predicted_i - predicted_j) + margin)`
    with `A = +1` if `target_i > target_j` else `-1` (ties give -1). The target is
    treated as a constant. With `pairs="disjoint"` (the paper) the pairs are
    (i, B-1-i) and the result is the mean over the B/2 pairs; with
    `pairs="all"` it is the mean over all B(B-1)/2 pairs i < j (denser, lower
    variance, O(B^2) memory). A batch of fewer than 2 samples gives 0.

    Args:
        predicted: predicted losses, shape `(B,)` (or `(B, 1)`).
        target: true per-sample losses, same shape.
        margin: the margin xi.
        pairs: `"disjoint"` or `"all"`.

    Example:

    >>> float(loss_prediction_loss([3.0, 0.0], [1.0, 0.5]))
    0.0
    >>> round(float(loss_prediction_loss([0.0, 1.0, 2.0], [2.0, 1.0, 0.0], pairs="all")), 4)
    2.3333
    """
    if pairs not in PAIRINGS:
        raise ValueError(f"Expected pairs in {PAIRINGS}. Received: pairs={pairs!r}")
    predicted = ops.reshape(ops.cast(ops.convert_to_tensor(predicted), "float32"), (-1,))
    target = ops.stop_gradient(ops.reshape(ops.cast(ops.convert_to_tensor(target), "float32"), (-1,)))
    if pairs == "all":
        sign = ops.where(target[:, None] > target[None, :], 1.0, -1.0)
        per_pair = ops.relu(-sign * (predicted[:, None] - predicted[None, :]) + margin)
        upper = ops.cast(ops.triu(ops.ones_like(per_pair), k=1), "float32")
        return ops.divide_no_nan(ops.sum(per_pair * upper), ops.sum(upper))
    predicted_i, predicted_j = pair_up(predicted)
    target_i, target_j = pair_up(target)
    sign = ops.where(target_i > target_j, 1.0, -1.0)
    per_pair = ops.relu(-sign * (predicted_i - predicted_j) + margin)
    count = ops.cast(ops.shape(per_pair)[0], "float32")
    return ops.divide_no_nan(ops.sum(per_pair), count)


def loss_prediction_mse(predicted, target):
    """Mean squared error between predicted and true losses (the paper's ablation).

    Returns 0 for an empty batch.
    """
    predicted = ops.reshape(ops.cast(ops.convert_to_tensor(predicted), "float32"), (-1,))
    target = ops.reshape(ops.cast(ops.convert_to_tensor(target), "float32"), (-1,))
    target = ops.stop_gradient(target)
    count = ops.cast(ops.shape(predicted)[0], "float32")
    return ops.divide_no_nan(ops.sum(ops.square(predicted - target)), count)


def ranking_accuracy(predicted, target):
    """Per-pair correctness of the predicted-loss order, shape `(B // 2,)`.

    A pair counts as correct when `predicted_i - predicted_j` has the sign the
    ranking loss asks for (`+` if `target_i > target_j`, else `-`). Its mean is
    the `ranking_accuracy` that `LossLearningModel` logs.
    """
    predicted = ops.cast(ops.convert_to_tensor(predicted), "float32")
    target = ops.cast(ops.convert_to_tensor(target), "float32")
    predicted_i, predicted_j = pair_up(predicted)
    target_i, target_j = pair_up(target)
    sign = ops.where(target_i > target_j, 1.0, -1.0)
    return ops.cast(sign * (predicted_i - predicted_j) > 0, "float32")


OBJECTIVES = ("ranking", "mse")


def per_sample_loss(loss: Any, y_true, y_pred):
    """Evaluates one Keras loss per sample: a tensor of shape `(B,)`, float32.

    `loss` is anything `keras.losses.get` accepts or a callable
    `fn(y_true, y_pred)`. Losses of any output rank are averaged over their
    non-batch axes (a per-pixel heatmap loss becomes one number per image).
    """
    y_pred = ops.cast(y_pred, "float32")
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        values = loss.call(ops.convert_to_tensor(y_true), y_pred)
    else:
        values = loss(y_true, y_pred)
    values = ops.cast(values, "float32")
    if len(values.shape) == 0:
        raise ValueError(
            "Expected a task loss that returns one value per sample (or per "
            f"element); received a scalar from loss={loss!r}. Pass a Keras loss "
            "or a function without reduction."
        )
    if len(values.shape) > 1:
        values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
    return values


class TaskLoss:
    """The compiled task loss, resolved against the backbone's output structure.

    Holds one loss per backbone output and its weight, and evaluates the
    weighted sum per sample (the ranking target) for a batch.

    Args:
        loss: what was passed to `compile(loss=...)`: one loss for every
            output, a list in output order, or a dict keyed by output name.
        loss_weights: `None`, a list, or a dict keyed by output name.
        output_names: the backbone's output names, in output order.
    """

    def __init__(self, loss: Any, loss_weights: Any, output_names: list[str]):
        self.output_names = list(output_names)
        self.losses = self._per_output(loss, "loss", required=True)
        self.losses = [keras.losses.get(item) if item is not None else None for item in self.losses]
        weights = self._per_output(loss_weights, "loss_weights", required=False)
        self.weights = [1.0 if w is None else float(w) for w in weights]

    def _per_output(self, value, argument: str, required: bool) -> list:
        names = self.output_names
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(names))
            if unknown:
                raise ValueError(
                    f"Expected `{argument}` keys to be backbone output names {names}. Received unknown keys: {unknown}"
                )
            return [value.get(name) for name in names]
        if isinstance(value, (list, tuple)):
            if len(value) != len(names):
                raise ValueError(
                    f"Expected `{argument}` to have one entry per backbone output "
                    f"({len(names)}: {names}). Received {len(value)} entries: {value!r}"
                )
            return list(value)
        if value is None and required:
            raise ValueError(
                "LossLearningModel needs a task loss: pass `loss=` to `compile()` "
                "(any Keras loss or a callable `fn(y_true, y_pred)`)."
            )
        return [value] * len(names)

    def __call__(self, y_true_list: list, y_pred_list: list, sample_weights: list | None = None):
        """Per-sample losses `(unweighted, weighted)`, each of shape `(B,)`.

        The unweighted sum (loss weights only) is the ranking target; the weighted
        one also applies each output's sample weight (`sample_weights`, one entry
        per output, `None` for none) and is what the task term averages.
        """
        sample_weights = sample_weights or [None] * len(self.output_names)
        total = weighted_total = None
        for loss_fn, weight, y_true, y_pred, sample_weight in zip(
            self.losses, self.weights, y_true_list, y_pred_list, sample_weights
        ):
            if loss_fn is None or y_true is None:
                continue
            values = per_sample_loss(loss_fn, y_true, y_pred) * weight
            weighted = values if sample_weight is None else values * _per_sample(sample_weight)
            total = values if total is None else total + values
            weighted_total = weighted if weighted_total is None else weighted_total + weighted
        if total is None:
            raise ValueError(
                f"No task loss could be computed: no output of {self.output_names} has both a loss and a target."
            )
        return total, weighted_total


def _per_sample(sample_weight):
    """A sample weight of any rank as one float32 weight per sample (averaged over non-batch axes)."""
    weight = ops.cast(sample_weight, "float32")
    if len(weight.shape) > 1:
        weight = ops.mean(weight, axis=tuple(range(1, len(weight.shape))))
    return weight
