"""Acquisition strategies by name: the registry `get` builds from.

Each strategy lives with its kind: `baseline` (random), `uncertainty` (entropy,
margin, least confidence, BALD, MC-dropout variance), `diversity_strategies`
(core-set, BADGE, TypiClust) and `learning_loss` (the paper's top-K and its hard-and-diverse
variants); the contract is `base.Strategy`, the scoring machinery
`pool_scorer.PoolScorer`. The names stay importable from here. The composite `BudgetSwitch`
(one strategy while labels are scarce, another after) lives here, beside `get`, which builds its two.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_lossal.acquisition import budget
from keras_lossal.acquisition.base import DEFAULT_BATCH_SIZE, ScoringStrategy, SelectionRequest, Strategy, check_factor
from keras_lossal.acquisition.baseline import Random
from keras_lossal.acquisition.diversity import loss_rank_weights  # noqa: F401 - public here since learning_loss_badge
from keras_lossal.acquisition.diversity_strategies import Badge, CoreSet, TypiClust
from keras_lossal.acquisition.learning_loss import (
    LearningLoss,
    LearningLossBadge,
    LearningLossClusters,
    LearningLossKCenter,
)
from keras_lossal.acquisition.pool import can_subsample
from keras_lossal.acquisition.pool_scorer import compiled_steps  # noqa: F401 - the cache's home is pool_scorer
from keras_lossal.acquisition.streaming import Selection
from keras_lossal.acquisition.uncertainty import BALD, Entropy, LeastConfidence, Margin, MCDropoutVariance
from keras_lossal.contracts import DEFAULT_CANDIDATES_FACTOR, DEFAULT_MIN_CANDIDATES, check_integer

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
    "BudgetSwitch",
    "LearningLossBadge",
    "LearningLossClusters",
    "LearningLossKCenter",
    "MCDropoutVariance",
    "STRATEGIES",
    "get",
]


class BudgetSwitch(Strategy):
    """Picks with `low` while fewer than `labels_per_class` labels per class are labeled, then with `high`.

    The labeled items come from `select(..., labeled=...)` (the loop passes them); without them the
    budget is 0 labels and `low` picks. The `Selection`'s `strategy` names the switch and the strategy
    that picked (`"budget_switch:typiclust"`).

    Bounded on large pools: called without `subset_size`, a pool of known size (an array, a Dataset, a
    list of batches) larger than `max(sample_factor * k, min_sample)` items is first sampled down to
    that many seeded random items, as the label-efficiency benchmark samples M items per cycle. Both
    default strategies then work on the sample: BADGE as the benchmark's protocol, TypiClust as at
    any budget. Memory and time stop growing with the pool. A generator (its size unknown) is used whole.

    Args:
        low: the strategy (a name or a `Strategy`) while labels are scarce; default TypiClust.
        high: the strategy from `labels_per_class` on; default BADGE.
        labels_per_class: the switch point, in labeled items per class of the model.
        num_classes: the classes, when the model's output does not tell (default: read from it).
        sample_factor: the sample as a multiple of `k` (>= 1), or `None`: never sample.
        min_sample: at least this many items (pools up to this size are used whole).

    Example:

    >>> import numpy as np, keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="hidden"), keras.layers.Dense(2)])
    >>> switch = BudgetSwitch("random", "entropy", labels_per_class=3)
    >>> pool = np.random.rand(20, 4)
    >>> switch.select(model, pool, k=2, labeled=pool[:5]).strategy, switch.select(model, pool, k=2, labeled=pool[:6]).strategy
    ('budget_switch:random', 'budget_switch:entropy')
    """

    name = "budget_switch"

    def __init__(
        self,
        low: str | Strategy = "typiclust",
        high: str | Strategy = "badge",
        labels_per_class: int = budget.DEFAULT_LABELS_PER_CLASS,
        num_classes: int | None = None,
        sample_factor: float | None = DEFAULT_CANDIDATES_FACTOR,
        min_sample: int = DEFAULT_MIN_CANDIDATES,
    ):
        self.low, self.high = get(low), get(high)
        if isinstance(self.low, BudgetSwitch) or isinstance(self.high, BudgetSwitch):
            raise ValueError("Expected low and high to be strategies other than a budget switch")
        self.labels_per_class = check_integer("labels_per_class", labels_per_class, minimum=0)
        self.num_classes = check_integer("num_classes", num_classes, optional=True)
        self.sample_factor = None if sample_factor is None else check_factor("sample_factor", sample_factor)
        self.min_sample = check_integer("min_sample", min_sample)

    def get_config(self) -> dict:
        return {
            "low": self.low.name,
            "high": self.high.name,
            "labels_per_class": self.labels_per_class,
            "num_classes": self.num_classes,
            "sample_factor": self.sample_factor,
            "min_sample": self.min_sample,
        }

    def sample_size(self, k: int) -> int | None:
        """How many items of a large pool are sampled for `k` picks (`None`: every item)."""
        if self.sample_factor is None:
            return None
        return max(int(np.ceil(self.sample_factor * k)), self.min_sample)

    def chosen(self, model, labeled) -> Strategy:
        """The strategy that picks with these labeled items: `low` below the switch point, else `high`."""
        classes = self.num_classes or budget.model_classes(model)
        scarce = budget.labels_are_scarce(budget.labeled_count(labeled), classes, self.labels_per_class)
        return self.low if scarce else self.high

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        strategy = self.chosen(model, request.labeled)
        sample = self.sample_size(request.k)
        if request.subset_size is None and sample is not None and can_subsample(pool):
            request = dataclasses.replace(request, subset_size=sample)  # the whole pool when it is not larger
        selection = strategy.pick(model, pool, request)
        return dataclasses.replace(selection, strategy=f"{self.name}:{strategy.name}")


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
        BudgetSwitch,
    )
}


def get(name, **options) -> Strategy:
    """Builds an acquisition strategy by name.

    Args:
        name: one of `learning_loss`, `random`, `entropy`, `margin`,
            `least_confidence`, `coreset`, `bald`, `badge`,
            `learning_loss_clusters`, `learning_loss_kcenter`,
            `learning_loss_badge`, `mc_dropout_variance`, `typiclust`,
            `budget_switch`; or a `Strategy` instance, returned as is.
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
