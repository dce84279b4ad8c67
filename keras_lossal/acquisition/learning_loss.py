"""Learning-loss strategies: pick by the loss-prediction head's predicted loss, alone or with diversity.

`LearningLoss` is the paper's top-K. The others combine the predicted loss with
an embedding: the hardest item of each k-means cluster, k-center greedy over a
shortlist of the hardest, or BADGE's k-means++ weighted by the loss rank.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from keras_lossal.acquisition import diversity, models
from keras_lossal.acquisition.base import ScoringStrategy, SelectionRequest, check_factor, report_non_finite
from keras_lossal.acquisition.diversity_strategies import Badge, EmbeddingStrategy
from keras_lossal.acquisition.streaming import Selection, check_scored, mask_non_finite
from keras_lossal.contracts import DEFAULT_CANDIDATES_FACTOR, DEFAULT_MIN_CANDIDATES, check_integer

__all__ = ["LearningLoss", "LearningLossBadge", "LearningLossClusters", "LearningLossKCenter"]


class LearningLoss(ScoringStrategy):
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


class _HardAndDiverse(EmbeddingStrategy):
    """Base for strategies that combine the predicted loss with diversity in the embedding."""

    def _candidates(self, model, pool, request: SelectionRequest, capacity: int):
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

        scorer = self._scorer(model, request)
        function = scorer.step(self._cache_key(self.layer, "candidates"), losses_and_embeddings)
        indices, outputs, num_scored, num_non_finite = scorer.collect_top(function, pool, capacity)
        check_scored(request.k, num_scored)
        report_non_finite(num_non_finite, num_scored, request.k, self.name)
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
        candidates_factor: float = DEFAULT_CANDIDATES_FACTOR,
        min_candidates: int = DEFAULT_MIN_CANDIDATES,
    ):
        super().__init__(layer)
        self.iterations = check_integer("iterations", iterations)
        self.candidates_factor = check_factor("candidates_factor", candidates_factor)
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

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        indices, predicted, embeddings, num_scored, num_non_finite = self._candidates(
            model, pool, request, self.num_candidates(request.k)
        )
        positions = diversity.hardest_per_cluster(predicted, embeddings, request.k, request.seed, self.iterations)
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
        self.candidates_factor = check_factor("candidates_factor", candidates_factor)

    def get_config(self) -> dict:
        return {"candidates_factor": self.candidates_factor, "layer": self.layer}

    def pick(self, model, pool, request: SelectionRequest) -> Selection:
        """The picks are far from `request.labeled` too when it is given."""
        k = request.k
        shortlist_size = max(k, int(np.ceil(self.candidates_factor * k)))
        indices, predicted, embeddings, num_scored, num_non_finite = self._candidates(
            model, pool, request, shortlist_size
        )
        shortlist = np.lexsort((np.arange(len(predicted)), -predicted))  # hardest first; ties: scored first
        initial = self._distances_to_labeled(model, request.labeled, embeddings[shortlist], request.batch_size)
        chosen, distances = diversity.k_center_greedy(embeddings[shortlist], k, initial, 0)
        positions = shortlist[chosen]
        return Selection(indices[positions], distances.astype(np.float32), self.name, num_scored, num_non_finite)


class LearningLossBadge(Badge):
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
    _purpose = "loss_badge"

    def _gradient_factors(self, model):
        """Per batch: the predicted loss (NaN for non-finite items), the residuals and the layer input `h`."""
        # A LossLearningModel: one backbone pass; any other model returning "predicted_loss": separate calls.
        one_pass = models.loss_embedding_and_outputs(model, self.layer) or self._separate_calls(model)

        def factors(features):
            predicted, embedding, outputs = one_pass(features)
            return mask_non_finite(features, predicted), self._residuals(model, outputs), embedding

        return factors

    def _pick_from(self, indices, factors, request: SelectionRequest) -> Selection:
        predicted, residuals, features = factors
        kept = self._finite(indices, request.k, predicted, residuals, features)
        chosen, _ = diversity.kmeans_plus_plus_loss_weighted(
            predicted[kept], residuals[kept], features[kept], request.k, request.seed
        )
        return self._selection(indices, kept[chosen], predicted[kept[chosen]], len(kept))

    def _separate_calls(self, model):
        embedder, scorer = models.embedding_model(model, self.layer), LearningLoss()

        def fn(features):
            embedding = models.flatten_batch(embedder(features, training=False)[0])
            return scorer.score(model, features), embedding, models.classifier_outputs(model, features)

        return fn
