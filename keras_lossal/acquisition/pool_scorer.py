"""The pool scorer: one `select` call's scoring of a pool, with the model's compiled steps, the subset and the top-K.

Strategies say *what* to compute per batch (a score, an embedding, gradient
factors); `PoolScorer` says *how* it runs over the pool: it owns the cache of
compiled steps (kept on the model, which they depend on), the seeded subset
and the padded batches (`pool.index_pool`), and the running top-K or the
collection of per-item outputs (`streaming`).

Example:

>>> import numpy as np, keras
>>> from keras_lossal.acquisition.base import SelectionRequest
>>> identity = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])
>>> scorer = PoolScorer(identity, SelectionRequest.checked(k=2), "first_feature")
>>> step = scorer.step(("first_feature",), lambda features: identity(features)[:, 0])
>>> scorer.top_k(step, np.array([[0.1, 0], [0.9, 0], [0.5, 0]])).indices.tolist()
[1, 2]
"""

from __future__ import annotations

from collections.abc import Callable

from keras_lossal.acquisition.pool import IndexedPool, index_pool, model_input_spec
from keras_lossal.acquisition.streaming import (
    BatchFunction,
    Selection,
    collect,
    collect_top,
    scoring_strategy,
    top_k_selection,
)

__all__ = ["PoolScorer", "cached_step", "compiled_steps", "jit_compile"]

_COMPILED_STEPS_ATTRIBUTE = "_keras_lossal_compiled_steps"
_MAX_COMPILED_STEPS_PER_MODEL = 32


def jit_compile(model) -> bool:
    """Whether scoring compiles with XLA: as the model was compiled (Keras' "auto" is XLA on a GPU, not on CPU)."""
    try:
        return getattr(model, "jit_compile", False) is True
    except (AttributeError, ValueError):
        return False


def compiled_steps(model) -> dict:
    """The model's own cache of compiled scoring steps (it lives and dies with the model).

    Set with `object.__setattr__` so Keras does not track it as model state
    (it is never saved and never wraps the functions it holds).
    """
    cache = vars(model).get(_COMPILED_STEPS_ATTRIBUTE)
    if cache is None:
        cache = {}
        object.__setattr__(model, _COMPILED_STEPS_ATTRIBUTE, cache)
    return cache


def cached_step(model, key: tuple, fn: Callable) -> BatchFunction:
    """The compiled step of `fn` on `model` cached under `key`, the caller's identity and settings.

    Cached on the model, not on the strategy, so the documented call
    `acquisition.get(name).select(model, ...)`, which builds a new strategy
    each time, traces once per model, settings, batch size and distribution.
    `key` must therefore hold everything that changes what `fn` computes.
    """
    compile_with_xla = jit_compile(model)
    active = scoring_strategy()
    key = (*key, compile_with_xla, id(active))
    cache = compiled_steps(model)
    function = cache.get(key)
    if function is not None and function.distribution is active:
        return function
    function = BatchFunction(fn, compile_with_xla)
    cache[key] = function
    while len(cache) > _MAX_COMPILED_STEPS_PER_MODEL:
        cache.pop(next(iter(cache)))
    return function


class PoolScorer:
    """Runs per-batch steps over the pool of one `select` call.

    Args:
        model: the model the steps call (its input spec shapes the batches).
        request: the checked `SelectionRequest` (k, subset, seed, batch size, verbosity).
        strategy: the strategy's name, for messages and the `Selection`.
    """

    def __init__(self, model, request, strategy: str):
        self.model, self.request, self.strategy = model, request, strategy

    def step(self, key: tuple, fn: Callable) -> BatchFunction:
        """`fn` compiled once per model, `key` and batch size (see `cached_step`)."""
        return cached_step(self.model, (*key, self.request.batch_size), fn)

    def fresh_step(self, fn: Callable) -> BatchFunction:
        """`fn` compiled for this call only (a function of a model built for the call)."""
        return BatchFunction(fn, jit_compile(self.model))

    def indexed(self, pool, replicas: int = 1, subset: bool = True) -> IndexedPool:
        """`pool` in padded batches (a multiple of `replicas`), its seeded subset unless `subset=False`."""
        request = self.request
        batch_size = -(-request.batch_size // replicas) * replicas
        subset_size, seed = (request.subset_size, request.seed) if subset else (None, None)
        return index_pool(pool, batch_size, model_input_spec(self.model), subset_size, seed)

    def top_k(self, function: BatchFunction, pool) -> Selection:
        """The `k` items of the (sub)pool with the highest score under `function`, best first."""
        indexed = self.indexed(pool, function.replicas)
        k = self.request.k
        if indexed.num_items is not None and k > indexed.num_items:
            raise ValueError(f"Expected k <= the number of items to score ({indexed.num_items}). Received: k={k}")
        return top_k_selection(function, indexed, k, self.strategy, self.request.verbose)

    def collect(self, function: BatchFunction, pool, subset: bool = True) -> tuple:
        """`(indices, outputs)` of every item of the (sub)pool, in pool order (memory grows with the pool)."""
        verbose = self.request.verbose if subset else 0
        return collect(function, self.indexed(pool, function.replicas, subset), verbose)

    def collect_top(self, function: BatchFunction, pool, capacity: int) -> tuple:
        """`(indices, outputs, num_scored, num_excluded)` of the `capacity` items with the highest first output."""
        indexed = self.indexed(pool, function.replicas)
        return collect_top(function, indexed, capacity, self.request.verbose)
