"""The scoring loop: runs a compiled per-batch function over an indexed pool.

One `tf.function` per (strategy, model, batch size): every batch has the same
padded shape, so it traces once. Under an active `tf.distribute` strategy the
batches are split across replicas and gathered back with their indices.
Results stream to a consumer (a running top-K, or a collector for embeddings),
so scoring memory does not grow with the pool.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from keras_lossal.acquisition.pool import IndexedPool
from keras_lossal.acquisition.ranking import merge_top_k

__all__ = [
    "Selection",
    "BatchFunction",
    "run",
    "top_k_selection",
    "collect",
    "check_scored",
    "finite_items",
    "mask_non_finite",
]


@dataclass(frozen=True)
class Selection:
    """The items a strategy picked, best first.

    Attributes:
        indices: int64 positions in the pool (in the order the pool yields items).
        scores: float32 score of each picked item (its meaning depends on the strategy).
        strategy: the strategy's name.
        num_scored: how many pool items were scored (the subset size when subsampling).
        num_nan: how many scored items were non-finite: NaN/inf features or a
            NaN/inf score (ranked last, never picked).
    """

    indices: np.ndarray
    scores: np.ndarray
    strategy: str
    num_scored: int
    num_nan: int = 0

    def __len__(self) -> int:
        return len(self.indices)


def finite_items(features):
    """`(batch,)` bool tensor: True where every value of the item's float features is finite."""
    features = tf.convert_to_tensor(features)
    if not features.dtype.is_floating:
        return tf.ones(tf.shape(features)[:1], tf.bool)
    flat = tf.reshape(features, (tf.shape(features)[0], -1))
    return tf.reduce_all(tf.math.is_finite(flat), axis=1)


def mask_non_finite(features, scores):
    """`scores` as float32, NaN where the item's features or its score are NaN/inf (so it is never picked)."""
    scores = tf.reshape(tf.cast(scores, tf.float32), (-1,))
    keep = tf.logical_and(finite_items(features), tf.math.is_finite(scores))
    return tf.where(keep, scores, tf.fill(tf.shape(scores), float("nan")))


def _replica_strategy() -> tf.distribute.Strategy | None:
    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


class BatchFunction:
    """`fn(features) -> outputs` compiled once, run per batch, optionally across replicas.

    Args:
        fn: maps a `(batch, ...)` features tensor to a tensor or tuple of
            tensors with the batch as dim 0.
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.distribution = _replica_strategy()
        if self.distribution is None:
            self._compiled = tf.function(fn)
        else:
            distribution = self.distribution

            def step(indices, features):
                return distribution.run(lambda i, x: (i, fn(x)), args=(indices, features))

            self._compiled = tf.function(step)

    @property
    def replicas(self) -> int:
        return 1 if self.distribution is None else self.distribution.num_replicas_in_sync

    def tracing_count(self) -> int:
        """How many times the compiled function has been traced."""
        return self._compiled.experimental_get_tracing_count()

    def batches(self, indexed: IndexedPool):
        """Yields `(indices, outputs)` NumPy pairs for the real (unpadded) rows of each batch."""
        if self.distribution is None:
            for indices, features in indexed.dataset:
                outputs = self._compiled(features)
                yield _unpad(indices.numpy(), outputs)
        else:
            for indices, features in self.distribution.experimental_distribute_dataset(indexed.dataset):
                replica_indices, replica_outputs = self._compiled(indices, features)
                yield _unpad(
                    self._concatenate(replica_indices), tf.nest.map_structure(self._concatenate, replica_outputs)
                )

    def _concatenate(self, per_replica) -> np.ndarray:
        # Each replica returns its slice of the batch with its own indices, so order does not matter.
        return np.concatenate([np.asarray(part) for part in self.distribution.experimental_local_results(per_replica)])


def _unpad(indices: np.ndarray, outputs):
    keep = indices >= 0
    if isinstance(outputs, (tuple, list)):
        return indices[keep], tuple(np.asarray(output)[keep] for output in outputs)
    return indices[keep], np.asarray(outputs)[keep]


def run(batch_function: BatchFunction, indexed: IndexedPool, consume: Callable, verbose: int = 0) -> int:
    """Feeds every batch's `(indices, outputs)` to `consume`; returns the number of items seen."""
    progress = None
    if verbose:
        steps = None if indexed.num_items is None else -(-indexed.num_items // indexed.batch_size)
        progress = keras.utils.Progbar(
            steps, verbose=1 if verbose == 1 else 2, stateful_metrics=["items"], unit_name="batch"
        )
    seen = steps_done = 0
    for indices, outputs in batch_function.batches(indexed):
        consume(indices, outputs)
        seen += len(indices)
        steps_done += 1
        if progress is not None:
            progress.update(steps_done, [("items", seen)], finalize=False)
    if progress is not None:
        progress.update(steps_done, [("items", seen)], finalize=True)
    return seen


def check_scored(k: int, num_scored: int) -> None:
    """Refuses an empty pool, or `k` above the number of items scored."""
    if num_scored == 0:
        raise ValueError("Expected a non-empty pool. Received: a pool that yielded 0 items")
    if k > num_scored:
        raise ValueError(f"Expected k <= the number of pool items scored ({num_scored}). Received: k={k}")


def top_k_selection(
    batch_function: BatchFunction, indexed: IndexedPool, k: int, strategy: str, verbose: int = 0
) -> Selection:
    """Scores the pool with `batch_function` (one float score per item) and keeps the best `k`.

    NaN scores (the scoring functions of `Strategy.select` turn NaN/inf
    features and NaN/inf scores into NaN) rank last, are counted and are never
    picked: if fewer than `k` items have a finite score, this raises.
    """
    state = {"scores": np.zeros(0, np.float32), "indices": np.zeros(0, np.int64), "nan": 0}

    def consume(indices, scores):
        scores = np.asarray(scores, np.float32).reshape(-1)
        state["nan"] += int(np.isnan(scores).sum())
        state["scores"], state["indices"] = merge_top_k(state["scores"], state["indices"], scores, indices, k)

    num_scored = run(batch_function, indexed, consume, verbose)
    check_scored(k, num_scored)
    num_nan = state["nan"]
    if num_nan:
        if num_scored - num_nan < k:
            raise ValueError(
                f"Expected at least k={k} items with a finite score, but {num_nan} of {num_scored} scored items "
                f"have NaN/inf features or scores ({strategy}). Non-finite features are bad input; NaN scores "
                "of finite items usually mean the model diverged."
            )
        warnings.warn(
            f"{num_nan} of {num_scored} pool items have NaN/inf features or scores ('{strategy}'); they were "
            "ranked last and not selected.",
            RuntimeWarning,
            stacklevel=3,
        )
    return Selection(state["indices"], state["scores"], strategy, num_scored, num_nan)


def collect(batch_function: BatchFunction, indexed: IndexedPool, verbose: int = 0) -> tuple[np.ndarray, tuple]:
    """Runs the pool through `batch_function` and concatenates its outputs (e.g. embeddings).

    Returns `(indices, outputs)` with the outputs as a tuple of arrays, one
    row per item, in pool order. Memory grows with the pool: use it only for
    strategies that need every item at once (core-set, BADGE).
    """
    index_parts, output_parts = [], []

    def consume(indices, outputs):
        index_parts.append(indices)
        output_parts.append(outputs if isinstance(outputs, tuple) else (outputs,))

    run(batch_function, indexed, consume, verbose)
    if not index_parts:
        return np.zeros(0, np.int64), ()
    outputs = tuple(np.concatenate(parts) for parts in zip(*output_parts))
    return np.concatenate(index_parts), outputs
