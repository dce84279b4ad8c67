"""The streaming passes over a pool: a compiled per-batch function, a running top-K, a collection of per-item outputs.

A pass ends in a `Selection` (the picked positions, best first, and their
scores) or in the collected outputs.

One compiled step per (strategy, model, batch size): every batch has the same
padded shape, so it traces once. Each call takes a group of batches and runs
them one at a time in a loop inside the call. A top-K selection merges each
group into a running top-K inside that compiled step, on the device, and reads
the result back once at the end: per group the host only slices the pool and
calls the step (NumPy pools skip `tf.data`), which is what keeps scoring at the
speed of a bare compiled forward pass. Under an active `tf.distribute` strategy the
batches are split across replicas and gathered back with their indices, and
the running top-K is merged on the host. Results stream, so scoring memory
does not grow with the pool (a collector for embeddings is the exception).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from keras_lossal.acquisition.pool import PAD_INDEX, IndexedPool
from keras_lossal.acquisition.ranking import merge_top_k

__all__ = [
    "Selection",
    "BatchFunction",
    "run",
    "top_k_selection",
    "collect",
    "collect_top",
    "check_scored",
    "finite_items",
    "mask_non_finite",
    "scoring_strategy",
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


def scoring_strategy() -> tf.distribute.Strategy | None:
    """The active `tf.distribute` strategy to split scoring batches over, or `None` to score on one device.

    `None` outside any strategy, and under one whose replicas span several
    workers (`MultiWorkerMirroredStrategy`): there a distributed dataset gives
    each worker only its share of the pool, so each worker would pick from its
    share; on one device of its own every worker scores the whole pool and
    picks the same items.
    """
    if not tf.distribute.has_strategy():
        return None
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > len(strategy.extended.worker_devices):
        return None
    return strategy


class BatchFunction:
    """`fn(features) -> outputs` compiled once, run per batch, optionally across replicas.

    On one device a compiled call takes a group of batches (`IndexedPool.group_size`: up to 8, at most
    32 MiB of features) and runs `fn` on them one batch at a time in a loop inside the call, so the
    host's fixed cost per call is paid once per group. `fn` still sees `(batch_size, ...)` features, and
    every output equals a call per batch. Under a `tf.distribute` strategy each call takes one batch,
    split across the replicas.

    Args:
        fn: maps a `(batch, ...)` features tensor to a tensor or tuple of
            tensors with the batch as dim 0.
        jit_compile: compile the steps with XLA (the strategies pass the
            model's own `jit_compile`, which Keras resolves to XLA on GPUs).
    """

    def __init__(self, fn: Callable, jit_compile: bool = False):
        self.fn = fn
        self.jit_compile = bool(jit_compile)
        self.distribution = scoring_strategy()
        self._steps: dict = {}  # (kind, k, features spec) -> concrete function of a grouped step
        if self.distribution is None:
            self._forward = tf.function(fn)  # traced once per features spec, called inside the grouped steps
            self._grouped_outputs = tf.function(self._outputs_step, jit_compile=self.jit_compile)
            self._grouped_top_k = tf.function(self._top_k_step, jit_compile=self.jit_compile)
        else:
            distribution = self.distribution

            def step(indices, features):
                return distribution.run(lambda i, x: (i, fn(x)), args=(indices, features))

            self._compiled = tf.function(step)

    @property
    def replicas(self) -> int:
        return 1 if self.distribution is None else self.distribution.num_replicas_in_sync

    def tracing_count(self) -> int:
        """How many times the compiled functions have been traced: `fn`, and the loop around it, once per features spec."""
        if self.distribution is not None:
            return self._compiled.experimental_get_tracing_count()
        steps = (self._forward, self._grouped_outputs, self._grouped_top_k)
        return sum(step.experimental_get_tracing_count() for step in steps)

    def _map(self, features, score: bool):
        """`fn` over `features [g, batch, ...]`, one batch per loop iteration; outputs `[g * batch, ...]`."""
        forward = self._forward.get_concrete_function(tf.TensorSpec(features.shape[1:], features.dtype))
        if score:
            batch = features.shape[1]
            outputs = tf.map_fn(
                lambda x: tf.reshape(tf.cast(forward(x), tf.float32), [batch]),
                features,
                fn_output_signature=tf.TensorSpec([batch], tf.float32),
                parallel_iterations=1,
            )
        else:
            signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), forward.structured_outputs)
            outputs = tf.map_fn(forward, features, fn_output_signature=signature, parallel_iterations=1)
        return tf.nest.map_structure(lambda output: tf.reshape(output, [-1, *output.shape[2:]]), outputs)

    def _outputs_step(self, features):
        return self._map(features, score=False)

    def _top_k_step(self, best_keys, best_scores, best_indices, counts, indices, features):
        """Scores a group of batches with `fn` (one float32 score per item, NaN for an item never to pick),
        merges it into the running top-K (length k, best first) and adds `[real items, NaN items]` to `counts`.

        The ranking key is `_order_key` of the score, so subnormal scores
        order exactly even where the device flushes them to zero; padding rows
        (index `PAD_INDEX`) and NaN scores get the lowest key.
        `tf.math.top_k` puts the lower position first among equal keys, and
        the running set precedes the group, whose indices only grow along the
        pool: so ties go to the lower pool index, the order of
        `ranking.rank_order`, exactly as a merge after every batch would.
        """
        scores = self._map(features, score=True)
        indices = tf.reshape(indices, [-1])
        real = indices >= 0
        is_nan = tf.logical_and(real, tf.math.is_nan(scores))
        usable = tf.logical_and(real, tf.logical_not(is_nan))
        keys = tf.where(usable, _order_key(scores), tf.fill(tf.shape(scores), tf.int32.min))
        merged_keys = tf.concat([best_keys, keys], axis=0)
        top = tf.math.top_k(merged_keys, k=best_keys.shape[0], sorted=True)
        new_scores = tf.gather(tf.concat([best_scores, scores], axis=0), top.indices)
        new_indices = tf.gather(tf.concat([best_indices, indices], axis=0), top.indices)
        added = tf.stack([tf.reduce_sum(tf.cast(real, tf.int64)), tf.reduce_sum(tf.cast(is_nan, tf.int64))])
        return top.values, new_scores, new_indices, counts + added

    def _step(self, kind: str, k: int, features):
        """The concrete grouped step for this features spec, any number of batches per group (traced once)."""
        shape, dtype = tuple(features.shape[1:]), tf.as_dtype(features.dtype)
        key = (kind, k, shape, dtype)
        step = self._steps.get(key)
        if step is None:
            group = tf.TensorSpec([None, *shape], dtype)
            if kind == "outputs":
                step = self._grouped_outputs.get_concrete_function(group)
            else:
                state = [tf.TensorSpec([k], tf.int32), tf.TensorSpec([k], tf.float32), tf.TensorSpec([k], tf.int64)]
                indices = tf.TensorSpec([None, shape[0]], tf.int64)
                step = self._grouped_top_k.get_concrete_function(*state, tf.TensorSpec([2], tf.int64), indices, group)
            self._steps[key] = step
        return step

    def top_k(self, indexed: IndexedPool, k: int, progress=None) -> tuple:
        """The running top-K over the pool on the device: `(scores, indices, num_scored, num_nan)`, one read back at the end."""
        best_keys = tf.fill([k], tf.int32.min)
        best_scores = tf.fill([k], float("nan"))
        best_indices = tf.fill([k], tf.constant(PAD_INDEX, tf.int64))
        counts = tf.zeros([2], tf.int64)  # [items scored, NaN items]
        steps_done = 0
        for indices, features in indexed.groups(indexed.group_size()):
            step = self._step("top_k", k, features)
            state = (best_keys, best_scores, best_indices, counts)
            best_keys, best_scores, best_indices, counts = step(*state, *map(tf.convert_to_tensor, (indices, features)))
            steps_done += int(indices.shape[0])
            if progress is not None:
                progress.update(steps_done, [("items", int(counts[0]))], finalize=False)
        num_scored, num_nan = (int(count) for count in counts.numpy())
        if progress is not None:
            progress.update(steps_done, [("items", num_scored)], finalize=True)
        return best_scores.numpy(), best_indices.numpy(), num_scored, num_nan

    def batches(self, indexed: IndexedPool):
        """Yields `(indices, outputs)` NumPy pairs for the real (unpadded) rows of each group of batches."""
        if self.distribution is None:
            for indices, features in indexed.groups(indexed.group_size()):
                outputs = self._step("outputs", 0, features)(tf.convert_to_tensor(features))
                yield _unpad(np.asarray(indices).reshape(-1), outputs)
        else:
            for indices, features in self.distribution.experimental_distribute_dataset(indexed.dataset):
                replica_indices, replica_outputs = self._compiled(indices, features)
                yield _unpad(
                    self._concatenate(replica_indices), tf.nest.map_structure(self._concatenate, replica_outputs)
                )

    def _concatenate(self, per_replica) -> np.ndarray:
        # Each replica returns its slice of the batch with its own indices, so order does not matter.
        return np.concatenate([np.asarray(part) for part in self.distribution.experimental_local_results(per_replica)])


def _order_key(scores):
    """int32 keys ordered as the float32 `scores` (not NaN), computed on the bits: -0.0 and 0.0 are equal.

    Integer comparisons are exact where a device's float comparisons treat
    subnormals as zero.
    """
    bits = tf.bitcast(scores, tf.int32)
    bits = tf.where(bits == tf.int32.min, tf.zeros_like(bits), bits)  # -0.0 -> 0.0
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.int32.max), bits)


def _unpad(indices: np.ndarray, outputs):
    keep = indices >= 0
    if isinstance(outputs, (tuple, list)):
        return indices[keep], tuple(np.asarray(output)[keep] for output in outputs)
    return indices[keep], np.asarray(outputs)[keep]


def _progress_bar(indexed: IndexedPool, verbose: int):
    if not verbose:
        return None
    steps = None if indexed.num_items is None else -(-indexed.num_items // indexed.batch_size)
    return keras.utils.Progbar(steps, verbose=1 if verbose == 1 else 2, stateful_metrics=["items"], unit_name="batch")


def run(batch_function: BatchFunction, indexed: IndexedPool, consume: Callable, verbose: int = 0) -> int:
    """Feeds every batch's `(indices, outputs)` to `consume`; returns the number of items seen."""
    progress = _progress_bar(indexed, verbose)
    seen = steps_done = 0
    for indices, outputs in batch_function.batches(indexed):
        consume(indices, outputs)
        seen += len(indices)
        steps_done = -(-seen // indexed.batch_size)  # batches: only the last one is short
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
    if batch_function.distribution is None:
        scores, indices, num_scored, num_nan = _device_top_k(batch_function, indexed, k, verbose)
    else:
        scores, indices, num_scored, num_nan = _host_top_k(batch_function, indexed, k, verbose)
    check_scored(k, num_scored)
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
    return Selection(indices, scores, strategy, num_scored, num_nan)


def _device_top_k(batch_function: BatchFunction, indexed: IndexedPool, k: int, verbose: int):
    """The running top-K kept on the device by the compiled step; one transfer at the end."""
    return batch_function.top_k(indexed, k, _progress_bar(indexed, verbose))


def _host_top_k(batch_function: BatchFunction, indexed: IndexedPool, k: int, verbose: int):
    """The running top-K merged on the host from each batch's gathered scores (the multi-replica path)."""
    state = {"scores": np.zeros(0, np.float32), "indices": np.zeros(0, np.int64), "nan": 0}

    def consume(indices, scores):
        scores = np.asarray(scores, np.float32).reshape(-1)
        state["nan"] += int(np.isnan(scores).sum())
        state["scores"], state["indices"] = merge_top_k(state["scores"], state["indices"], scores, indices, k)

    num_scored = run(batch_function, indexed, consume, verbose)
    return state["scores"], state["indices"], num_scored, state["nan"]


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


class _TopRows:
    """The `capacity` rows with the highest first output seen so far, compacted when the buffer doubles."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.parts: list[tuple] = []  # (arrival, indices, outputs...) per batch, finite rows only
        self.buffered = self.arrived = self.excluded = 0

    def add(self, indices, outputs) -> None:
        arrays = tuple(np.asarray(output) for output in (outputs if isinstance(outputs, tuple) else (outputs,)))
        count = len(indices)
        finite = np.ones(count, bool)
        for array in arrays:
            finite &= np.isfinite(array.reshape(count, -1)).all(axis=1)
        arrival = np.arange(self.arrived, self.arrived + count)
        self.arrived += count
        self.excluded += int(count - finite.sum())
        self.parts.append((arrival[finite], np.asarray(indices)[finite], *(array[finite] for array in arrays)))
        self.buffered += int(finite.sum())
        if self.buffered > 2 * self.capacity:
            self._compact()

    def _compact(self) -> None:
        if not self.parts:
            return
        arrival, indices, *outputs = (np.concatenate(columns) for columns in zip(*self.parts))
        keep = np.lexsort((arrival, -outputs[0].astype(np.float64)))[: self.capacity]  # highest first; ties: earliest
        keep = np.sort(keep)  # back to arrival order
        self.parts = [(arrival[keep], indices[keep], *(output[keep] for output in outputs))]
        self.buffered = len(keep)

    def result(self) -> tuple[np.ndarray, tuple]:
        self._compact()
        if not self.parts:
            return np.zeros(0, np.int64), ()
        _, indices, *outputs = self.parts[0]
        return indices, tuple(outputs)


def collect_top(
    batch_function: BatchFunction, indexed: IndexedPool, capacity: int, verbose: int = 0
) -> tuple[np.ndarray, tuple, int, int]:
    """Like `collect`, but keeps only the `capacity` items with the highest first output (e.g. predicted loss).

    Items with any non-finite output are left out and counted. Memory is
    O(capacity x row size) whatever the pool's size (the buffer is compacted
    whenever it holds twice `capacity` rows). Ties go to the item scored first;
    the kept rows come back in the order they were scored, so with `capacity`
    at least the pool's size this equals `collect` without the non-finite rows.

    Returns:
        `(indices, outputs, num_scored, num_excluded)`.
    """
    rows = _TopRows(int(capacity))
    num_scored = run(batch_function, indexed, rows.add, verbose)
    indices, outputs = rows.result()
    return indices, outputs, num_scored, rows.excluded
