"""The random baseline: uniformly random picks, no model."""

from __future__ import annotations

import numpy as np

from keras_lossal.acquisition.base import SelectionRequest, Strategy, report_non_finite
from keras_lossal.acquisition.pool import index_pool, model_input_spec, pool_size
from keras_lossal.acquisition.ranking import sample_subset
from keras_lossal.acquisition.streaming import Selection

__all__ = ["Random"]


class Random(Strategy):
    """Uniformly random items (the baseline). Does not run the model.

    `scores` are uniform random priorities, sorted; they carry no information.
    A pool of unknown length is read once to count it (a one-shot generator is
    consumed). `model` may be `None`; it is only used to tell a Dataset of
    single items from a Dataset of batches (without it, batches are assumed).
    In a NumPy pool, items with NaN/inf features are counted in `num_nan` and
    never picked (other pool types are not read, so not checked).

    Example:

    >>> import numpy as np
    >>> selection = Random().select(None, np.zeros((10, 2)), k=3, seed=0)
    >>> sorted(set(selection.indices.tolist())) == sorted(selection.indices.tolist()), len(selection)
    (True, 3)
    """

    name = "random"

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        k, seed = request.k, request.seed
        candidates = self._candidates(model, pool, request)
        scored = len(candidates)
        num_non_finite = 0
        if isinstance(pool, np.ndarray) and np.issubdtype(pool.dtype, np.floating):
            finite = _finite_rows(pool, candidates)
            num_non_finite = int(np.sum(~finite))
            candidates = candidates[finite]
            report_non_finite(num_non_finite, scored, k, self.name)
        rng = np.random.default_rng(None if seed is None else [seed, 1])
        chosen = rng.choice(len(candidates), size=k, replace=False)
        priorities = np.sort(rng.random(k).astype(np.float32))[::-1]
        return Selection(candidates[chosen], priorities, self.name, scored, num_non_finite)

    @staticmethod
    def _candidates(model, pool, request: SelectionRequest) -> np.ndarray:
        """The pool positions to pick from: the seeded subset, or every position."""
        size = pool_size(pool)
        if size is None:
            # Counts by reading the pool; the model (if given) tells a Dataset of items from one of batches.
            indexed = index_pool(pool, request.batch_size, None if model is None else model_input_spec(model))
            size = sum(int(np.sum(indices.numpy() >= 0)) for indices, _ in indexed.dataset)
        if size == 0:
            raise ValueError("Expected a non-empty pool. Received: a pool with 0 items")
        subset = sample_subset(size, request.subset_size, request.seed)
        candidates = np.arange(size, dtype=np.int64) if subset is None else subset
        if request.k > len(candidates):
            raise ValueError(f"Expected k <= the number of items to score ({len(candidates)}). Received: k={request.k}")
        return candidates


def _finite_rows(pool: np.ndarray, positions: np.ndarray, block: int = 65_536) -> np.ndarray:
    """Whether each of `pool[positions]` is all finite, checked a block of rows at a time (no copy of the pool)."""
    finite = np.empty(len(positions), bool)
    for start in range(0, len(positions), block):
        rows = pool[positions[start : start + block]]
        finite[start : start + block] = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
    return finite
