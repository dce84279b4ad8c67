"""Acquisition strategies by name: the registry `get` builds from.

Each strategy lives with its kind: `baseline` (random), `uncertainty` (entropy,
margin, least confidence, BALD, MC-dropout variance), `diversity_strategies`
(core-set, BADGE, TypiClust) and `learning_loss` (the paper's top-K and its hard-and-diverse
variants); the contract is `base.Strategy`, the scoring machinery
`pool_scorer.PoolScorer`. The names stay importable from here.
"""

from __future__ import annotations

from keras_lossal.acquisition.base import DEFAULT_BATCH_SIZE, ScoringStrategy, SelectionRequest, Strategy
from keras_lossal.acquisition.baseline import Random
from keras_lossal.acquisition.diversity import loss_rank_weights  # noqa: F401 - public here since learning_loss_badge
from keras_lossal.acquisition.diversity_strategies import Badge, CoreSet, TypiClust
from keras_lossal.acquisition.learning_loss import (
    LearningLoss,
    LearningLossBadge,
    LearningLossClusters,
    LearningLossKCenter,
)
from keras_lossal.acquisition.pool_scorer import compiled_steps  # noqa: F401 - the cache's home is pool_scorer
from keras_lossal.acquisition.uncertainty import BALD, Entropy, LeastConfidence, Margin, MCDropoutVariance

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Strategy",
    "ScoringStrategy",
    "SelectionRequest",
    "LearningLoss",
    "Random",
    "Entropy",
    "Margin",
    "LeastConfidence",
    "BALD",
    "CoreSet",
    "Badge",
    "TypiClust",
    "LearningLossBadge",
    "LearningLossClusters",
    "LearningLossKCenter",
    "MCDropoutVariance",
    "STRATEGIES",
    "get",
]

STRATEGIES = {
    strategy.name: strategy
    for strategy in (
        LearningLoss,
        Random,
        Entropy,
        Margin,
        LeastConfidence,
        CoreSet,
        BALD,
        Badge,
        LearningLossClusters,
        LearningLossKCenter,
        LearningLossBadge,
        MCDropoutVariance,
        TypiClust,
    )
}


def get(name, **options) -> Strategy:
    """Builds an acquisition strategy by name.

    Args:
        name: one of `learning_loss`, `random`, `entropy`, `margin`,
            `least_confidence`, `coreset`, `bald`, `badge`,
            `learning_loss_clusters`, `learning_loss_kcenter`,
            `learning_loss_badge`, `mc_dropout_variance`; or a
            `Strategy` instance, returned as is.
        **options: the strategy's constructor arguments (e.g. `num_samples`
            for `bald`, `from_logits` for uncertainty strategies).

    Example:

    >>> get("bald", num_samples=10)
    BALD(num_samples=10, from_logits=None)
    """
    if isinstance(name, Strategy):
        if options:
            raise ValueError(f"Expected no options with a Strategy instance. Received: {sorted(options)}")
        return name
    if name not in STRATEGIES:
        raise ValueError(f"Expected a strategy name in {sorted(STRATEGIES)}. Received: name={name!r}")
    try:
        return STRATEGIES[name](**options)
    except TypeError as error:
        raise ValueError(f"Invalid options for strategy '{name}': {error}. Received: {options}") from None
