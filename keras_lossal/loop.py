"""`ActiveLearningLoop`: the paper's protocol (train, evaluate, acquire, label), resumable.

Every random choice of cycle `c` is seeded from `(seed, c)` alone (the
training's from `(training_seed, c)` when that is set), and the loop
writes its whole state (labeled indices in labeling order, per-cycle metrics,
config) atomically after each cycle, together with the weights a warm start
needs (`keras_lossal.loop_state`). A run killed at any point resumes from the
last finished cycle and ends with exactly the labeled sets of an uninterrupted
run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_lossal import acquisition
from keras_lossal import data as data_lib
from keras_lossal.callbacks import StopOnNonFiniteLoss
from keras_lossal.contracts import check_integer
from keras_lossal.loop_state import STATE_FILE, RunDirectory, jsonable, load_weights, write_json_atomic
from keras_lossal.preprocessing import ImagePreprocessing, infer_preprocessing

__all__ = ["ActiveLearningLoop", "LoopConfig", "LoopResult", "cycle_seed", "write_json_atomic", "STATE_FILE"]

# The `purpose` part of cycle seeds: one independent stream per random thing in a cycle.
_PURPOSE_MODEL, _PURPOSE_SHUFFLE, _PURPOSE_SUBSET, _PURPOSE_STRATEGY, _PURPOSE_INITIAL = range(5)
# `fit` arguments the loop sets itself.
_RESERVED_FIT_ARGUMENTS = ("x", "y", "epochs", "batch_size", "validation_split", "shuffle")


def cycle_seed(seed: int, cycle: int, purpose: int = 0) -> int:
    """A 31-bit seed derived from `(seed, cycle, purpose)` only, so any cycle can be replayed alone.

    Example:

    >>> cycle_seed(0, 3) == cycle_seed(0, 3), cycle_seed(0, 3) != cycle_seed(0, 4)
    (True, True)
    """
    sequence = np.random.SeedSequence([int(seed), int(cycle), int(purpose)])
    return int(sequence.generate_state(1)[0] % (2**31 - 1))


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The settings of an active-learning protocol, validated when built.

    Shared by `ActiveLearningLoop` and `keras_lossal.experiment.run_experiment`.
    Integral floats (`10.0`) are accepted and stored as integers.

    Args:
        initial_size: number of randomly chosen items labeled before cycle 0.
        query_size: K, items labeled per cycle.
        subset_size: M, size of the random unlabeled subset scored per cycle
            (`None` scores the whole unlabeled pool); at least `query_size`.
        cycles: number of train/evaluate rounds; the final labeled set has
            `initial_size + (cycles - 1) * query_size` items (`final_size`).
        epochs: training epochs per cycle.
        batch_size: training batch size.
        augment: apply the paper's flip + pad-crop augmentation when training.
        warm_start: start each cycle from the previous cycle's weights.
        seed: the run's seed: the initial labeled set, the scored subsets, the
            strategy's draws and, unless `training_seed` is set, the training.
        score_batch_size: batch size for scoring and evaluation.
        verbose: 0 silent, 1 one line per cycle, 2 also progress bars for training and scoring.
        training_seed: when set, replaces `seed` for the randomness of training
            only (each cycle's model initialisation, dropout and the shuffle and
            augmentation order), so two runs with one `seed` and different
            `training_seed`s train differently on the same labeled items (with
            `random`, exactly the same ones): the spread between them is the
            training noise alone. `None` (the default) trains from `seed`, as
            runs always did; the run's state records it only when set.

    Example:

    >>> LoopConfig(initial_size=1000, query_size=1000, cycles=10).final_size
    10000
    >>> LoopConfig(initial_size=10, query_size=5, training_seed=-1)
    Traceback (most recent call last):
    ...
    ValueError: Expected training_seed to be an integer >= 0 or None. Received: training_seed=-1
    >>> LoopConfig(initial_size=100, query_size=50, subset_size=20)
    Traceback (most recent call last):
    ...
    ValueError: Expected subset_size >= query_size (50) or None. Received: subset_size=20
    """

    initial_size: int
    query_size: int
    subset_size: int | None = None
    cycles: int = 10
    epochs: int = 1
    batch_size: int = 128
    augment: bool = False
    warm_start: bool = True
    seed: int = 0
    score_batch_size: int = 512
    verbose: int = 1
    training_seed: int | None = None

    def __post_init__(self):
        lowest = {"initial_size": 1, "query_size": 1, "cycles": 1, "epochs": 0, "batch_size": 1, "seed": 0}
        lowest.update(score_batch_size=1, verbose=0)
        for name, low in lowest.items():
            object.__setattr__(self, name, check_integer(name, getattr(self, name), low, integral_floats=True))
        subset_size = self.subset_size
        if subset_size is not None:
            try:
                subset_size = check_integer("subset_size", subset_size, self.query_size, integral_floats=True)
            except ValueError:
                raise ValueError(
                    f"Expected subset_size >= query_size ({self.query_size}) or None. Received: subset_size={subset_size}"
                ) from None
            object.__setattr__(self, "subset_size", subset_size)
        training_seed = check_integer("training_seed", self.training_seed, 0, optional=True, integral_floats=True)
        object.__setattr__(self, "training_seed", training_seed)
        object.__setattr__(self, "augment", bool(self.augment))
        object.__setattr__(self, "warm_start", bool(self.warm_start))

    @property
    def effective_training_seed(self) -> int:
        """The seed of the training's random draws: `training_seed` when set, else `seed`."""
        return self.seed if self.training_seed is None else self.training_seed

    @property
    def final_size(self) -> int:
        """How many items are labeled after the last cycle."""
        return self.initial_size + (self.cycles - 1) * self.query_size

    def check_pool(self, pool_size: int) -> None:
        """Raises `ValueError` when the pool cannot supply `final_size` labels."""
        if self.final_size > pool_size:
            raise ValueError(
                f"Expected initial_size + (cycles - 1) * query_size <= pool size {pool_size} (finite items). Received: "
                f"initial_size={self.initial_size}, query_size={self.query_size}, cycles={self.cycles} -> "
                f"{self.final_size} labels"
            )


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
    from `(seed, c)` (the training from `(training_seed, c)` when set), state
    is saved atomically to `work_dir` after every cycle, and `run()` resumes
    from it. For bit-identical resumes on any hardware also call
    `tf.config.experimental.enable_op_determinism()`.

    Args:
        model_factory: a callable returning a new *compiled* Keras model, e.g. a
            `LossLearningModel` for the `learning_loss` strategy.
        train_data: `(x, y)` NumPy arrays of raw inputs and integer labels (the
            pool; labels are revealed only when an index is labeled), or a
            `tf.data.Dataset` of unbatched `(input, label)` pairs, read into
            memory once. Inputs are images `(N, H, W[, C])`, tabular features
            `(N, F)`, or any `(N, ...)` with `preprocessing="identity"` (e.g.
            1-D signals `(N, T, C)`). Labels must be integers in `[0, classes)`
            of the model's output (checked before the first cycle trains).
        test_data: `(x, y)` arrays or a `tf.data.Dataset`, like `train_data`.
        strategy: an acquisition strategy name (`keras_lossal.acquisition.get`)
            or a `keras_lossal.acquisition.Strategy`; its `select` is called with
            the arguments of `Strategy.select`, `labeled` included (the labeled
            items, preprocessed). Any other object is refused with a `TypeError`.
        config: the `LoopConfig`: sizes, cycles, epochs, batch size, augmentation,
            warm start, seed, training seed and verbosity (validated when it was built).
        preprocessing: the `ImagePreprocessing` turning raw images into model
            input; default `infer_preprocessing(x)`: uint8 pixels divided by 255,
            float inputs unchanged (the first log line says which). Non-image
            inputs use `keras_lossal.preprocessing.IdentityPreprocessing` (`"identity"`;
            the default for `(N, F)` features): cast to float32, nothing else,
            and `augment` must stay off. Recorded in the state.
        work_dir: where state and warm-start weights live; `None` keeps
            nothing on disk (no resume).
        fit_kwargs: extra `fit` arguments (e.g. `callbacks` for a learning-rate
            schedule); callbacks must be stateless across cycles.
        tags: JSON-serialisable facts the loop cannot see (e.g. the model's settings), recorded
            in the config so a resume with different ones is refused.
        label: the run's name in log lines (default: the strategy's name), to tell variants of
            one strategy apart (e.g. `"random+head"`); not part of the config.
        replay: labeled pool indices in labeling order (a recorded run's `LoopResult.labeled_indices`), at
            least the final labeled set's size: the initial set and every cycle's picks are taken
            from it instead of from the seed and the strategy (nothing is scored), so a recorded
            run's labeled sets are trained again, e.g. with another `training_seed` to measure how
            much the training alone moves the learning curve. Recorded in the config (its SHA-256).

    Example:

    >>> import numpy as np, keras
    >>> def factory():
    ...     model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    ...     model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                   metrics=["accuracy"])
    ...     return model
    >>> x, y = np.random.randint(0, 255, (40, 4, 4, 1)).astype("uint8"), np.arange(40) % 2
    >>> config = LoopConfig(initial_size=10, query_size=5, cycles=3, epochs=1)
    >>> loop = ActiveLearningLoop(factory, (x, y), (x[:8], y[:8]), "random", config)  # doctest: +SKIP
    >>> loop.run().learning_curve()[0].tolist()  # doctest: +SKIP
    [10, 15, 20]
    """

    def __init__(
        self,
        model_factory: Callable[[], keras.Model],
        train_data,
        test_data,
        strategy: Any,
        config: LoopConfig,
        preprocessing: ImagePreprocessing | data_lib.IdentityPreprocessing | str | None = None,
        work_dir: str | None = None,
        fit_kwargs: dict | None = None,
        tags: dict | None = None,
        label: str | None = None,
        replay=None,
    ):
        if not callable(model_factory):
            raise TypeError(
                f"Expected `model_factory` to be a callable returning a compiled model. Received: {model_factory!r}"
            )
        if not isinstance(config, LoopConfig):
            raise TypeError(f"Expected `config` to be a keras_lossal.LoopConfig. Received: config={config!r}")
        self.model_factory = model_factory
        self.x_train, self.y_train = _materialise(train_data, "train_data", preprocessing)
        self.x_test, self.y_test = _materialise(test_data, "test_data", preprocessing)
        _check_finite_test_images(self.x_test)
        # Items with NaN/inf features are never labeled (not in the initial set, never scored).
        self.finite_pool = _finite_items(self.x_train)
        self.loop_config = config
        self.loop_config.check_pool(int(self.finite_pool.sum()))
        self.strategy, self.strategy_name = _resolve_strategy(strategy)
        self.strategy_options = _non_default_options(self.strategy)
        self.preprocessing, self.preprocessing_note = self._resolve_preprocessing(preprocessing)
        self._check_augment()
        self.work_dir = work_dir
        self.run_directory = None if work_dir is None else RunDirectory(work_dir)
        self.fit_kwargs = _check_fit_kwargs(fit_kwargs)
        self.tags = jsonable(dict(tags or {}))
        self.label = str(label) if label is not None else self.strategy_name
        self.replay = None if replay is None else self._check_replay(replay)
        self.replay_sha256 = None if replay is None else hashlib.sha256(self.replay.tobytes()).hexdigest()
        self.model: keras.Model | None = None

    def _check_replay(self, replay) -> np.ndarray:
        """`replay` as int64 indices: at least `final_size` distinct, finite pool items (only those are used)."""
        indices = np.asarray(replay)
        needed = self.loop_config.final_size
        if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(
                f"Expected replay to be a 1-D sequence of integer pool indices. Received shape {indices.shape}"
            )
        if len(indices) < needed:
            raise ValueError(
                f"Expected replay to hold at least the final labeled set's {needed} indices "
                f"(initial_size + (cycles - 1) * query_size). Received {len(indices)}"
            )
        indices = indices[:needed].astype(np.int64)
        outside = indices[(indices < 0) | (indices >= len(self.x_train))]
        if len(outside):
            raise ValueError(f"Expected replay indices in [0, {len(self.x_train)}). Received {outside[:5].tolist()}")
        if len(np.unique(indices)) != len(indices):
            raise ValueError("Expected distinct replay indices: an item is labeled once. Received repeated indices")
        not_finite = indices[~self.finite_pool[indices]]
        if len(not_finite):
            raise ValueError(
                f"Expected replay indices of finite pool items. Received NaN/inf items {not_finite[:5].tolist()}"
            )
        return indices

    def _resolve_preprocessing(self, preprocessing) -> tuple[Any, str | None]:
        """The given preprocessing, or the one the inputs imply (images: their dtype) and the note saying so."""
        if self.x_train.ndim != 4 or preprocessing == data_lib.IDENTITY or _is_identity(preprocessing):
            if self.x_test.shape[1:] != self.x_train.shape[1:]:
                raise ValueError(
                    "Expected train_data and test_data inputs of one item shape. Received "
                    f"{self.x_train.shape[1:]} and {self.x_test.shape[1:]}"
                )
        if preprocessing is not None or self.x_train.ndim != 4:
            resolved, inferred = data_lib.input_preprocessing(self.x_train, preprocessing, "train_data")
            note = (
                f"inputs of shape {self.x_train.shape[1:]} are used unchanged (no preprocessing)" if inferred else None
            )
            return resolved, note
        if self.x_test.dtype != self.x_train.dtype:
            raise ValueError(
                "Expected train and test images of one dtype to infer their preprocessing (or pass "
                f"preprocessing=). Received {self.x_train.dtype} and {self.x_test.dtype}"
            )
        inferred = infer_preprocessing(self.x_train, "train_data")
        return inferred, f"preprocessing inferred from {self.x_train.dtype} images: {inferred.describe()}"

    def _check_augment(self) -> None:
        if self.loop_config.augment and self.x_train.ndim != 4:
            raise ValueError(
                f"Expected images (N, H, W, C) for augment=True (flip and crop). Received train_data of shape "
                f"{self.x_train.shape}; pass augment=False"
            )

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        """The run's configuration as recorded in the state (checked on resume)."""
        settings = self.loop_config
        config = {
            "strategy": self.strategy_name,
            "initial_size": settings.initial_size,
            "query_size": settings.query_size,
            "subset_size": settings.subset_size,
            "cycles": settings.cycles,
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "augment": settings.augment,
            "warm_start": settings.warm_start,
            "seed": settings.seed,
        }
        if settings.training_seed is not None:  # recorded only when set, so other runs' states stay as they were
            config["training_seed"] = settings.training_seed
        if self.replay is not None:  # likewise
            config["replay_sha256"] = self.replay_sha256
        # Always recorded (null: the defaults), so a state that says nothing about them is one written before.
        config["strategy_options"] = self.strategy_options
        config.update(
            pool_size=int(len(self.x_train)),
            test_size=int(len(self.x_test)),
            preprocessing=self.preprocessing.get_config(),
            tags=self.tags,
        )
        return config

    def _resume_config(self) -> dict:
        """The config a recorded run must match: `config()` with `training_seed` and `replay_sha256` even when unset.

        A state without a key (every run before it existed) matches `None`;
        one that recorded a training seed or a replay does not match a run without one.
        """
        return {
            **self.config(),
            "training_seed": self.loop_config.training_seed,
            "replay_sha256": self.replay_sha256,
        }

    def initial_indices(self) -> np.ndarray:
        """The `initial_size` pool indices labeled before cycle 0: random (seeded), or the replay's first ones."""
        if self.replay is not None:
            return self.replay[: self.loop_config.initial_size]
        rng = np.random.default_rng(cycle_seed(self.loop_config.seed, 0, _PURPOSE_INITIAL))
        order = rng.permutation(len(self.x_train))
        return order[self.finite_pool[order]][: self.loop_config.initial_size]

    def check_resumable(self) -> None:
        """Raises `ValueError` if `work_dir` holds a run with a different configuration."""
        if self.run_directory is not None:
            self.run_directory.load(self._resume_config(), unrecorded_ok=_UNRECORDED_OK)

    # --------------------------------------------------------------------- run
    def run(self, callbacks: list | None = None) -> LoopResult:
        """Runs (or resumes) all cycles and returns the `LoopResult`.

        Args:
            callbacks: objects with optional `on_cycle_end(cycle, record, loop)`
                hooks, called after a cycle's state is saved (used for progress
                output and, in tests, to interrupt a run).
        """
        progress = self._resume()
        self._announce(progress)
        last = self.loop_config.cycles - 1
        for cycle in range(len(progress.records), last + 1):
            model = self._cycle_model(cycle, progress)
            record = {"cycle": cycle, "num_labeled": len(progress.labeled)}
            record.update(self._train(model, progress.labeled, cycle))
            record.update(self._evaluate(model))
            if cycle < last:
                record.update(self._acquire(model, progress, cycle))
            self._save_cycle(model, record, progress, finished=cycle == last)
            self._log_cycle(record)
            for callback in callbacks or []:
                hook = getattr(callback, "on_cycle_end", None)
                if hook is not None:
                    hook(cycle, record, self)
        return self._result(progress)

    def _resume(self) -> _Progress:
        """The progress recorded in `work_dir` (refusing a different configuration), or a fresh start."""
        if self.run_directory is None:
            return _Progress([], self.initial_indices(), len(self.x_train), None)
        os.makedirs(self.run_directory.path, exist_ok=True)
        state = self.run_directory.load(self._resume_config(), unrecorded_ok=_UNRECORDED_OK)
        if state is None:
            return _Progress([], self.initial_indices(), len(self.x_train), None)
        if self.loop_config.verbose and state["cycles"] and not state.get("finished"):
            print(f"{self._prefix()} resuming after cycle {len(state['cycles']) - 1}", flush=True)
        weights = self.run_directory.weights_path(state.get("weights"))
        return _Progress(state["cycles"], state["labeled_indices"], len(self.x_train), weights)

    def _announce(self, progress: _Progress) -> None:
        """Says, before training, what the loop decided for the caller: the preprocessing, skipped items."""
        if not self.loop_config.verbose or len(progress.records) >= self.loop_config.cycles:
            return
        if self.preprocessing_note:
            print(f"{self._prefix()} {self.preprocessing_note}", flush=True)
        skipped = int(np.sum(~self.finite_pool))
        if skipped:
            print(f"{self._prefix()} {skipped} pool items have NaN/inf values; they are never labeled", flush=True)

    def _cycle_model(self, cycle: int, progress: _Progress) -> keras.Model:
        """The cycle's model: a fresh one from the factory (seeded by the cycle), warm-started when the settings say so.

        After the first cycle, the previous cycle's model object is reset to
        exactly that state instead (the fresh model's variables and optimizer
        state, the previous weights for a warm start), so its compiled
        train, test and scoring functions are traced once per run, not once per cycle.
        """
        keras.utils.set_random_seed(cycle_seed(self.loop_config.effective_training_seed, cycle, _PURPOSE_MODEL))
        model = self.model_factory()
        self._check_labels(model)  # every cycle, so a resumed run builds its models like an uninterrupted one
        warm = self.loop_config.warm_start
        if self.model is not None and _reset_to(self.model, model, keep_weights=warm):
            return self.model
        if warm and progress.weights is not None:
            load_weights(model, progress.weights)
        elif warm and self.model is not None:
            model.set_weights(self.model.get_weights())
        return model

    def _train(self, model: keras.Model, labeled: list[int], cycle: int) -> dict:
        """Fits `model` on the labeled items; returns the training time and the last epoch's metrics."""
        settings = self.loop_config
        labeled_array = np.asarray(labeled, dtype=np.int64)
        train = data_lib.training_pipeline(
            self.x_train[labeled_array],
            self.y_train[labeled_array],
            self.preprocessing,
            batch_size=settings.batch_size,
            augment=settings.augment,
            seed=cycle_seed(settings.effective_training_seed, cycle, _PURPOSE_SHUFFLE),
        )
        start = time.perf_counter()
        fit_kwargs = dict(self.fit_kwargs)
        # A NaN/inf loss raises before the cycle is recorded, so no state is saved from NaN weights.
        fit_kwargs["callbacks"] = [StopOnNonFiniteLoss(), *fit_kwargs.get("callbacks", [])]
        # The pipeline already shuffles, reproducibly from the cycle seed.
        history = model.fit(
            train, epochs=settings.epochs, shuffle=False, verbose=1 if settings.verbose >= 2 else 0, **fit_kwargs
        )
        record = {"train_seconds": time.perf_counter() - start}
        record.update({f"train_{key}": float(values[-1]) for key, values in history.history.items() if values})
        if getattr(model, "head_detached", None) is not None:
            record["head_detached"] = float(keras.ops.convert_to_numpy(model.head_detached))
        return record

    def _evaluate(self, model: keras.Model) -> dict:
        """The final-epoch model's test metrics."""
        test = data_lib.evaluation_pipeline(
            self.x_test, self.y_test, self.preprocessing, self.loop_config.score_batch_size
        )
        metrics = model.evaluate(test, verbose=0, return_dict=True)
        return {key: float(value) for key, value in metrics.items()}

    def _acquire(self, model: keras.Model, progress: _Progress, cycle: int) -> dict:
        """Scores a seeded random subset of the unlabeled pool, labels the strategy's picks, records them."""
        start = time.perf_counter()
        if self.replay is not None:
            chosen = self.replay[len(progress.labeled) : len(progress.labeled) + self.loop_config.query_size]
        else:
            candidates = self._candidates(progress.is_labeled, cycle)
            chosen = candidates[self._select(model, candidates, progress.is_labeled, cycle)]
        record = {"acquisition_seconds": time.perf_counter() - start}
        progress.label(chosen)
        record["selected"] = [int(index) for index in chosen]
        selected_labels = np.bincount(self.y_train[chosen], minlength=int(self.y_train.max()) + 1)
        record["selected_class_counts"] = selected_labels.tolist()
        return record

    def _candidates(self, is_labeled: np.ndarray, cycle: int) -> np.ndarray:
        """The pool indices scored in cycle `cycle`: M random finite unlabeled items (all when fewer), sorted."""
        unlabeled = np.flatnonzero(~is_labeled & self.finite_pool)
        subset_size = self.loop_config.subset_size
        if subset_size is None or subset_size >= len(unlabeled):
            return unlabeled
        rng = np.random.default_rng(cycle_seed(self.loop_config.seed, cycle, _PURPOSE_SUBSET))
        return np.sort(rng.choice(unlabeled, size=subset_size, replace=False))

    def _select(self, model: keras.Model, candidates: np.ndarray, is_labeled: np.ndarray, cycle: int) -> np.ndarray:
        """The strategy's picks among `candidates`, as positions in it (checked: `query_size` distinct ones)."""
        settings = self.loop_config
        pool = self.preprocessing(self.x_train[candidates]).numpy()
        selection = self.strategy.select(
            model,
            pool,
            settings.query_size,
            subset_size=None,
            seed=cycle_seed(settings.seed, cycle, _PURPOSE_STRATEGY),
            batch_size=settings.score_batch_size,
            verbose=1 if settings.verbose >= 2 else 0,
            labeled=self.preprocessing(self.x_train[is_labeled]).numpy(),
        )
        positions = np.asarray(selection.indices, dtype=np.int64).reshape(-1)
        if len(positions) != settings.query_size or len(np.unique(positions)) != len(positions):
            raise RuntimeError(
                f"Strategy {self.strategy_name!r} returned {len(positions)} indices "
                f"({len(np.unique(positions))} distinct); expected {settings.query_size} distinct positions."
            )
        if positions.min() < 0 or positions.max() >= len(candidates):
            raise RuntimeError(
                f"Strategy {self.strategy_name!r} returned positions outside the scored pool of {len(candidates)} items."
            )
        return positions

    def _save_cycle(self, model: keras.Model, record: dict, progress: _Progress, finished: bool) -> None:
        """Keeps the model, writes the weights a warm start needs and the state, then drops older weights."""
        self.model = model
        if self.run_directory is None:
            progress.finish_cycle(record, None)
            return
        weights = None
        if self.loop_config.warm_start:
            weights = self.run_directory.save_weights(model, record["cycle"])
        self.run_directory.save(self.config(), progress.records + [record], progress.labeled, weights, finished)
        self.run_directory.prune_weights(weights)
        progress.finish_cycle(record, self.run_directory.weights_path(weights))

    def _log_cycle(self, record: dict) -> None:
        if self.loop_config.verbose:
            print(
                f"{self._prefix()} cycle {record['cycle']}: {record['num_labeled']} labels, "
                f"test {_comparable_metrics(record)}, train {record['train_seconds']:.1f}s",
                flush=True,
            )

    def _result(self, progress: _Progress) -> LoopResult:
        """The run's `LoopResult`; a finished run loaded from disk gets its last model back if its weights were kept."""
        weights = progress.weights
        if self.model is None and self.loop_config.warm_start and weights is not None and os.path.exists(weights):
            # A results archive may hold only the states; then `LoopResult.model` is None.
            self.model = self.model_factory()
            load_weights(self.model, weights)
        return LoopResult(progress.records, progress.labeled, jsonable(self.config()), self.model)

    def _prefix(self) -> str:
        settings = self.loop_config
        training = "" if settings.training_seed is None else f" training seed {settings.training_seed}"
        return f"[{self.label} seed {settings.seed}{training}]"

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


class _Progress:
    """What the finished cycles produced, changed by every cycle: records, the labeled set, the last weights.

    Args:
        records: per-cycle records so far.
        labeled: labeled pool indices in labeling order.
        pool_size: number of pool items.
        weights: absolute path of the last finished cycle's weights, or `None`.
    """

    def __init__(self, records: list[dict], labeled, pool_size: int, weights: str | None):
        self.records = list(records)
        self.labeled = [int(index) for index in labeled]
        self.is_labeled = np.zeros(pool_size, dtype=bool)
        self.is_labeled[self.labeled] = True
        self.weights = weights

    def label(self, indices: np.ndarray) -> None:
        """Marks `indices` labeled, appended in their order."""
        self.is_labeled[indices] = True
        self.labeled.extend(int(index) for index in indices)

    def finish_cycle(self, record: dict, weights: str | None) -> None:
        self.records.append(record)
        self.weights = weights


def _reset_to(model: keras.Model, fresh: keras.Model, keep_weights: bool) -> bool:
    """Gives `model` the starting state of `fresh` (its weights too unless `keep_weights`); `False` if they differ in structure.

    Every variable is copied (seed-generator states included, so dropout draws
    what the fresh model would draw), and the optimizer's variables are
    those of `fresh`'s freshly built optimizer: iteration 0, empty momenta.
    """
    if type(model) is not type(fresh) or _optimizer_settings(model) != _optimizer_settings(fresh):
        return False  # settings a compiled step holds as constants must match
    if tf.distribute.has_strategy() or any(
        getattr(m, "_distribute_strategy", None) is not None for m in (model, fresh)
    ):
        return False  # distributed variables are built in their strategy's scope: a fresh model per cycle there
    fresh.optimizer.build(fresh.trainable_variables)
    variables = [(model.variables, fresh.variables), (model.optimizer.variables, fresh.optimizer.variables)]
    if any(len(targets) != len(sources) for targets, sources in variables):
        return False
    pairs = [pair for targets, sources in variables for pair in zip(targets, sources)]
    if any(target.shape != source.shape or target.dtype != source.dtype for target, source in pairs):
        return False
    kept = {id(variable) for variable in model.weights} if keep_weights else set()
    for target, source in pairs:
        if id(target) not in kept:
            target.assign(source)
    return True


def _optimizer_settings(model: keras.Model) -> tuple[type, dict]:
    """The optimizer's class and configuration, less what lives in its variables (the learning rate) and its name."""
    config = model.optimizer.get_config()
    return type(model.optimizer), {key: value for key, value in config.items() if key not in ("learning_rate", "name")}


def _resolve_strategy(strategy) -> tuple[acquisition.Strategy, str]:
    """The strategy object and its name, from a name or a `Strategy`."""
    if isinstance(strategy, str):
        return acquisition.get(strategy), strategy
    if not isinstance(strategy, acquisition.Strategy):
        raise TypeError(
            "Expected a strategy name or a keras_lossal.acquisition.Strategy (subclass it and implement "
            f"pick(model, pool, request), or score(model, features) in a ScoringStrategy). Received: {strategy!r}"
        )
    return strategy, strategy.name


# States written before strategy options were recorded did not say them: such a state resumes with any options.
_UNRECORDED_OK = ("strategy_options",)


def _non_default_options(strategy: acquisition.Strategy) -> dict | None:
    """A registered strategy's options when they differ from its defaults (recorded and checked on resume), else `None`."""
    default_type = acquisition.STRATEGIES.get(strategy.name)
    if default_type is None or type(strategy) is not default_type:
        return None
    options = jsonable(strategy.get_config())
    return None if options == jsonable(default_type().get_config()) else options


def _check_fit_kwargs(fit_kwargs: dict | None) -> dict:
    fit_kwargs = dict(fit_kwargs or {})
    for reserved in _RESERVED_FIT_ARGUMENTS:
        if reserved in fit_kwargs:
            raise ValueError(f"`fit_kwargs` must not set {reserved!r}; the loop controls it.")
    return fit_kwargs


def _check_finite_test_images(x_test: np.ndarray) -> None:
    finite = _finite_items(x_test)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"Expected finite test_data images. Received: {len(bad)} of {len(x_test)} with NaN/inf values "
            f"(first indices {bad[:10].tolist()}); the test metrics would be NaN"
        )


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


def _finite_items(x: np.ndarray) -> np.ndarray:
    """Per item: True when every value is finite (always True for integer images)."""
    if not np.issubdtype(x.dtype, np.floating):
        return np.ones(len(x), bool)
    return np.isfinite(x.reshape(len(x), -1)).all(axis=1)


def _is_identity(preprocessing) -> bool:
    return isinstance(preprocessing, data_lib.IdentityPreprocessing)


def _materialise(dataset, name: str, preprocessing=None) -> tuple[np.ndarray, np.ndarray]:
    """`(inputs, labels)` arrays from `(x, y)` or a `tf.data.Dataset` of unbatched pairs (`data.as_inputs` shapes)."""
    if isinstance(dataset, tf.data.Dataset):
        images, labels = [], []
        for element in dataset.as_numpy_iterator():
            if not isinstance(element, tuple) or len(element) != 2:
                raise ValueError(f"Expected `{name}` to yield unbatched (input, label) pairs. Received {type(element)}")
            images.append(element[0])
            labels.append(element[1])
        if not images:
            raise ValueError(f"Expected a non-empty `{name}`.")
        dataset = (np.stack(images), np.asarray(labels))
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        x, y = data_lib.as_inputs(dataset[0], name, preprocessing), np.asarray(dataset[1]).reshape(-1)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"Expected `{name}` inputs and labels of one non-zero length. Received {len(x)} and {len(y)}"
            )
        return x, data_lib.as_labels(y, len(x), f"{name} labels")
    raise TypeError(
        f"Expected `{name}` as (x, y) NumPy arrays or a tf.data.Dataset. Received: {type(dataset).__name__}"
    )
