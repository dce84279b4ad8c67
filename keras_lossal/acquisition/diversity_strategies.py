"""Diversity strategies: pick a set of items spread over an embedding (core-set, BADGE).

They read every scored item's embedding (`PoolScorer.collect`), then hand it to
a selector of `acquisition.diversity` (k-center greedy, k-means++ seeding).
"""

from __future__ import annotations

import numpy as np

from keras_lossal.acquisition import diversity, models, score_functions
from keras_lossal.acquisition.base import (
    SelectionRequest,
    Strategy,
    check_from_logits,
    finite_rows,
    report_non_finite,
    resolve_from_logits,
)
from keras_lossal.acquisition.streaming import Selection, check_scored, finite_items
from keras_lossal.contracts import check_integer

__all__ = ["Badge", "CoreSet", "EmbeddingStrategy", "TypiClust"]


class EmbeddingStrategy(Strategy):
    """Base for strategies that pick a set from per-item embeddings.

    Args:
        layer: name of the layer whose output is the embedding, or `None` for
            the input of the last Dense layer.
    """

    def __init__(self, layer: str | None = None):
        self.layer = layer

    def get_config(self) -> dict:
        return {"layer": self.layer}

    def _embed_function(self, model):
        """Per batch: the flattened embeddings and whether each item's features are finite."""
        embedder = models.embedding_model(model, self.layer)

        def embed(features):
            return models.flatten_batch(embedder(features, training=False)[0]), finite_items(features)

        return embed

    def _embeddings(self, model, pool, request: SelectionRequest, subset: bool = True):
        """`(indices, (embeddings, finite_input))` of the (sub)pool, or of all of `pool` without `subset`."""
        scorer = self._scorer(model, request)
        function = scorer.step(self._cache_key(self.layer, "embed"), self._embed_function(model))
        return scorer.collect(function, pool, subset)

    def _labeled_embeddings(self, model, labeled, batch_size: int) -> np.ndarray | None:
        """The embeddings of the labeled items with finite features and embeddings; `None` when there are none."""
        if labeled is None:
            return None
        request = SelectionRequest(k=1, batch_size=batch_size)
        _, (labeled_embeddings, finite) = self._embeddings(model, labeled, request, subset=False)
        labeled_embeddings = labeled_embeddings[finite & finite_rows(labeled_embeddings)]
        return labeled_embeddings if len(labeled_embeddings) else None

    def _distances_to_labeled(self, model, labeled, embeddings: np.ndarray, batch_size: int) -> np.ndarray | None:
        """Squared distance from each of `embeddings` to its nearest labeled item's; `None` without labeled items.

        Labeled items with non-finite features or embeddings are left out.
        """
        labeled_embeddings = self._labeled_embeddings(model, labeled, batch_size)
        if labeled_embeddings is None:
            return None
        return diversity.squared_distances_to_set(embeddings, labeled_embeddings)

    def _finite(self, indices: np.ndarray, k: int, *arrays: np.ndarray, finite_input=True) -> np.ndarray:
        """Positions of the scored items whose inputs and `arrays` rows are finite (the others are reported)."""
        check_scored(k, len(indices))
        kept = np.flatnonzero(finite_input & finite_rows(*arrays))
        report_non_finite(len(indices) - len(kept), len(indices), k, self.name)
        return kept

    def _selection(self, indices: np.ndarray, positions: np.ndarray, scores, num_kept: int) -> Selection:
        """The `Selection` of the scored items at `positions` (of `indices`), with their `scores`."""
        num_scored = len(indices)
        return Selection(indices[positions], scores.astype(np.float32), self.name, num_scored, num_scored - num_kept)


class CoreSet(EmbeddingStrategy):
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

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        """New centers are far from `request.labeled` too when it is given."""
        indices, (embeddings, finite_input) = self._embeddings(model, pool, request)
        kept = self._finite(indices, request.k, embeddings, finite_input=finite_input)
        initial = self._distances_to_labeled(model, request.labeled, embeddings[kept], request.batch_size)
        first = 0 if initial is not None else int(np.random.default_rng(request.seed).integers(len(kept)))
        chosen, distances = diversity.k_center_greedy(embeddings[kept], request.k, initial, first)
        return self._selection(indices, kept[chosen], distances, len(kept))


class Badge(EmbeddingStrategy):
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
    # What the compiled step of `_gradient_factors` is cached as (beside the layer).
    _purpose = "embed"

    def __init__(self, layer: str | None = None, from_logits: bool | None = None):
        super().__init__(layer)
        self.from_logits = check_from_logits(from_logits)

    def get_config(self) -> dict:
        return {"layer": self.layer, "from_logits": self.from_logits}

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        scorer = self._scorer(model, request)
        function = scorer.step(self._cache_key(self.layer, self._purpose), self._gradient_factors(model))
        indices, factors = scorer.collect(function, pool)
        return self._pick_from(indices, factors, request)

    def _residuals(self, model, outputs):
        """The class-output factor of the gradient embedding, `p - onehot(argmax p)`."""
        return score_functions.prediction_residuals(
            score_functions.class_probabilities(outputs, resolve_from_logits(self.from_logits, model))
        )

    def _gradient_factors(self, model):
        """Per batch: the residuals, the layer input `h` and whether each item's features are finite."""
        embedder = models.embedding_model(model, self.layer)

        def factors(features):
            embedding, outputs = embedder(features, training=False)
            return self._residuals(model, outputs), models.flatten_batch(embedding), finite_items(features)

        return factors

    def _pick_from(self, indices, factors, request: SelectionRequest) -> Selection:
        residuals, features, finite_input = factors
        kept = self._finite(indices, request.k, residuals, features, finite_input=finite_input)
        chosen, distances = diversity.kmeans_plus_plus_gradients(
            residuals[kept], features[kept], request.k, request.seed
        )
        return self._selection(indices, kept[chosen], distances, len(kept))


class TypiClust(EmbeddingStrategy):
    """TypiClust (Hacohen, Dekel & Weinshall 2022): typical items of the clusters the labels cover least.

    For small budgets, where uncertainty picks can fall below random. The scored items and the labeled
    ones are split into `labeled + k` k-means clusters of their embeddings; each pick goes to the
    cluster with the fewest labeled items (the largest among equals, clusters under
    `min_cluster_size` items last), and takes its most typical candidate: the highest inverse mean
    distance to its `neighbours` nearest items of the cluster (`diversity.typical_per_cluster`).
    Pass the labeled items as `labeled=` so the picks fill what they leave uncovered. The paper
    embeds with a self-supervised model; here the embedding is the model's own (penultimate features
    by default, or `layer`). Memory is O(N * D) for the (sub)pool's embeddings, plus the largest
    cluster's squared size.

    `scores` are each pick's typicality.

    Args:
        layer: name of the layer whose output is the embedding, or `None`.
        neighbours: neighbours of the typicality (the paper: 20).
        min_cluster_size: smaller clusters are picked from last (the paper: 5).

    Example:

    >>> import numpy as np, keras_lossal as kl
    >>> model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), width=4))
    >>> pool, labeled = np.random.rand(30, 8, 8, 1), np.random.rand(5, 8, 8, 1)
    >>> len(set(TypiClust().select(model, pool, k=4, labeled=labeled, seed=0).indices.tolist()))
    4
    """

    name = "typiclust"

    def __init__(
        self,
        layer: str | None = None,
        neighbours: int = diversity.TYPICALITY_NEIGHBOURS,
        min_cluster_size: int = diversity.MIN_CLUSTER_SIZE,
    ):
        super().__init__(layer)
        self.neighbours = check_integer("neighbours", neighbours)
        self.min_cluster_size = check_integer("min_cluster_size", min_cluster_size)

    def get_config(self) -> dict:
        return {"layer": self.layer, "neighbours": self.neighbours, "min_cluster_size": self.min_cluster_size}

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        indices, (embeddings, finite_input) = self._embeddings(model, pool, request)
        kept = self._finite(indices, request.k, embeddings, finite_input=finite_input)
        labeled = self._labeled_embeddings(model, request.labeled, request.batch_size)
        chosen, scores = diversity.typiclust_picks(
            embeddings[kept], labeled, request.k, request.seed, self.neighbours, self.min_cluster_size
        )
        return self._selection(indices, kept[chosen], scores, len(kept))
