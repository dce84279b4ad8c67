"""Uncertainty strategies: score each item by how unsure the classifier is, keep the top `k`.

The scores are the pure functions of `acquisition.score_functions`; a strategy here
only says which one, on which outputs (one pass, or several MC-dropout passes).
"""

from __future__ import annotations

from keras import ops

from keras_lossal.acquisition import models, score_functions
from keras_lossal.acquisition.base import ScoringStrategy, SelectionRequest, check_from_logits, resolve_from_logits
from keras_lossal.acquisition.streaming import Selection, mask_non_finite
from keras_lossal.contracts import check_integer

__all__ = ["BALD", "ClassProbabilityStrategy", "Entropy", "LeastConfidence", "MCDropoutVariance", "Margin"]


class ClassProbabilityStrategy(ScoringStrategy):
    """Scores items by a function of their class probabilities, `score_probabilities`.

    Args:
        from_logits: whether the classifier outputs logits. `None` decides from
            the model: outputs of a final softmax/sigmoid layer are
            probabilities, anything else (including subclassed models) logits.
    """

    def __init__(self, from_logits: bool | None = None):
        self.from_logits = check_from_logits(from_logits)

    def get_config(self) -> dict:
        return {"from_logits": self.from_logits}

    def probabilities(self, model, features):
        from_logits = resolve_from_logits(self.from_logits, model)
        return score_functions.class_probabilities(models.classifier_outputs(model, features), from_logits)

    def score(self, model, features):
        return self.score_probabilities(self.probabilities(model, features))

    def score_probabilities(self, probabilities):
        """`(batch,)` scores of `(batch, classes)` probabilities; a subclass names one of `score_functions`."""
        raise NotImplementedError


class Entropy(ClassProbabilityStrategy):
    """Highest predictive entropy first.

    Args:
        from_logits: see `ClassProbabilityStrategy`.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> Entropy().select(classifier, np.random.rand(10, 4), k=2).indices.shape
    (2,)
    """

    name = "entropy"
    score_probabilities = staticmethod(score_functions.entropy)


class Margin(ClassProbabilityStrategy):
    """Smallest margin between the top two classes first (score = `p_2nd - p_1st`).

    Args:
        from_logits: see `ClassProbabilityStrategy`.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    >>> bool(Margin().select(classifier, np.random.rand(10, 4), k=2).scores[0] <= 0)
    True
    """

    name = "margin"
    score_probabilities = staticmethod(score_functions.margin)


class LeastConfidence(ClassProbabilityStrategy):
    """Lowest top-class probability first (score = `1 - max p`).

    Args:
        from_logits: see `ClassProbabilityStrategy`.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> LeastConfidence(from_logits=True).select(classifier, np.random.rand(10, 4), k=2).indices.shape
    (2,)
    """

    name = "least_confidence"
    score_probabilities = staticmethod(score_functions.least_confidence)


class _MonteCarloDropout(ScoringStrategy):
    """Base for strategies that score `num_samples` stochastic passes of a dropout-on twin of the model.

    `score(twin, features)` receives the twin (`models.mc_dropout_model`), built
    afresh and seeded in every `select`.
    """

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        twin = models.mc_dropout_model(model, request.seed)
        scorer = self._scorer(model, request)
        # A fresh twin per call, so a fresh compiled function (traced once for this call), never cached.
        function = scorer.fresh_step(lambda features: mask_non_finite(features, self.score(twin, features)))
        return scorer.top_k(function, pool)


class BALD(_MonteCarloDropout, ClassProbabilityStrategy):
    """BALD with MC dropout: highest mutual information between prediction and weights first.

    Runs `num_samples` stochastic passes per batch with only the dropout layers
    active (batch norm stays in inference mode). The model needs dropout.

    Args:
        num_samples: T, the number of MC-dropout passes.
        from_logits: see `ClassProbabilityStrategy`.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(3)]
    ... )
    >>> BALD(num_samples=5).select(classifier, np.random.rand(10, 4), k=2, seed=0).indices.shape
    (2,)
    """

    name = "bald"

    def __init__(self, num_samples: int = 20, from_logits: bool | None = None):
        super().__init__(from_logits)
        self.num_samples = check_integer("num_samples", num_samples)

    def get_config(self) -> dict:
        return {"num_samples": self.num_samples, **super().get_config()}

    def score(self, model, features):
        """Mutual information over `num_samples` passes of `model`, the MC-dropout twin."""
        samples = [self.probabilities(model, features) for _ in range(self.num_samples)]
        return score_functions.mutual_information(ops.stack(samples))


class MCDropoutVariance(_MonteCarloDropout):
    """Highest predictive variance under MC dropout first: uncertainty for any task, regression included.

    Runs `num_samples` stochastic passes per batch with only the dropout layers
    active (batch norm stays in inference mode) and scores each item by the
    variance of its outputs across passes, averaged over output values (a
    per-pixel output gives one number per item). The model needs dropout.

    Args:
        num_samples: T, the number of MC-dropout passes.

    Example:

    >>> import numpy as np, keras
    >>> regressor = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(1)]
    ... )
    >>> MCDropoutVariance(num_samples=5).select(regressor, np.random.rand(10, 4), k=2, seed=0).indices.shape
    (2,)
    """

    name = "mc_dropout_variance"

    def __init__(self, num_samples: int = 20):
        self.num_samples = check_integer("num_samples", num_samples)

    def get_config(self) -> dict:
        return {"num_samples": self.num_samples}

    def score(self, model, features):
        """Output variance over `num_samples` passes of `model`, the MC-dropout twin."""
        samples = [models.flatten_batch(models.classifier_outputs(model, features)) for _ in range(self.num_samples)]
        return ops.mean(ops.var(ops.stack(samples), axis=0), axis=1)
