"""Acquisition: score an unlabeled pool and pick the items to label next.

`get(name, **options)` builds a strategy; `strategy.select(model, pool, k,
subset_size=None, seed=None, batch_size=512, verbose=0, labeled=None)` returns
a `Selection` with the picked pool positions (best first) and their scores.
`Strategy.select` is defined once and checks these arguments; a strategy
implements `pick` (or `score`, in a `ScoringStrategy`). `labeled` matters to the
diversity strategies only. The modules by role: pure functions from model
outputs to per-item scores (`score_functions`) and selectors (`ranking`,
`diversity`); the pool scorer (`pool_scorer`, over `pool` and the streaming
passes of `streaming`); the strategies (`baseline`, `uncertainty`,
`diversity_strategies`, `learning_loss`), registered in `strategies`.

Example:

>>> import numpy as np, keras_lossal as kl
>>> from keras_lossal import acquisition
>>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), width=4))
>>> pool = np.random.rand(50, 8, 8, 1).astype("float32")
>>> selection = acquisition.get("learning_loss").select(model, pool, k=5, subset_size=20, seed=0)
>>> len(selection), selection.num_scored
(5, 20)
"""

from keras_lossal.acquisition import diversity, ranking, score_functions
from keras_lossal.acquisition.pool import index_pool
from keras_lossal.acquisition.ranking import merge_top_k, rank_order, sample_subset
from keras_lossal.acquisition.strategies import (
    BALD,
    DEFAULT_BATCH_SIZE,
    STRATEGIES,
    Badge,
    BudgetSwitch,
    CoreSet,
    Entropy,
    LearningLoss,
    LearningLossBadge,
    LearningLossClusters,
    LearningLossKCenter,
    LeastConfidence,
    Margin,
    MCDropoutVariance,
    Random,
    ScoringStrategy,
    SelectionRequest,
    Strategy,
    TypiClust,
    get,
)
from keras_lossal.acquisition.streaming import Selection

__all__ = [
    "BALD",
    "DEFAULT_BATCH_SIZE",
    "STRATEGIES",
    "Badge",
    "BudgetSwitch",
    "CoreSet",
    "Entropy",
    "LearningLoss",
    "LearningLossBadge",
    "LearningLossClusters",
    "LearningLossKCenter",
    "LeastConfidence",
    "Margin",
    "MCDropoutVariance",
    "Random",
    "Selection",
    "ScoringStrategy",
    "SelectionRequest",
    "Strategy",
    "TypiClust",
    "diversity",
    "get",
    "index_pool",
    "merge_top_k",
    "rank_order",
    "sample_subset",
    "score_functions",
    "ranking",
]
