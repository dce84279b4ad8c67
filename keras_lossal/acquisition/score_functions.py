"""Per-item scores as pure `keras.ops` functions of a classifier's outputs (higher = more informative)."""

from __future__ import annotations

from keras import ops

__all__ = [
    "class_probabilities",
    "entropy",
    "margin",
    "least_confidence",
    "mutual_information",
    "prediction_residuals",
]

_EPSILON = 1e-12


def class_probabilities(outputs, from_logits: bool):
    """Class probabilities `(batch, classes)` in float32 from a classifier's outputs.

    A single output column is read as a binary classifier (sigmoid) and expanded
    to two columns `[1 - p, p]`.

    Args:
        outputs: `(batch, classes)` logits or probabilities.
        from_logits: whether `outputs` are logits (softmax/sigmoid is applied).

    Example:

    >>> import numpy as np
    >>> ops.convert_to_numpy(class_probabilities(np.zeros((1, 2)), from_logits=True)).tolist()
    [[0.5, 0.5]]
    """
    outputs = ops.cast(outputs, "float32")
    if len(outputs.shape) != 2:
        raise ValueError(
            f"Expected classifier outputs of shape (batch, classes). Received: outputs with shape {outputs.shape}"
        )
    if outputs.shape[-1] == 1:
        positive = ops.sigmoid(outputs) if from_logits else outputs
        return ops.concatenate([1.0 - positive, positive], axis=-1)
    return ops.softmax(outputs, axis=-1) if from_logits else outputs


def entropy(probabilities):
    """Shannon entropy (nats) of each row of `probabilities`; `0 log 0 = 0`.

    Example:

    >>> import numpy as np
    >>> round(float(entropy(np.array([[0.5, 0.5]], "float32"))[0]), 4)
    0.6931
    """
    probabilities = ops.cast(probabilities, "float32")
    safe = ops.maximum(probabilities, _EPSILON)
    terms = ops.where(probabilities > 0, probabilities * ops.log(safe), ops.zeros_like(probabilities))
    return -ops.sum(terms, axis=-1)


def margin(probabilities):
    """Negative margin between the two most likely classes: `p_second - p_first`.

    Higher (closer to 0) means less sure; the most confident items score -1.

    Example:

    >>> import numpy as np
    >>> [round(float(v), 4) for v in margin(np.array([[0.7, 0.2, 0.1]], "float32"))]
    [-0.5]
    """
    probabilities = ops.cast(probabilities, "float32")
    top_two = ops.top_k(probabilities, k=2, sorted=True)[0]
    return top_two[:, 1] - top_two[:, 0]


def least_confidence(probabilities):
    """One minus the probability of the most likely class.

    Example:

    >>> import numpy as np
    >>> [round(float(v), 4) for v in least_confidence(np.array([[0.7, 0.2, 0.1]], "float32"))]
    [0.3]
    """
    return 1.0 - ops.max(ops.cast(probabilities, "float32"), axis=-1)


def mutual_information(sampled_probabilities):
    """BALD score: mutual information between prediction and weights.

    `H(mean_t p_t) - mean_t H(p_t)` over `T` stochastic (MC dropout) passes.

    Args:
        sampled_probabilities: `(T, batch, classes)` probabilities.

    Example:

    >>> import numpy as np
    >>> p = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], "float32")  # two confident, disagreeing passes
    >>> round(float(mutual_information(p)[0]), 4)
    0.6931
    """
    sampled_probabilities = ops.cast(sampled_probabilities, "float32")
    mean_entropy = ops.mean(entropy(sampled_probabilities), axis=0)
    return entropy(ops.mean(sampled_probabilities, axis=0)) - mean_entropy


def prediction_residuals(probabilities):
    """`p - onehot(argmax p)`: the factor of BADGE's gradient embedding that the class outputs give.

    The gradient of the cross-entropy with the predicted label with respect to
    the last Dense kernel is this residual times that layer's input.

    Example:

    >>> import numpy as np
    >>> [round(float(v), 4) for v in ops.convert_to_numpy(prediction_residuals(np.array([[0.7, 0.2, 0.1]], "float32")))[0]]
    [-0.3, 0.2, 0.1]
    """
    predicted = ops.one_hot(ops.argmax(probabilities, axis=-1), probabilities.shape[-1])
    return probabilities - predicted
