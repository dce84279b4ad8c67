"""Acquisition strategies: small classes, one scoring method each, built by name with `get`."""

from __future__ import annotations

import warnings

import numpy as np
from keras import ops

from keras_lossal.acquisition import diversity, models, scores
from keras_lossal.acquisition.diversity import loss_rank_weights  # noqa: F401 - public here since learning_loss_badge
from keras_lossal.acquisition.pool import IndexedPool, index_pool, model_input_spec, pool_size
from keras_lossal.acquisition.ranking import sample_subset
from keras_lossal.acquisition.scoring import (
    BatchFunction,
    Selection,
    check_scored,
    collect,
    collect_top,
    finite_items,
    mask_non_finite,
    scoring_strategy,
    top_k_selection,
)
from keras_lossal.contracts import check_integer

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Strategy",
    "LearningLoss",
    "Random",
    "Entropy",
    "Margin",
    "LeastConfidence",
    "BALD",
    "CoreSet",
    "Badge",
    "LearningLossClusters",
    "LearningLossKCenter",
    "MCDropoutVariance",
    "STRATEGIES",
    "get",
]

DEFAULT_BATCH_SIZE = 512


def _jit_compile(model) -> bool:
    """Whether scoring compiles with XLA: as the model was compiled (Keras' "auto" is XLA on a GPU, not on CPU)."""
    try:
        return getattr(model, "jit_compile", False) is True
    except (AttributeError, ValueError):
        return False


def _check_factor(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not float(value) >= 1.0:
        raise ValueError(f"Expected {name} >= 1. Received: {name}={value!r}")
    return float(value)


def _check_arguments(k, subset_size, batch_size) -> tuple[int, int | None, int]:
    k = check_integer("k", k)
    batch_size = check_integer("batch_size", batch_size)
    if subset_size is not None:
        subset_size = check_integer("subset_size", subset_size)
        if k > subset_size:
            raise ValueError(f"Expected k <= subset_size. Received: k={k}, subset_size={subset_size}")
    return k, subset_size, batch_size


_COMPILED_STEPS_ATTRIBUTE = "_keras_lossal_compiled_steps"
_MAX_COMPILED_STEPS_PER_MODEL = 32


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


class Strategy:
    """Base class: scores pool items; `select` keeps the `k` highest scores.

    A strategy implements `score(model, features) -> (batch,) float32 tensor`
    (traced into one `tf.function`). `select` handles the pool, the subset, the
    compiled loop and the running top-K. Strategies that pick a set jointly
    (core-set, BADGE) override `select`.

    The contract: every `select` takes the arguments of `Strategy.select`,
    `labeled` included, and ignores those it does not use; `ActiveLearningLoop`
    passes all of them to every `Strategy`. A strategy keeps no per-call state
    on the instance (one instance may serve several loops); compiled functions
    are cached on the model, keyed by the strategy's type and `get_config()`. A subclass whose `select` override predates
    `labeled` must add it (`labeled=None`); an object that is not a `Strategy`
    still runs in the loop with the older arguments (`model, pool, k,
    subset_size, seed, batch_size`) and a `DeprecationWarning`.

    Example:

    >>> import numpy as np, keras
    >>> class FirstFeature(Strategy):
    ...     name = "first_feature"
    ...     def score(self, model, features):
    ...         return ops.cast(model(features)[:, 0], "float32")
    >>> identity = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])
    >>> FirstFeature().select(identity, np.array([[0.1, 0], [0.9, 0], [0.5, 0]]), k=2).indices.tolist()
    [1, 2]
    """

    name = "strategy"

    def score(self, model, features):
        """Per-item scores for a batch of `features` (higher = label first)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({options})"

    # ------------------------------------------------------------ machinery
    def _batch_function(self, model, fn, batch_size: int, extra_key=()) -> BatchFunction:
        """The compiled batch function of this kind of strategy with these settings on `model`.

        Cached on the model, not on the strategy, so the documented call
        `acquisition.get(name).select(model, ...)`, which builds a new strategy
        each time, traces once per model, settings, batch size and distribution.
        `get_config()` must therefore hold every option that changes the scores.
        """
        jit_compile = _jit_compile(model)
        active = scoring_strategy()
        config = tuple(sorted(self.get_config().items()))
        key = (type(self), batch_size, config, jit_compile, id(active), *extra_key)
        cache = compiled_steps(model)
        function = cache.get(key)
        if function is not None and function.distribution is active:
            return function
        function = BatchFunction(fn, jit_compile)
        cache[key] = function
        while len(cache) > _MAX_COMPILED_STEPS_PER_MODEL:
            cache.pop(next(iter(cache)))
        return function

    def _indexed_pool(self, model, pool, batch_size, subset_size, seed, replicas: int = 1) -> IndexedPool:
        batch_size = -(-batch_size // replicas) * replicas
        return index_pool(pool, batch_size, model_input_spec(model), subset_size, seed)

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
        k, subset_size, batch_size = _check_arguments(k, subset_size, batch_size)
        function = self._batch_function(
            model, lambda features: mask_non_finite(features, self.score(model, features)), batch_size
        )
        return self._top_k(model, function, pool, k, subset_size, seed, batch_size, verbose)

    def _top_k(self, model, function: BatchFunction, pool, k, subset_size, seed, batch_size, verbose) -> Selection:
        """The `k` best items of `pool` under the compiled per-batch scoring `function`."""
        indexed = self._indexed_pool(model, pool, batch_size, subset_size, seed, function.replicas)
        if indexed.num_items is not None and k > indexed.num_items:
            raise ValueError(f"Expected k <= the number of items to score ({indexed.num_items}). Received: k={k}")
        return top_k_selection(function, indexed, k, self.name, verbose)


class LearningLoss(Strategy):
    """Learning loss (Yoo & Kweon 2019): the items with the highest predicted loss.

    Needs a model whose call returns a dict with `"predicted_loss"`, such as
    `LossLearningModel`.

    Example:

    >>> import numpy as np, keras_lossal as kl
    >>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), width=4))
    >>> selection = LearningLoss().select(model, np.random.rand(20, 8, 8, 1), k=3)
    >>> selection.indices.shape, selection.scores.dtype
    ((3,), dtype('float32'))
    """

    name = "learning_loss"

    def score(self, model, features):
        outputs = model(features, training=False)
        if not isinstance(outputs, dict) or "predicted_loss" not in outputs:
            raise ValueError(
                "Expected a model returning a dict with 'predicted_loss' (a LossLearningModel). Received: "
                f"{type(model).__name__} '{getattr(model, 'name', '?')}' returning {type(outputs).__name__}"
            )
        return ops.reshape(ops.cast(outputs["predicted_loss"], "float32"), (-1,))


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

    def select(
        self, model, pool, k, subset_size=None, seed=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0, labeled=None
    ) -> Selection:
        k, subset_size, _ = _check_arguments(k, subset_size, batch_size)
        size = pool_size(pool)
        if size is None:
            # Counts by reading the pool; the model (if given) tells a Dataset of items from one of batches.
            indexed = index_pool(pool, batch_size, None if model is None else model_input_spec(model))
            size = sum(int(np.sum(indices.numpy() >= 0)) for indices, _ in indexed.dataset)
        if size == 0:
            raise ValueError("Expected a non-empty pool. Received: a pool with 0 items")
        subset = sample_subset(size, subset_size, seed)
        candidates = np.arange(size, dtype=np.int64) if subset is None else subset
        if k > len(candidates):
            raise ValueError(f"Expected k <= the number of items to score ({len(candidates)}). Received: k={k}")
        scored = len(candidates)
        num_non_finite = 0
        if isinstance(pool, np.ndarray) and np.issubdtype(pool.dtype, np.floating):
            finite = np.isfinite(pool[candidates].reshape(len(candidates), -1)).all(axis=1)
            num_non_finite = int(np.sum(~finite))
            candidates = candidates[finite]
            _report_non_finite(num_non_finite, scored, k, self.name)
        rng = np.random.default_rng(None if seed is None else [seed, 1])
        chosen = rng.choice(len(candidates), size=k, replace=False)
        priorities = np.sort(rng.random(k).astype(np.float32))[::-1]
        return Selection(candidates[chosen], priorities, self.name, scored, num_non_finite)


def _check_from_logits(from_logits):
    if from_logits is not None and not isinstance(from_logits, bool):
        raise ValueError(f"Expected from_logits to be True, False or None. Received: from_logits={from_logits!r}")
    return from_logits


def _resolve_from_logits(from_logits: bool | None, model) -> bool:
    """`from_logits`, or when `None` what the model's last layer says (no softmax/sigmoid: logits)."""
    return (not models.outputs_are_probabilities(model)) if from_logits is None else from_logits


class _Uncertainty(Strategy):
    """Base for strategies that score class probabilities.

    Args:
        from_logits: whether the classifier outputs logits. `None` decides from
            the model: outputs of a final softmax/sigmoid layer are
            probabilities, anything else (including subclassed models) logits.
    """

    def __init__(self, from_logits: bool | None = None):
        self.from_logits = _check_from_logits(from_logits)

    def get_config(self) -> dict:
        return {"from_logits": self.from_logits}

    def probabilities(self, model, features):
        from_logits = _resolve_from_logits(self.from_logits, model)
        return scores.class_probabilities(models.classifier_outputs(model, features), from_logits)

    def score(self, model, features):
        return self.score_probabilities(self.probabilities(model, features))

    def score_probabilities(self, probabilities):
        raise NotImplementedError


class Entropy(_Uncertainty):
    """Highest predictive entropy first.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> Entropy().select(classifier, np.random.rand(10, 4), k=2).indices.shape
    (2,)
    """

    name = "entropy"

    def score_probabilities(self, probabilities):
        return scores.entropy(probabilities)


class Margin(_Uncertainty):
    """Smallest margin between the top two classes first (score = `p_2nd - p_1st`).

    Args:
        from_logits: see `Entropy`.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    >>> bool(Margin().select(classifier, np.random.rand(10, 4), k=2).scores[0] <= 0)
    True
    """

    name = "margin"

    def score_probabilities(self, probabilities):
        return scores.margin(probabilities)


class LeastConfidence(_Uncertainty):
    """Lowest top-class probability first (score = `1 - max p`).

    Args:
        from_logits: see `Entropy`.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> LeastConfidence(from_logits=True).select(classifier, np.random.rand(10, 4), k=2).indices.shape
    (2,)
    """

    name = "least_confidence"

    def score_probabilities(self, probabilities):
        return scores.least_confidence(probabilities)


class _MonteCarloDropout(Strategy):
    """Base for strategies that score `num_samples` stochastic passes of a dropout-on twin of the model.

    `score(twin, features)` receives the twin (`models.mc_dropout_model`), built
    afresh and seeded in every `select`.
    """

    def select(
        self, model, pool, k, subset_size=None, seed=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0, labeled=None
    ) -> Selection:
        k, subset_size, batch_size = _check_arguments(k, subset_size, batch_size)
        twin = models.mc_dropout_model(model, seed)
        # A fresh twin per call, so a fresh compiled function (traced once for this call), never cached.
        function = BatchFunction(
            lambda features: mask_non_finite(features, self.score(twin, features)), _jit_compile(model)
        )
        return self._top_k(model, function, pool, k, subset_size, seed, batch_size, verbose)


class BALD(_MonteCarloDropout, _Uncertainty):
    """BALD with MC dropout: highest mutual information between prediction and weights first.

    Runs `num_samples` stochastic passes per batch with only the dropout layers
    active (batch norm stays in inference mode). The model needs dropout.

    Args:
        num_samples: T, the number of MC-dropout passes.
        from_logits: see `Entropy`.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(3)]
    ... )
    >>> BALD(num_samples=5).select(classifier, np.random.rand(10, 4), k=2, seed=0).indices.shape
    (2,)
    """

    name = "bald"

    def __init__(self, num_samples: int = 20, from_logits: bool | None = None):
        super().__init__(from_logits)
        self.num_samples = check_integer("num_samples", num_samples)

    def get_config(self) -> dict:
        return {"num_samples": self.num_samples, **super().get_config()}

    def score(self, model, features):
        """Mutual information over `num_samples` passes of `model`, the MC-dropout twin."""
        samples = [self.probabilities(model, features) for _ in range(self.num_samples)]
        return scores.mutual_information(ops.stack(samples))


class MCDropoutVariance(_MonteCarloDropout):
    """Highest predictive variance under MC dropout first: uncertainty for any task, regression included.

    Runs `num_samples` stochastic passes per batch with only the dropout layers
    active (batch norm stays in inference mode) and scores each item by the
    variance of its outputs across passes, averaged over output values (a
    per-pixel output gives one number per item). The model needs dropout.

    Args:
        num_samples: T, the number of MC-dropout passes.

    Example:

    >>> import numpy as np, keras
    >>> regressor = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(1)]
    ... )
    >>> MCDropoutVariance(num_samples=5).select(regressor, np.random.rand(10, 4), k=2, seed=0).indices.shape
    (2,)
    """

    name = "mc_dropout_variance"

    def __init__(self, num_samples: int = 20):
        self.num_samples = check_integer("num_samples", num_samples)

    def get_config(self) -> dict:
        return {"num_samples": self.num_samples}

    def score(self, model, features):
        """Output variance over `num_samples` passes of `model`, the MC-dropout twin."""
        samples = [models.flatten_batch(models.classifier_outputs(model, features)) for _ in range(self.num_samples)]
        return ops.mean(ops.var(ops.stack(samples), axis=0), axis=1)


class _Embedding(Strategy):
    """Base for strategies that pick a set from per-item embeddings."""

    def __init__(self, layer: str | None = None):
        self.layer = layer

    def get_config(self) -> dict:
        return {"layer": self.layer}

    def _collect(self, model, pool, batch_size, subset_size, seed, verbose, fn, purpose: str = "embed"):
        function = self._batch_function(model, fn, batch_size, extra_key=(self.layer, purpose))
        indexed = self._indexed_pool(model, pool, batch_size, subset_size, seed, function.replicas)
        return collect(function, indexed, verbose)

    def _embed_function(self, model):
        """Per batch: the flattened embeddings and whether each item's features are finite."""
        embedder = models.embedding_model(model, self.layer)

        def embed(features):
            return models.flatten_batch(embedder(features, training=False)[0]), finite_items(features)

        return embed

    def _distances_to_labeled(self, model, labeled, embeddings: np.ndarray, batch_size: int) -> np.ndarray | None:
        """Squared distance from each of `embeddings` to its nearest labeled item's; `None` without labeled items.

        Labeled items with non-finite features or embeddings are left out.
        """
        if labeled is None:
            return None
        _, (labeled_embeddings, finite) = self._collect(
            model, labeled, batch_size, None, None, 0, self._embed_function(model)
        )
        labeled_embeddings = labeled_embeddings[finite & _finite_rows(labeled_embeddings)]
        if not len(labeled_embeddings):
            return None
        return diversity.squared_distances_to_set(embeddings, labeled_embeddings)


def _report_non_finite(num_non_finite: int, num_scored: int, k: int, strategy: str) -> None:
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
        stacklevel=3,
    )


def _finite_rows(*arrays: np.ndarray) -> np.ndarray:
    finite = np.ones(len(arrays[0]), bool)
    for array in arrays:
        finite &= np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return finite


class CoreSet(_Embedding):
    """Core-set (Sener & Savarese 2018): k-center greedy on embeddings.

    Embeddings are the backbone's penultimate features by default. Pass the
    labeled items as `labeled=` to `select` so new centers are far from them
    too; without them, the first center is a seeded random item. Memory is
    O(N * D) for the pool's embeddings (never N x N).

    `scores` are each pick's distance to its nearest center when picked (`inf`
    for an unconditioned first pick).

    Args:
        layer: name of the layer whose output is the embedding, or `None`.

    Example:

    >>> import numpy as np, keras_lossal as kl
    >>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), width=4))
    >>> pool, labeled = np.random.rand(30, 8, 8, 1), np.random.rand(5, 8, 8, 1)
    >>> CoreSet().select(model, pool, k=4, labeled=labeled).indices.shape
    (4,)
    """

    name = "coreset"

    def select(
        self, model, pool, k, subset_size=None, seed=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0, labeled=None
    ) -> Selection:
        """`Strategy.select`; new centers are far from `labeled` too when it is given."""
        k, subset_size, batch_size = _check_arguments(k, subset_size, batch_size)
        embed = self._embed_function(model)
        indices, (embeddings, finite_input) = self._collect(model, pool, batch_size, subset_size, seed, verbose, embed)
        check_scored(k, len(indices))
        kept = np.flatnonzero(finite_input & _finite_rows(embeddings))
        _report_non_finite(len(indices) - len(kept), len(indices), k, self.name)
        initial = self._distances_to_labeled(model, labeled, embeddings[kept], batch_size)
        first = 0 if initial is not None else int(np.random.default_rng(seed).integers(len(kept)))
        chosen, distances = diversity.k_center_greedy(embeddings[kept], k, initial, first)
        positions = kept[chosen]
        return Selection(
            indices[positions], distances.astype(np.float32), self.name, len(indices), len(indices) - len(kept)
        )


class Badge(_Embedding):
    """BADGE (Ash et al. 2020): k-means++ seeding on last-layer gradient embeddings.

    The gradient embedding of an item is `(p - onehot(argmax p)) (x) h`, the
    gradient of the cross-entropy with its predicted label w.r.t. the last
    Dense kernel, with `h` the input of that layer. It is never materialised
    (see `diversity.kmeans_plus_plus_gradients`).

    `scores` are each pick's gradient-embedding distance to the nearest
    earlier pick (its gradient norm for the first).

    Args:
        layer: name of the layer whose output is `h`, or `None` for the input
            of the last Dense layer (right for a Dense classifier head).
        from_logits: see `Entropy`.

    Example:

    >>> import numpy as np, keras
    >>> classifier = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    >>> len(set(Badge().select(classifier, np.random.rand(20, 4), k=5, seed=0).indices.tolist()))
    5
    """

    name = "badge"

    def __init__(self, layer: str | None = None, from_logits: bool | None = None):
        super().__init__(layer)
        self.from_logits = _check_from_logits(from_logits)

    def get_config(self) -> dict:
        return {"layer": self.layer, "from_logits": self.from_logits}

    def select(
        self, model, pool, k, subset_size=None, seed=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0, labeled=None
    ) -> Selection:
        k, subset_size, batch_size = _check_arguments(k, subset_size, batch_size)
        embedder = models.embedding_model(model, self.layer)
        from_logits = _resolve_from_logits(self.from_logits, model)

        def gradient_factors(features):
            embedding, outputs = embedder(features, training=False)
            probabilities = scores.class_probabilities(outputs, from_logits)
            predicted = ops.one_hot(ops.argmax(probabilities, axis=-1), probabilities.shape[-1])
            return probabilities - predicted, models.flatten_batch(embedding), finite_items(features)

        indices, (residuals, features, finite_input) = self._collect(
            model, pool, batch_size, subset_size, seed, verbose, gradient_factors
        )
        check_scored(k, len(indices))
        kept = np.flatnonzero(finite_input & _finite_rows(residuals, features))
        _report_non_finite(len(indices) - len(kept), len(indices), k, self.name)
        chosen, distances = diversity.kmeans_plus_plus_gradients(residuals[kept], features[kept], k, seed)
        positions = kept[chosen]
        return Selection(
            indices[positions], distances.astype(np.float32), self.name, len(indices), len(indices) - len(kept)
        )


class _HardAndDiverse(_Embedding):
    """Base for strategies that combine the predicted loss with diversity in the embedding."""

    def _candidates(self, model, pool, k, capacity, subset_size, seed, batch_size, verbose):
        """The `capacity` items with the highest predicted loss, with their embeddings, in the order scored.

        Memory is O(capacity x embedding size), whatever the pool's size. Items
        with non-finite features, predicted losses or embeddings are never
        candidates; they are counted (and reported) in the returned count.
        """
        # A LossLearningModel: one backbone pass gives both; any other model returning "predicted_loss": two calls.
        one_pass = models.loss_and_embedding(model, self.layer) or self._two_calls(model)

        def losses_and_embeddings(features):
            predicted, embedding = one_pass(features)
            return mask_non_finite(features, predicted), embedding

        function = self._batch_function(model, losses_and_embeddings, batch_size, extra_key=(self.layer, "candidates"))
        indexed = self._indexed_pool(model, pool, batch_size, subset_size, seed, function.replicas)
        indices, outputs, num_scored, num_non_finite = collect_top(function, indexed, capacity, verbose)
        check_scored(k, num_scored)
        _report_non_finite(num_non_finite, num_scored, k, self.name)
        predicted, embeddings = outputs
        return indices, predicted, embeddings, num_scored, num_non_finite

    def _two_calls(self, model):
        embedder, scorer = models.embedding_model(model, self.layer), LearningLoss()

        def fn(features):
            return scorer.score(model, features), models.flatten_batch(embedder(features, training=False)[0])

        return fn


class LearningLossClusters(_HardAndDiverse):
    """The highest predicted loss in each of `k` k-means clusters of the scored items' embeddings.

    Hard and diverse: k-means on the penultimate features splits the scored
    (sub)pool into `k` regions, and each region gives its item with the highest
    predicted loss, so the `k` picks cannot pile onto one region. Needs a
    `LossLearningModel`. `scores` are the picks' predicted losses.

    At scale, only the hardest items are clustered: the top
    `max(candidates_factor * k, min_candidates)` by predicted loss, kept in a
    bounded buffer while the pool is scored, so memory is O(candidates x
    embedding size) and the k-means work does not grow with the pool. Pools
    (or subsets) of up to `min_candidates` items are clustered whole.

    Args:
        layer: name of the layer whose output is the embedding, or `None` for
            the input of the last Dense layer.
        iterations: Lloyd iterations of k-means.
        candidates_factor: candidates as a multiple of `k` (>= 1).
        min_candidates: at least this many candidates (all items of smaller pools).

    Example:

    >>> import numpy as np, keras_lossal as kl
    >>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), width=4))
    >>> selection = LearningLossClusters().select(model, np.random.rand(40, 8, 8, 1), k=4, seed=0)
    >>> len(set(selection.indices.tolist()))
    4
    """

    name = "learning_loss_clusters"

    def __init__(
        self,
        layer: str | None = None,
        iterations: int = diversity.KMEANS_ITERATIONS,
        candidates_factor: float = 10.0,
        min_candidates: int = 10_000,
    ):
        super().__init__(layer)
        self.iterations = check_integer("iterations", iterations)
        self.candidates_factor = _check_factor("candidates_factor", candidates_factor)
        self.min_candidates = check_integer("min_candidates", min_candidates)

    def get_config(self) -> dict:
        return {
            "layer": self.layer,
            "iterations": self.iterations,
            "candidates_factor": self.candidates_factor,
            "min_candidates": self.min_candidates,
        }

    def num_candidates(self, k: int) -> int:
        """How many of the highest predicted losses are clustered for `k` picks."""
        return max(int(np.ceil(self.candidates_factor * k)), self.min_candidates)

    def select(
        self, model, pool, k, subset_size=None, seed=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0, labeled=None
    ) -> Selection:
        k, subset_size, batch_size = _check_arguments(k, subset_size, batch_size)
        indices, predicted, embeddings, num_scored, num_non_finite = self._candidates(
            model, pool, k, self.num_candidates(k), subset_size, seed, batch_size, verbose
        )
        positions = diversity.hardest_per_cluster(predicted, embeddings, k, seed, self.iterations)
        return Selection(
            indices[positions], predicted[positions].astype(np.float32), self.name, num_scored, num_non_finite
        )


class LearningLossKCenter(_HardAndDiverse):
    """Core-set among the hardest: the top `candidates_factor * k` by predicted loss, then k-center greedy.

    The predicted loss shortlists the items the model is likely to get wrong;
    greedy k-center on their embeddings (far from the labeled items when
    `labeled=` is given) spreads the `k` picks over that shortlist. Needs a
    `LossLearningModel`. `scores` are each pick's distance to its nearest
    center when picked.

    Args:
        candidates_factor: beta, the shortlist size as a multiple of `k` (>= 1;
            1 is plain learning loss, large values approach core-set).
        layer: name of the layer whose output is the embedding, or `None`.

    Example:

    >>> import numpy as np, keras_lossal as kl
    >>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), width=4))
    >>> pool, labeled = np.random.rand(40, 8, 8, 1), np.random.rand(5, 8, 8, 1)
    >>> LearningLossKCenter(candidates_factor=2).select(model, pool, k=4, labeled=labeled).indices.shape
    (4,)
    """

    name = "learning_loss_kcenter"

    def __init__(self, candidates_factor: float = 3.0, layer: str | None = None):
        super().__init__(layer)
        self.candidates_factor = _check_factor("candidates_factor", candidates_factor)

    def get_config(self) -> dict:
        return {"candidates_factor": self.candidates_factor, "layer": self.layer}

    def select(
        self, model, pool, k, subset_size=None, seed=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0, labeled=None
    ) -> Selection:
        """`Strategy.select`; the picks are far from `labeled` too when it is given."""
        k, subset_size, batch_size = _check_arguments(k, subset_size, batch_size)
        shortlist_size = max(k, int(np.ceil(self.candidates_factor * k)))
        indices, predicted, embeddings, num_scored, num_non_finite = self._candidates(
            model, pool, k, shortlist_size, subset_size, seed, batch_size, verbose
        )
        shortlist = np.lexsort((np.arange(len(predicted)), -predicted))  # hardest first; ties: scored first
        initial = self._distances_to_labeled(model, labeled, embeddings[shortlist], batch_size)
        chosen, distances = diversity.k_center_greedy(embeddings[shortlist], k, initial, 0)
        positions = shortlist[chosen]
        return Selection(indices[positions], distances.astype(np.float32), self.name, num_scored, num_non_finite)


class LearningLossBadge(_Embedding):
    """BADGE's k-means++ on gradient embeddings, each weighted by the item's predicted-loss rank.

    BADGE (Ash et al. 2020) samples items far apart in gradient-embedding space
    `(p - onehot(argmax p)) (x) h`, so its picks are uncertain and diverse in
    one draw. Here each item's residual `p - onehot(argmax p)` is multiplied by
    `w = rank(predicted loss) / n` in `(0, 1]` (the head learns an order, not a
    scale, so only the rank is used): the loss-prediction head moves the draw
    toward items it expects the model to get wrong, without giving up BADGE's
    diversity. One backbone pass gives the predicted loss, the embedding and the
    class outputs. Needs a `LossLearningModel` (or a model returning
    `"predicted_loss"`); `scores` are the picks' predicted losses.

    Args:
        layer: name of the layer whose output is `h`, or `None` for the input
            of the last Dense layer.
        from_logits: see `Entropy`.

    Example:

    >>> import numpy as np, keras_lossal as kl
    >>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), width=4))
    >>> selection = LearningLossBadge().select(model, np.random.rand(40, 8, 8, 1), k=4, seed=0)
    >>> len(set(selection.indices.tolist()))
    4
    """

    name = "learning_loss_badge"

    def __init__(self, layer: str | None = None, from_logits: bool | None = None):
        super().__init__(layer)
        self.from_logits = _check_from_logits(from_logits)

    def get_config(self) -> dict:
        return {"layer": self.layer, "from_logits": self.from_logits}

    def select(
        self, model, pool, k, subset_size=None, seed=None, batch_size=DEFAULT_BATCH_SIZE, verbose=0, labeled=None
    ) -> Selection:
        k, subset_size, batch_size = _check_arguments(k, subset_size, batch_size)
        # A LossLearningModel: one backbone pass; any other model returning "predicted_loss": separate calls.
        one_pass = models.loss_embedding_and_outputs(model, self.layer) or self._separate_calls(model)
        from_logits = _resolve_from_logits(self.from_logits, model)

        def gradient_factors(features):
            predicted, embedding, outputs = one_pass(features)
            probabilities = scores.class_probabilities(outputs, from_logits)
            predicted_class = ops.one_hot(ops.argmax(probabilities, axis=-1), probabilities.shape[-1])
            return mask_non_finite(features, predicted), probabilities - predicted_class, embedding

        indices, (predicted, residuals, features) = self._collect(
            model, pool, batch_size, subset_size, seed, verbose, gradient_factors, purpose="loss_badge"
        )
        check_scored(k, len(indices))
        kept = np.flatnonzero(_finite_rows(predicted, residuals, features))
        _report_non_finite(len(indices) - len(kept), len(indices), k, self.name)
        chosen, _ = diversity.kmeans_plus_plus_loss_weighted(predicted[kept], residuals[kept], features[kept], k, seed)
        positions = kept[chosen]
        return Selection(
            indices[positions],
            predicted[positions].astype(np.float32),
            self.name,
            len(indices),
            len(indices) - len(kept),
        )

    def _separate_calls(self, model):
        embedder, scorer = models.embedding_model(model, self.layer), LearningLoss()

        def fn(features):
            embedding = models.flatten_batch(embedder(features, training=False)[0])
            return scorer.score(model, features), embedding, models.classifier_outputs(model, features)

        return fn


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
    )
}


def get(name, **options) -> Strategy:
    """Builds an acquisition strategy by name.

    Args:
        name: one of `learning_loss`, `random`, `entropy`, `margin`,
            `least_confidence`, `coreset`, `bald`, `badge`,
            `learning_loss_clusters`, `learning_loss_kcenter`,
            `learning_loss_badge`, `mc_dropout_variance`; or a
            `Strategy` instance, returned as is.
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
