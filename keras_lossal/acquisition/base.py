"""The strategy contract: `Strategy.select`, defined once, and the `pick` every strategy implements.

`Strategy.select(model, pool, k, subset_size=None, seed=None, batch_size=512,
verbose=0, labeled=None)` checks its arguments once, into a `SelectionRequest`,
and hands it to the strategy's `pick(model, pool, request)`. A strategy that
scores items one by one subclasses `ScoringStrategy` and implements
`score(model, features)`; one that picks a set jointly (core-set, BADGE)
implements `pick`. A strategy keeps no per-call state on the instance (one
instance may serve several loops).
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from typing import Any

import numpy as np

from keras_lossal.acquisition import models
from keras_lossal.acquisition.pool_scorer import PoolScorer, cached_step
from keras_lossal.acquisition.streaming import BatchFunction, Selection, mask_non_finite
from keras_lossal.contracts import check_integer

__all__ = ["DEFAULT_BATCH_SIZE", "ScoringStrategy", "SelectionRequest", "Strategy"]

DEFAULT_BATCH_SIZE = 512


@dataclasses.dataclass(frozen=True)
class SelectionRequest:
    """The checked arguments of one `Strategy.select` call (see there).

    Example:

    >>> SelectionRequest.checked(k=3, subset_size=10).subset_size
    10
    >>> SelectionRequest.checked(k=3, subset_size=2)
    Traceback (most recent call last):
    ...
    ValueError: Expected k <= subset_size. Received: k=3, subset_size=2
    """

    k: int
    subset_size: int | None = None
    seed: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    verbose: int = 0
    labeled: Any = None

    @classmethod
    def checked(cls, k, subset_size=None, seed=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0, labeled=None):
        """A request whose `k`, `subset_size` and `batch_size` are positive integers, `k <= subset_size`."""
        k = check_integer("k", k)
        batch_size = check_integer("batch_size", batch_size)
        subset_size = check_integer("subset_size", subset_size, optional=True)
        if subset_size is not None and k > subset_size:
            raise ValueError(f"Expected k <= subset_size. Received: k={k}, subset_size={subset_size}")
        return cls(k, subset_size, seed, batch_size, verbose, labeled)


class Strategy(abc.ABC):
    """Base class of acquisition strategies: `select` picks the `k` pool items to label next.

    `select` is defined here once; a strategy implements `pick(model, pool,
    request)` (or subclasses `ScoringStrategy` and implements `score`).
    Overriding `select` is refused when the class is defined. Compiled
    functions are cached on the model, keyed by the strategy's type and
    `get_config()`, which must hold every option that changes the picks.

    Example:

    >>> import numpy as np
    >>> class FirstItems(Strategy):
    ...     name = "first_items"
    ...     def pick(self, model, pool, request):
    ...         return Selection(np.arange(request.k), np.zeros(request.k, "float32"), self.name, len(pool))
    >>> FirstItems().select(None, np.zeros((4, 2)), k=2).indices.tolist()
    [0, 1]
    """

    name = "strategy"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "select" in vars(cls):
            raise TypeError(
                f"{cls.__name__} overrides Strategy.select; implement pick(model, pool, request) instead "
                "(select checks the arguments once and calls pick), or score(model, features) in a ScoringStrategy."
            )

    def select(
        self,
        model,
        pool,
        k: int,
        subset_size: int | None = None,
        seed: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        verbose: int = 0,
        labeled=None,
    ) -> Selection:
        """Picks the `k` pool items to label next, best first.

        Args:
            model: the current model (a LossLearningModel or a Keras classifier).
            pool: unlabeled items: a NumPy array, a `tf.data.Dataset` (of items,
                batches, or `(features, label)` pairs) or an iterable of batches.
            k: how many items to pick.
            subset_size: score only a seeded random subset of this many items
                (the paper's M = 10,000); the whole pool if `None` or larger.
            seed: seed for the subset (and any strategy randomness).
            batch_size: items per compiled scoring step (rounded up to a
                multiple of the number of replicas under `tf.distribute`).
            verbose: 0 silent, 1 progress bar, 2 one line per update.
            labeled: the already-labeled items (same pool types), or `None`.
                Diversity strategies (`CoreSet`, `LearningLossKCenter`) place
                their picks far from them; the others ignore it.

        Returns:
            A `Selection` with `indices` (positions in `pool`) and `scores`.

        Raises:
            ValueError: for `k <= 0`, `k` above the number of items scored,
                `k > subset_size`, an empty pool, items whose shape does not
                match the model input, `subset_size` with a one-shot generator,
                or fewer than `k` items with a non-NaN score. NaN-scored items
                rank last, are counted in `Selection.num_nan` and trigger a
                `RuntimeWarning`; they are never selected.

        A Dataset of unknown cardinality is read once more to count it when
        `subset_size` is given.
        """
        request = SelectionRequest.checked(k, subset_size, seed, batch_size, verbose, labeled)
        return self.pick(model, pool, request)

    @abc.abstractmethod
    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        """The strategy's picks among `pool` for a checked `request`."""

    def get_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({options})"

    def _scorer(self, model, request: SelectionRequest) -> PoolScorer:
        return PoolScorer(model, request, self.name)

    def _cache_key(self, *purpose) -> tuple:
        """What identifies this strategy's compiled steps on a model: its type, its options, their purpose."""
        return (type(self), tuple(sorted(self.get_config().items())), *purpose)

    def _batch_function(self, model, fn, batch_size: int, extra_key=()) -> BatchFunction:
        """The compiled batch function of this kind of strategy with these settings on `model` (see `cached_step`)."""
        return cached_step(model, (*self._cache_key(*extra_key), batch_size), fn)


class ScoringStrategy(Strategy):
    """A strategy that scores every item on its own and keeps the `k` highest scores.

    A subclass implements `score(model, features) -> (batch,) float32 tensor`,
    traced into one compiled step; the pool, the subset, the compiled loop and
    the running top-K are the `PoolScorer`'s.

    Example:

    >>> import numpy as np, keras
    >>> from keras import ops
    >>> class FirstFeature(ScoringStrategy):
    ...     name = "first_feature"
    ...     def score(self, model, features):
    ...         return ops.cast(model(features)[:, 0], "float32")
    >>> identity = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])
    >>> FirstFeature().select(identity, np.array([[0.1, 0], [0.9, 0], [0.5, 0]]), k=2).indices.tolist()
    [1, 2]
    """

    @abc.abstractmethod
    def score(self, model, features):
        """Per-item scores for a batch of `features` (higher = label first)."""

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        function = self._batch_function(
            model, lambda features: mask_non_finite(features, self.score(model, features)), request.batch_size
        )
        return self._scorer(model, request).top_k(function, pool)


def check_from_logits(from_logits):
    if from_logits is not None and not isinstance(from_logits, bool):
        raise ValueError(f"Expected from_logits to be True, False or None. Received: from_logits={from_logits!r}")
    return from_logits


def resolve_from_logits(from_logits: bool | None, model) -> bool:
    """`from_logits`, or when `None` what the model's last layer says (no softmax/sigmoid: logits)."""
    return (not models.outputs_are_probabilities(model)) if from_logits is None else from_logits


def check_factor(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not float(value) >= 1.0:
        raise ValueError(f"Expected {name} >= 1. Received: {name}={value!r}")
    return float(value)


def report_non_finite(num_non_finite: int, num_scored: int, k: int, strategy: str) -> None:
    """Warns about non-finite items left out, or raises when fewer than `k` finite ones remain."""
    if not num_non_finite:
        return
    if num_scored - num_non_finite < k:
        raise ValueError(
            f"Expected at least k={k} items with finite features and scores, but {num_non_finite} of "
            f"{num_scored} scored items are NaN/inf ({strategy})."
        )
    warnings.warn(
        f"{num_non_finite} of {num_scored} pool items have NaN/inf features or scores ({strategy}); they were "
        "not selected.",
        RuntimeWarning,
        stacklevel=4,
    )


def finite_rows(*arrays: np.ndarray) -> np.ndarray:
    """Per row: True when every value of every array is finite."""
    finite = np.ones(len(arrays[0]), bool)
    for array in arrays:
        finite &= np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return finite
