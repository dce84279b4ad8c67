"""`ActiveLearningLoop`: the paper's protocol (train, evaluate, acquire, label), resumable.

Every random choice of cycle `c` is seeded from `(seed, c)` alone, and the loop
writes its whole state (labeled indices in labeling order, per-cycle metrics,
config) atomically after each cycle, together with the weights a warm start
needs. A run killed at any point resumes from the last finished cycle and ends
with exactly the labeled sets of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_lossal import data as data_lib
from keras_lossal.preprocessing import ImagePreprocessing, infer_preprocessing

__all__ = ["ActiveLearningLoop", "LoopResult", "cycle_seed", "write_json_atomic", "STATE_FILE"]

STATE_FILE = "state.json"
STATE_VERSION = 1
_WEIGHTS_DIR = "weights"
# The `purpose` part of cycle seeds: one independent stream per random thing in a cycle.
_PURPOSE_MODEL, _PURPOSE_SHUFFLE, _PURPOSE_SUBSET, _PURPOSE_STRATEGY, _PURPOSE_INITIAL = range(5)


def cycle_seed(seed: int, cycle: int, purpose: int = 0) -> int:
    """A 31-bit seed derived from `(seed, cycle, purpose)` only, so any cycle can be replayed alone.

    Example:

    >>> cycle_seed(0, 3) == cycle_seed(0, 3), cycle_seed(0, 3) != cycle_seed(0, 4)
    (True, True)
    """
    sequence = np.random.SeedSequence([int(seed), int(cycle), int(purpose)])
    return int(sequence.generate_state(1)[0] % (2**31 - 1))


def write_json_atomic(path: str, payload: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


@dataclasses.dataclass
class LoopResult:
    """What an active-learning run produced: one record per cycle, and the labeled set.

    Args:
        cycles: per-cycle records (`cycle`, `num_labeled`, test metrics such as
            `accuracy`, `selected` indices, timings).
        labeled_indices: indices into the training pool, in labeling order.
        config: the loop's configuration.
        model: the last cycle's trained model (`None` when loaded from disk).

    Example:

    >>> result = LoopResult([{"cycle": 0, "num_labeled": 10, "accuracy": 0.5}], [1, 2], {})
    >>> result.learning_curve()
    (array([10]), array([0.5]))
    """

    cycles: list[dict]
    labeled_indices: list[int]
    config: dict
    model: keras.Model | None = None

    def learning_curve(self, metric: str = "accuracy") -> tuple[np.ndarray, np.ndarray]:
        """`(num_labeled, metric)` arrays, one point per finished cycle."""
        missing = [record["cycle"] for record in self.cycles if metric not in record]
        if missing:
            available = sorted(key for key in self.cycles[0] if isinstance(self.cycles[0][key], float))
            raise KeyError(f"Metric {metric!r} not recorded for cycles {missing}; available: {available}")
        sizes = np.array([record["num_labeled"] for record in self.cycles], dtype=np.int64)
        values = np.array([record[metric] for record in self.cycles], dtype=np.float64)
        return sizes, values

    @classmethod
    def load(cls, work_dir: str) -> LoopResult:
        """Reads the result recorded in `work_dir/state.json`."""
        with open(os.path.join(work_dir, STATE_FILE)) as stream:
            state = json.load(stream)
        return cls(state["cycles"], state["labeled_indices"], state["config"])


class ActiveLearningLoop:
    """Runs pool-based active learning: train, evaluate on the test set, acquire K, label, repeat.

    Cycle `c` (0-based) trains a model from `model_factory()` on the labeled
    set with `fit`, evaluates the final-epoch model on the test set (never the
    best epoch), and, except after the last cycle, scores a random subset of
    `subset_size` unlabeled items with the strategy and labels its top
    `query_size`. `cycles` counts training rounds, so the final labeled set has
    `initial_size + (cycles - 1) * query_size` items (the paper: 1k + 1k x 9).

    With `warm_start=True` (the paper's reference code) each cycle's model
    starts from the previous cycle's weights with a fresh optimizer; with
    `False` it is re-initialised. Everything random in cycle `c` is seeded
    from `(seed, c)`, state is saved atomically to `work_dir` after every
    cycle, and `run()` resumes from it. For bit-identical resumes on any
    hardware also call `tf.config.experimental.enable_op_determinism()`.

    Args:
        model_factory: a callable returning a new *compiled* Keras model, e.g. a
            `LossLearningModel` for the `learning_loss` strategy.
        train_data: `(x, y)` NumPy arrays of raw images and integer labels (the
            pool; labels are revealed only when an index is labeled), or a
            `tf.data.Dataset` of unbatched `(image, label)` pairs, read into
            memory once. Labels must be integers in `[0, classes)` of the
            model's output (checked before the first cycle trains).
        test_data: `(x, y)` arrays or a `tf.data.Dataset`, like `train_data`.
        strategy: an acquisition strategy name (`keras_lossal.acquisition.get`)
            or any object with `select(model, pool, k, ...)` returning an object
            with `indices` (positions in `pool`, best first).
        initial_size: number of randomly chosen items labeled before cycle 0.
        query_size: K, items labeled per cycle.
        subset_size: M, size of the random unlabeled subset scored per cycle
            (`None` scores the whole unlabeled pool).
        cycles: number of train/evaluate rounds.
        epochs: training epochs per cycle.
        batch_size: training batch size.
        preprocessing: the `ImagePreprocessing` turning raw images into model
            input; default `infer_preprocessing(x)`: uint8 pixels divided by 255,
            float inputs unchanged (the first log line says which). Recorded
            in the state.
        augment: apply the paper's flip + pad-crop augmentation when training.
        warm_start: start each cycle from the previous cycle's weights.
        seed: the run's seed.
        work_dir: where state and warm-start weights live; `None` keeps
            nothing on disk (no resume).
        fit_kwargs: extra `fit` arguments (e.g. `callbacks` for a learning-rate
            schedule); callbacks must be stateless across cycles.
        score_batch_size: batch size for scoring and evaluation.
        verbose: 0 silent, 1 one line per cycle, 2 also progress bars for training and scoring.
        tags: JSON-serialisable facts the loop cannot see (e.g. the model's settings), recorded
            in the config so a resume with different ones is refused.
        label: the run's name in log lines (default: the strategy's name), to tell variants of
            one strategy apart (e.g. `"random+head"`); not part of the config.

    Example:

    >>> import numpy as np, keras
    >>> def factory():
    ...     model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    ...     model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                   metrics=["accuracy"])
    ...     return model
    >>> x, y = np.random.randint(0, 255, (40, 4, 4, 1)).astype("uint8"), np.arange(40) % 2
    >>> loop = ActiveLearningLoop(factory, (x, y), (x[:8], y[:8]), "random", initial_size=10,
    ...                           query_size=5, cycles=3, epochs=1)  # doctest: +SKIP
    >>> loop.run().learning_curve()[0].tolist()  # doctest: +SKIP
    [10, 15, 20]
    """

    def __init__(
        self,
        model_factory: Callable[[], keras.Model],
        train_data,
        test_data,
        strategy: Any,
        initial_size: int,
        query_size: int,
        subset_size: int | None = None,
        cycles: int = 10,
        epochs: int = 1,
        batch_size: int = 128,
        preprocessing: ImagePreprocessing | None = None,
        augment: bool = False,
        warm_start: bool = True,
        seed: int = 0,
        work_dir: str | None = None,
        fit_kwargs: dict | None = None,
        score_batch_size: int = 512,
        verbose: int = 1,
        tags: dict | None = None,
        label: str | None = None,
    ):
        if not callable(model_factory):
            raise TypeError(
                f"Expected `model_factory` to be a callable returning a compiled model. Received: {model_factory!r}"
            )
        self.model_factory = model_factory
        self.x_train, self.y_train = _materialise(train_data, "train_data")
        self.x_test, self.y_test = _materialise(test_data, "test_data")
        # Items with NaN/inf features are never labeled (not in the initial set, never scored).
        self.finite_pool = _finite_items(self.x_train)
        if not _finite_items(self.x_test).all():
            bad = np.flatnonzero(~_finite_items(self.x_test))
            raise ValueError(
                f"Expected finite test_data images. Received: {len(bad)} of {len(self.x_test)} with NaN/inf values "
                f"(first indices {bad[:10].tolist()}); the test metrics would be NaN"
            )
        pool_size = int(self.finite_pool.sum())
        for name, value, low in (
            ("initial_size", initial_size, 1),
            ("query_size", query_size, 1),
            ("cycles", cycles, 1),
            ("epochs", epochs, 0),
            ("batch_size", batch_size, 1),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"Expected `{name}` to be an integer >= {low}. Received: {name}={value!r}")
        final_size = initial_size + (cycles - 1) * query_size
        if final_size > pool_size:
            raise ValueError(
                f"Expected initial_size + (cycles - 1) * query_size <= pool size {pool_size} (finite items). Received: "
                f"initial_size={initial_size}, query_size={query_size}, cycles={cycles} -> {final_size} labels"
            )
        if subset_size is not None and subset_size < query_size:
            raise ValueError(
                f"Expected subset_size >= query_size ({query_size}) or None. Received: subset_size={subset_size}"
            )
        if isinstance(strategy, str):
            from keras_lossal import acquisition

            self.strategy_name = strategy
            strategy = acquisition.get(strategy)
        else:
            if not callable(getattr(strategy, "select", None)):
                raise TypeError(f"Expected a strategy name or an object with `.select(...)`. Received: {strategy!r}")
            self.strategy_name = getattr(strategy, "name", type(strategy).__name__)
        self.strategy = strategy
        self.initial_size = int(initial_size)
        self.query_size = int(query_size)
        self.subset_size = None if subset_size is None else int(subset_size)
        self.cycles = int(cycles)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.preprocessing_note = None
        if preprocessing is None:
            if self.x_test.dtype != self.x_train.dtype:
                raise ValueError(
                    "Expected train and test images of one dtype to infer their preprocessing (or pass "
                    f"preprocessing=). Received {self.x_train.dtype} and {self.x_test.dtype}"
                )
            preprocessing = infer_preprocessing(self.x_train, "train_data")
            self.preprocessing_note = (
                f"preprocessing inferred from {self.x_train.dtype} images: {preprocessing.describe()}"
            )
        self.preprocessing = preprocessing
        self.augment = bool(augment)
        self.warm_start = bool(warm_start)
        self.seed = int(seed)
        self.work_dir = work_dir
        self.fit_kwargs = dict(fit_kwargs or {})
        for reserved in ("x", "y", "epochs", "batch_size", "validation_split", "shuffle"):
            if reserved in self.fit_kwargs:
                raise ValueError(f"`fit_kwargs` must not set {reserved!r}; the loop controls it.")
        self.score_batch_size = int(score_batch_size)
        self.verbose = int(verbose)
        self.tags = _jsonable(dict(tags or {}))
        self.label = str(label) if label is not None else self.strategy_name
        self.model: keras.Model | None = None

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """The run's configuration as recorded in the state (checked on resume)."""
        return {
            "strategy": self.strategy_name,
            "initial_size": self.initial_size,
            "query_size": self.query_size,
            "subset_size": self.subset_size,
            "cycles": self.cycles,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "augment": self.augment,
            "warm_start": self.warm_start,
            "seed": self.seed,
            "pool_size": int(len(self.x_train)),
            "test_size": int(len(self.x_test)),
            "preprocessing": self.preprocessing.get_config(),
            "tags": self.tags,
        }

    def initial_indices(self) -> np.ndarray:
        """The `initial_size` random pool indices labeled before cycle 0 (seeded)."""
        rng = np.random.default_rng(cycle_seed(self.seed, 0, _PURPOSE_INITIAL))
        order = rng.permutation(len(self.x_train))
        return order[self.finite_pool[order]][: self.initial_size]

    # ------------------------------------------------------------------- state
    def _state_path(self) -> str | None:
        return None if self.work_dir is None else os.path.join(self.work_dir, STATE_FILE)

    def check_resumable(self) -> None:
        """Raises `ValueError` if `work_dir` holds a run with a different configuration."""
        self._load_state()

    def _load_state(self) -> dict | None:
        path = self._state_path()
        if path is None or not os.path.exists(path):
            return None
        with open(path) as stream:
            state = json.load(stream)
        recorded = state.get("config", {})
        mismatched = {
            key: (recorded.get(key), value)
            for key, value in self.config().items()
            if recorded.get(key) != _jsonable(value)
        }
        if mismatched:
            raise ValueError(
                f"{path} was written by a run with a different configuration; refusing to resume. "
                f"Differences (recorded, requested): {mismatched}. Use another work_dir or delete it."
            )
        return state

    def _save_state(self, cycles: list[dict], labeled: list[int], weights: str | None, finished: bool) -> None:
        path = self._state_path()
        if path is None:
            return
        state = {
            "version": STATE_VERSION,
            "config": _jsonable(self.config()),
            "finished": finished,
            # Every random draw of cycle c comes from cycle_seed(seed, c, ...), so this is the RNG state.
            "rng": {
                "seed": self.seed,
                "next_cycle": len(cycles),
                "derivation": "numpy.SeedSequence([seed, cycle, purpose])",
            },
            "labeled_indices": [int(index) for index in labeled],
            "cycles": _jsonable(cycles),
            "weights": weights,
        }
        write_json_atomic(path, state)

    def _save_weights(self, model: keras.Model, cycle: int) -> str | None:
        if self.work_dir is None or not self.warm_start:
            return None
        directory = os.path.join(self.work_dir, _WEIGHTS_DIR)
        os.makedirs(directory, exist_ok=True)
        name = f"cycle_{cycle:03d}.weights.npz"
        temporary = os.path.join(directory, f".{name}.tmp.npz")
        # Model weights only: a warm start carries weights over with a fresh optimizer, as the reference code.
        np.savez(temporary, *model.get_weights())
        os.replace(temporary, os.path.join(directory, name))
        return os.path.join(_WEIGHTS_DIR, name)

    def _prune_weights(self, keep: str | None) -> None:
        directory = os.path.join(self.work_dir or "", _WEIGHTS_DIR)
        if self.work_dir is None or not os.path.isdir(directory):
            return
        for name in os.listdir(directory):
            if keep is None or os.path.join(_WEIGHTS_DIR, name) != keep:
                os.remove(os.path.join(directory, name))

    # --------------------------------------------------------------------- run
    def run(self, callbacks: list | None = None) -> LoopResult:
        """Runs (or resumes) all cycles and returns the `LoopResult`.

        Args:
            callbacks: objects with optional `on_cycle_end(cycle, record, loop)`
                hooks, called after a cycle's state is saved (used for progress
                output and, in tests, to interrupt a run).
        """
        if self.work_dir is not None:
            os.makedirs(self.work_dir, exist_ok=True)
        state = self._load_state()
        if state is not None:
            records = list(state["cycles"])
            labeled = list(state["labeled_indices"])
            weights = state.get("weights")
            if self.verbose and records and not state.get("finished"):
                print(f"{self._prefix()} resuming after cycle {len(records) - 1}", flush=True)
        else:
            records, labeled, weights = [], [int(i) for i in self.initial_indices()], None
        is_labeled = np.zeros(len(self.x_train), dtype=bool)
        is_labeled[labeled] = True
        previous_weights = None if weights is None else os.path.join(self.work_dir, weights)

        if self.verbose and self.preprocessing_note and len(records) < self.cycles:
            print(f"{self._prefix()} {self.preprocessing_note}", flush=True)
        skipped = int(np.sum(~self.finite_pool))
        if self.verbose and skipped and len(records) < self.cycles:
            print(f"{self._prefix()} {skipped} pool items have NaN/inf values; they are never labeled", flush=True)
        for cycle in range(len(records), self.cycles):
            keras.utils.set_random_seed(cycle_seed(self.seed, cycle, _PURPOSE_MODEL))
            model = self.model_factory()
            self._check_labels(model)  # every cycle, so a resumed run builds its models like an uninterrupted one
            if self.warm_start and previous_weights is not None:
                _load_weights(model, previous_weights)
            elif self.warm_start and self.model is not None:
                model.set_weights(self.model.get_weights())
            record = {"cycle": cycle, "num_labeled": len(labeled)}

            labeled_array = np.asarray(labeled, dtype=np.int64)
            train = data_lib.training_pipeline(
                self.x_train[labeled_array],
                self.y_train[labeled_array],
                self.preprocessing,
                batch_size=self.batch_size,
                augment=self.augment,
                seed=cycle_seed(self.seed, cycle, _PURPOSE_SHUFFLE),
            )
            start = time.perf_counter()
            # The pipeline already shuffles, reproducibly from the cycle seed.
            history = model.fit(
                train, epochs=self.epochs, shuffle=False, verbose=1 if self.verbose >= 2 else 0, **self.fit_kwargs
            )
            record["train_seconds"] = time.perf_counter() - start
            for key, values in history.history.items():
                if values:
                    record[f"train_{key}"] = float(values[-1])
            if getattr(model, "head_detached", None) is not None:
                record["head_detached"] = float(keras.ops.convert_to_numpy(model.head_detached))

            test = data_lib.evaluation_pipeline(self.x_test, self.y_test, self.preprocessing, self.score_batch_size)
            metrics = model.evaluate(test, verbose=0, return_dict=True)
            record.update({key: float(value) for key, value in metrics.items()})

            if cycle < self.cycles - 1:
                start = time.perf_counter()
                chosen = self._acquire(model, is_labeled, cycle)
                record["acquisition_seconds"] = time.perf_counter() - start
                is_labeled[chosen] = True
                labeled.extend(int(index) for index in chosen)
                record["selected"] = [int(index) for index in chosen]
                selected_labels = np.bincount(self.y_train[chosen], minlength=int(self.y_train.max()) + 1)
                record["selected_class_counts"] = selected_labels.tolist()

            self.model = model
            new_weights = self._save_weights(model, cycle)
            self._save_state(records + [record], labeled, new_weights, finished=cycle == self.cycles - 1)
            self._prune_weights(new_weights)
            records.append(record)
            previous_weights = None if new_weights is None else os.path.join(self.work_dir, new_weights)
            if self.verbose:
                print(
                    f"{self._prefix()} cycle {cycle}: {record['num_labeled']} labels, "
                    f"test {_comparable_metrics(record)}, train {record['train_seconds']:.1f}s",
                    flush=True,
                )
            for callback in callbacks or []:
                hook = getattr(callback, "on_cycle_end", None)
                if hook is not None:
                    hook(cycle, record, self)

        if self.model is None and self.warm_start and previous_weights is not None and os.path.exists(previous_weights):
            # A finished run loaded from disk: rebuild its last model for the caller (if its weights were kept;
            # a results archive may hold only the states, and then `LoopResult.model` is None).
            self.model = self.model_factory()
            _load_weights(self.model, previous_weights)
        return LoopResult(records, labeled, _jsonable(self.config()), self.model)

    def _prefix(self) -> str:
        return f"[{self.label} seed {self.seed}]"

    def _check_labels(self, model: keras.Model) -> None:
        """Refuses labels outside the model's classes before training (TensorFlow's error names neither)."""
        classes = _output_classes(model, self.preprocessing(self.x_train[:1]))
        if classes is None:
            return
        for name, labels in (("train_data", self.y_train), ("test_data", self.y_test)):
            outside = np.flatnonzero((labels < 0) | (labels >= classes))
            if len(outside):
                raise ValueError(
                    f"Expected class labels in [0, {classes}) for a model with {classes} output classes. Received: "
                    f"{name} label {labels[outside[0]]} at index {outside[0]} ({len(outside)} label(s) outside)"
                )

    def _acquire(self, model: keras.Model, is_labeled: np.ndarray, cycle: int) -> np.ndarray:
        unlabeled = np.flatnonzero(~is_labeled & self.finite_pool)
        rng = np.random.default_rng(cycle_seed(self.seed, cycle, _PURPOSE_SUBSET))
        if self.subset_size is not None and self.subset_size < len(unlabeled):
            candidates = np.sort(rng.choice(unlabeled, size=self.subset_size, replace=False))
        else:
            candidates = unlabeled
        pool = self.preprocessing(self.x_train[candidates]).numpy()
        options = {}
        if self.verbose >= 2 and _accepts(self.strategy.select, "verbose"):
            options["verbose"] = 1
        if _accepts(self.strategy.select, "labeled"):
            # Diversity strategies (core-set) place new centers far from what is already labeled.
            options["labeled"] = self.preprocessing(self.x_train[is_labeled]).numpy()
        selection = self.strategy.select(
            model,
            pool,
            self.query_size,
            subset_size=None,
            seed=cycle_seed(self.seed, cycle, _PURPOSE_STRATEGY),
            batch_size=self.score_batch_size,
            **options,
        )
        positions = np.asarray(selection.indices, dtype=np.int64).reshape(-1)
        if len(positions) != self.query_size or len(np.unique(positions)) != len(positions):
            raise RuntimeError(
                f"Strategy {self.strategy_name!r} returned {len(positions)} indices "
                f"({len(np.unique(positions))} distinct); expected {self.query_size} distinct positions."
            )
        if positions.min() < 0 or positions.max() >= len(candidates):
            raise RuntimeError(
                f"Strategy {self.strategy_name!r} returned positions outside the scored pool of {len(candidates)} items."
            )
        return candidates[positions]


def _load_weights(model: keras.Model, path: str) -> None:
    if not path.endswith(".npz"):  # a Keras weights file
        model.load_weights(path)
        return
    with np.load(path) as stored:
        weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    expected = len(model.get_weights())
    if len(weights) != expected:
        raise ValueError(f"{path} holds {len(weights)} weight arrays; the model from model_factory has {expected}.")
    model.set_weights(weights)


def _comparable_metrics(record: dict) -> dict[str, float]:
    """The test metrics a log line shows: `task_loss` for every model (a `LossLearningModel`'s `loss` is the joint one)."""
    shown = {"accuracy": record.get("accuracy"), "task_loss": record.get("task_loss", record.get("loss"))}
    shown["ranking_accuracy"] = record.get("ranking_accuracy")
    return {key: round(value, 4) for key, value in shown.items() if value is not None}


def _output_classes(model: keras.Model, sample) -> int | None:
    """The number of classes of a classifier's `(batch, classes)` output (2 for one sigmoid unit), else `None`."""
    output = model(sample, training=False)
    if isinstance(output, dict):
        output = output.get("output")
    if output is None or isinstance(output, (list, tuple, dict)) or len(output.shape) != 2:
        return None
    return max(int(output.shape[-1]), 2)


def _accepts(function, argument: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return argument in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _finite_items(x: np.ndarray) -> np.ndarray:
    """Per item: True when every value is finite (always True for integer images)."""
    if not np.issubdtype(x.dtype, np.floating):
        return np.ones(len(x), bool)
    return np.isfinite(x.reshape(len(x), -1)).all(axis=1)


def _materialise(dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(dataset, tf.data.Dataset):
        images, labels = [], []
        for element in dataset.as_numpy_iterator():
            if not isinstance(element, tuple) or len(element) != 2:
                raise ValueError(f"Expected `{name}` to yield unbatched (image, label) pairs. Received {type(element)}")
            images.append(element[0])
            labels.append(element[1])
        if not images:
            raise ValueError(f"Expected a non-empty `{name}`.")
        dataset = (np.stack(images), np.asarray(labels))
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        x, y = data_lib.as_images(dataset[0], name), np.asarray(dataset[1]).reshape(-1)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"Expected `{name}` images and labels of one non-zero length. Received {len(x)} and {len(y)}"
            )
        return x, data_lib.as_labels(y, len(x), f"{name} labels")
    raise TypeError(
        f"Expected `{name}` as (x, y) NumPy arrays or a tf.data.Dataset. Received: {type(dataset).__name__}"
    )
