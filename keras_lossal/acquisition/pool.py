"""Turns any pool into fixed-size batches of `(indices, features)`.

A pool is a NumPy array, a `tf.data.Dataset` (of features or of
`(features, label, ...)` tuples; labels are ignored) or a Python iterable of
batches (arrays or `(features, label, ...)` tuples). An item's index is its
position in the order the pool yields it. Indices are attached before any
batching we do and travel with the features, so nothing we add can reorder
scores against items. Every batch has exactly `batch_size` rows: the last one
is padded and its padding rows carry the index `PAD_INDEX`, so the compiled
scoring function sees a single input shape.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_lossal.acquisition.ranking import sample_subset

__all__ = [
    "PAD_INDEX",
    "GROUP_BYTES",
    "MAX_GROUP",
    "IndexedPool",
    "index_pool",
    "can_subsample",
    "pool_size",
    "model_input_spec",
]

PAD_INDEX = -1
# Scoring runs several batches per compiled call (a loop inside the call, one batch at a time), so the
# host's fixed cost per call (dispatch, argument conversion, the top-K merge) is paid once per group.
# A group's features are at most GROUP_BYTES (one host-to-device copy), and at most MAX_GROUP batches.
GROUP_BYTES = 32 * 2**20
MAX_GROUP = 8


@dataclass(frozen=True)
class IndexedPool:
    """Padded, indexed batches of a pool.

    Attributes:
        dataset: yields `(indices int64 [batch_size], features [batch_size, ...])`.
        num_items: how many real items it yields, or `None` when unknown.
        batch_size: rows per batch.
        array_groups: for a NumPy pool, a function of `group` yielding the same
            batches as NumPy arrays without `tf.data`, `group` batches at a time
            (`(indices [g, batch_size], features [g, batch_size, ...])`, g <= group;
            full groups of a whole pool are views of it, only the last batch is
            padded), else `None`.
    """

    dataset: tf.data.Dataset
    num_items: int | None
    batch_size: int
    array_groups: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]] | None = None

    def groups(self, group: int) -> Iterator[tuple]:
        """The same batches, `group` at a time: `(indices [g, batch_size], features [g, batch_size, ...])`.

        Every group holds `group` batches except at the end, where the batches
        left over come one per group: so a compiled step sees two group sizes
        at most, whatever the pool's size (XLA compiles once per shape). The
        rows, their order and their padding are those of `dataset`.
        """
        source = self.array_groups(group) if self.array_groups is not None else iter(self.dataset.batch(group))
        for indices, features in source:
            if len(indices) == group:
                yield indices, features
            else:
                for position in range(len(indices)):
                    yield indices[position : position + 1], features[position : position + 1]

    def group_size(self, max_bytes: int = GROUP_BYTES, max_group: int = MAX_GROUP) -> int:
        """How many batches one compiled call takes: as many as fit `max_bytes` of features, 1 to `max_group`.

        Example:

        >>> index_pool(np.zeros((10, 16, 16, 1), "float32"), batch_size=512).group_size()
        8
        >>> index_pool(np.zeros((10, 224, 224, 3), "float32"), batch_size=512).group_size()
        1
        """
        spec = self.dataset.element_spec[1]
        if not spec.shape.is_fully_defined():
            return 1
        batch_bytes = max(1, spec.shape.num_elements() * spec.dtype.size)
        return int(max(1, min(max_group, max_bytes // batch_bytes)))


def model_input_spec(model) -> tf.TensorSpec | None:
    """Shape (with batch dim) and dtype of a single-input model's input, or `None` if unknown."""
    graph = getattr(model, "backbone", None)
    graph = graph if graph is not None else model
    try:
        inputs = graph.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tf.TensorSpec(tuple(inputs[0].shape), inputs[0].dtype)


def _features_only(element):
    return element[0] if isinstance(element, (tuple, list)) else element


def _is_one_shot(pool) -> bool:
    return iter(pool) is pool


def can_subsample(pool) -> bool:
    """Whether `index_pool(pool, ..., subset_size=...)` can draw a subset: an array, a Dataset, or batches of known size."""
    return isinstance(pool, (np.ndarray, tf.data.Dataset)) or pool_size(pool) is not None


def pool_size(pool) -> int | None:
    """Number of items in `pool` if it can be known without consuming it, else `None`.

    A `tf.data.Dataset` of unknown cardinality (or a batched one) is counted by
    iterating it once; a one-shot iterator (generator) gives `None`.
    """
    if isinstance(pool, np.ndarray):
        return int(pool.shape[0]) if pool.ndim else 0
    if isinstance(pool, tf.data.Dataset):
        return None
    if isinstance(pool, Sequence) and not _is_one_shot(pool):
        return int(sum(np.shape(_features_only(batch))[0] for batch in pool))
    return None


def _dataset_size(dataset: tf.data.Dataset) -> int:
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


def _check_item_shape(item_shape: tf.TensorShape, input_spec: tf.TensorSpec | None, source: str) -> None:
    if input_spec is None:
        return
    expected = tf.TensorShape(input_spec.shape[1:])
    if not expected.is_compatible_with(item_shape):
        raise ValueError(
            f"Expected pool items of shape {tuple(expected)} to match the model input "
            f"{tuple(input_spec.shape)}. Received: {source} items of shape {tuple(item_shape)}"
        )


def _cast_to_input(features, input_spec: tf.TensorSpec | None):
    if input_spec is None or not input_spec.dtype.is_floating or not features.dtype.is_floating:
        return features
    return tf.cast(features, input_spec.dtype)


def _pad_batch(batch_size: int):
    def pad(indices, features):
        missing = batch_size - tf.shape(indices)[0]
        indices = tf.pad(indices, [[0, missing]], constant_values=PAD_INDEX)
        paddings = [[0, missing]] + [[0, 0]] * (len(features.shape) - 1)
        return indices, tf.pad(features, paddings)

    def pad_if_short(indices, features):
        # Only a short (last) batch is copied; full ones pass through untouched.
        indices, features = tf.cond(
            tf.shape(indices)[0] < batch_size, lambda: pad(indices, features), lambda: (indices, features)
        )
        indices.set_shape([batch_size])
        features.set_shape([batch_size, *features.shape[1:]])
        return indices, features

    return pad_if_short


def _array_dtype(array: np.ndarray, input_spec) -> np.dtype:
    if input_spec is not None and input_spec.dtype.is_floating and np.issubdtype(array.dtype, np.floating):
        return np.dtype(input_spec.dtype.as_numpy_dtype)
    return array.dtype


def _array_groups(array: np.ndarray, positions, batch_size: int, dtype: np.dtype, group: int) -> Iterator[tuple]:
    """`(indices [g, batch_size], rows [g, batch_size, ...])` NumPy groups of `array` (or its `positions`).

    Full groups of a whole pool are views of it; only the last batch is padded (a copy of the last group).
    """
    count = len(array) if positions is None else len(positions)
    step = batch_size * group
    for start in range(0, count, step):
        stop = min(start + step, count)
        if positions is None:
            indices, rows = np.arange(start, stop, dtype=np.int64), array[start:stop]
        else:
            indices, rows = positions[start:stop], array[positions[start:stop]]
        rows = rows.astype(dtype, copy=False)
        padding = -(stop - start) % batch_size
        if padding:
            indices = np.concatenate([indices, np.full(padding, PAD_INDEX, np.int64)])
            rows = np.concatenate([rows, np.zeros((padding, *array.shape[1:]), dtype)])
        yield indices.reshape(-1, batch_size), rows.reshape(-1, batch_size, *array.shape[1:])


def _array_rows(array: np.ndarray, positions, batch_size: int, dtype: np.dtype) -> Iterator[tuple]:
    """`(indices, rows)` NumPy batches of `array` (or its `positions`); only a short last batch is copied to pad."""
    for indices, rows in _array_groups(array, positions, batch_size, dtype, 1):
        yield indices[0], rows[0]


def _array_batches(array: np.ndarray, rows: Callable, batch_size: int, dtype: np.dtype) -> tf.data.Dataset:
    signature = (
        tf.TensorSpec([batch_size], tf.int64),
        tf.TensorSpec([batch_size, *array.shape[1:]], tf.as_dtype(dtype)),
    )
    return tf.data.Dataset.from_generator(rows, output_signature=signature)


def _iterable_as_dataset(pool: Iterable) -> tf.data.Dataset:
    iterator = iter(pool)
    first = next(iterator, None)
    if first is None:
        raise ValueError("Expected a non-empty pool. Received: an iterable that yielded no batches")
    first_features = np.asarray(_features_only(first))
    if first_features.ndim == 0:
        raise ValueError(
            "Expected an iterable pool to yield batches (arrays with a batch dimension). "
            f"Received: a first element of shape {first_features.shape}"
        )
    signature = tf.TensorSpec([None, *first_features.shape[1:]], tf.as_dtype(first_features.dtype))

    def generate():
        for batch in itertools.chain([first], iterator):
            yield np.asarray(_features_only(batch), dtype=first_features.dtype)

    return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _dataset_batches(
    dataset: tf.data.Dataset, positions, batch_size: int, input_spec, batched: bool | None
) -> tf.data.Dataset:
    if isinstance(dataset.element_spec, (tuple, list)):
        dataset = dataset.map(lambda *element: element[0])
    spec = dataset.element_spec
    if not isinstance(spec, tf.TensorSpec):
        raise ValueError(
            "Expected a pool of single-tensor features (or (features, label) pairs). "
            f"Received: a dataset with element_spec {spec}"
        )
    if batched is None:
        batched = input_spec is None or spec.shape.rank == len(input_spec.shape)
    item_shape = spec.shape[1:] if batched else spec.shape
    _check_item_shape(item_shape, input_spec, "dataset")
    if input_spec is not None and spec.dtype != input_spec.dtype:
        dataset = dataset.map(lambda features: _cast_to_input(features, input_spec))
    if batched and positions is None:
        # Whole batches keep their rows together: numbered by a running count, re-cut to `batch_size`.
        dataset = dataset.scan(np.int64(0), _number_rows).rebatch(batch_size)
        return dataset.map(_pad_batch(batch_size))
    dataset = (dataset.unbatch() if batched else dataset).enumerate()
    if positions is not None:
        in_subset = np.zeros(int(positions[-1]) + 1, bool)
        in_subset[positions] = True
        table = tf.constant(in_subset)
        dataset = dataset.take(len(in_subset)).filter(lambda index, _: tf.gather(table, index))
    return dataset.batch(batch_size).map(_pad_batch(batch_size))


def _number_rows(start, batch):
    count = tf.cast(tf.shape(batch)[0], tf.int64)
    return start + count, (start + tf.range(count, dtype=tf.int64), batch)


def index_pool(
    pool,
    batch_size: int,
    input_spec: tf.TensorSpec | None = None,
    subset_size: int | None = None,
    seed: int | None = None,
) -> IndexedPool:
    """Wraps `pool` as padded `(indices, features)` batches, optionally a seeded subset.

    Args:
        pool: NumPy array, `tf.data.Dataset` or iterable of batches.
        batch_size: rows per batch.
        input_spec: the model's input spec (see `model_input_spec`); used to
            check item shapes, cast floating features to the model's input
            dtype, and tell a batched Dataset (same rank as the input) from
            one of single items (one rank less). With `None`, Datasets are
            taken to be batched, like `Model.predict` does.
        subset_size: score only this many seeded random items (all when
            `None` or not smaller than the pool).
        seed: seed for the subset.

    Example:

    >>> indexed = index_pool(np.zeros((5, 2), "float32"), batch_size=4)
    >>> [indices.numpy().tolist() for indices, _ in indexed.dataset]
    [[0, 1, 2, 3], [4, -1, -1, -1]]
    """
    batched = None
    if isinstance(pool, np.ndarray):
        if pool.ndim == 0:
            raise ValueError(f"Expected a pool array with a batch dimension. Received: shape {pool.shape}")
        _check_item_shape(tf.TensorShape(pool.shape[1:]), input_spec, "array")
        size = int(pool.shape[0])
    elif isinstance(pool, tf.data.Dataset):
        size = None
    elif isinstance(pool, Iterable) and not isinstance(pool, (str, bytes, dict)):
        size = pool_size(pool)
    else:
        raise TypeError(
            "Expected `pool` to be a NumPy array, a tf.data.Dataset or an iterable of batches. "
            f"Received: {type(pool).__name__}"
        )
    if size == 0:
        raise ValueError("Expected a non-empty pool. Received: a pool with 0 items")

    positions = None
    if subset_size is not None:
        if size is None and isinstance(pool, tf.data.Dataset):
            flat = pool.map(lambda *element: element[0]) if isinstance(pool.element_spec, (tuple, list)) else pool
            batched = input_spec is None or flat.element_spec.shape.rank == len(input_spec.shape)
            size = _dataset_size(flat.unbatch() if batched else flat)
        if size is None:
            raise ValueError(
                "Expected a pool of known size for `subset_size` (a NumPy array, a tf.data.Dataset or a list of "
                f"batches). Received: a one-shot {type(pool).__name__} with subset_size={subset_size}"
            )
        if size == 0:
            raise ValueError("Expected a non-empty pool. Received: a pool with 0 items")
        positions = sample_subset(size, subset_size, seed)

    num_items = size if positions is None else len(positions)
    if isinstance(pool, np.ndarray):
        dtype = _array_dtype(pool, input_spec)
        rows = functools.partial(_array_rows, pool, positions, batch_size, dtype)
        groups = functools.partial(_array_groups, pool, positions, batch_size, dtype)
        dataset = _array_batches(pool, rows, batch_size, dtype)
        return IndexedPool(dataset.prefetch(tf.data.AUTOTUNE), num_items, batch_size, groups)
    source = pool if isinstance(pool, tf.data.Dataset) else _iterable_as_dataset(pool)
    dataset = _dataset_batches(source, positions, batch_size, input_spec, True if source is not pool else batched)
    return IndexedPool(dataset.prefetch(tf.data.AUTOTUNE), num_items, batch_size)
