"""The labeling queue: which scored items triage and Beam put in front of people, and in which order.

While a pool is scored, `Candidates` keeps `candidates_factor * top_k` items,
each with what the selection needs: its `embedding` (the penultimate features
the export serves) and, for the BADGE selections, its residual
`p - onehot(argmax p)`. The candidates are the items with the highest
predicted loss (the tie rule of `keras_lossal.records`), except for `badge`
and `typiclust`, whose candidates are a uniform sample of the pool (below). It is a bounded
heap, so memory is O(candidates_factor * top_k * (D + C)) whatever the pool
size. At the end `QueueRule.select` picks `top_k` of the candidates:

- `learning_loss_clusters` (`QueueRule`'s default; triage's and Beam's is `budget_switch`, which
  `TriageSettings.resolved` turns into `typiclust` or `badge` before a rule is built):
  k-means of the candidates' embeddings into `top_k` clusters, and the highest
  predicted loss of each (`acquisition.diversity.hardest_per_cluster`, the rule
  of `LearningLossClusters`), so the queue cannot pile onto a few hard classes;
- `learning_loss_badge`: BADGE's k-means++ on the candidates' gradient
  embeddings, residuals weighted by predicted-loss rank
  (`acquisition.diversity.kmeans_plus_plus_loss_weighted`, the rule of
  `LearningLossBadge`);
- `top_k`: the `top_k` highest predicted losses (the candidates are the queue);
- `badge`: plain BADGE, the protocol the label-efficiency benchmark measured
  for the `badge` strategy (k-means++ on the gradient embeddings of a uniformly
  random subset of the pool). The candidates are the items with the largest
  `sample_key(seed, id)`, a uniform hash in [0, 1): a random subset that does
  not depend on the scoring order, the batches or Beam's bundles, so resume
  and Beam find the same one. Then `diversity.kmeans_plus_plus_gradients` on
  their residuals and embeddings, unweighted (the rule of `Badge`). With the
  default `candidates_factor` (10) the subset is 10 * `top_k`, as the
  benchmark's M = 5,000 for K = 500.
- `typiclust`: TypiClust (the `typiclust` strategy, for small budgets) on the
  same kind of uniform sample: k-means of the sample's and the labeled items'
  embeddings into L + `top_k` clusters, then the most typical candidate of the
  clusters the labels cover least (`diversity.typiclust_picks`). The labeled
  items' embeddings are `select(..., labeled=...)`; `lossal triage` scores
  the `--exclude-labeled` manifests' images for them.

The commands' `--selection budget_switch` chooses between the last two before
anything is scored, as the `budget_switch` strategy does:
`typiclust` while fewer than `--labels-per-class` labels per class are labeled
(`contracts.labels_are_scarce`), `badge` from there.

The diverse selections see the candidates by predicted loss, best first, and
use `seed`, so the queue is reproducible and equals the strategy's
`select(model, candidates, top_k, seed=seed)` on the same candidates. Whatever
the selection, the queue lists its picks by predicted loss, highest first
(ties: the earlier item), and the records keep their fields (`predicted_loss`
stays the score). `threshold` applies to the predicted loss before anything
else: only items at or above it are candidates, for the samples too.

Resume (triage): the features of every item that enters the heap are appended
to `candidates.jsonl`, synced (`Candidates.sync`) before the item's score reaches `scored.jsonl`,
and the file is rewritten with the heap's content when it grows past
`4 * max_candidates` lines. A resumed run rebuilds the candidates from
`scored.jsonl` and reads their features back: a candidate's rank is fixed by
the item (its predicted loss, or the sample's hash of its id), so an item among the
final candidates was among the candidates when it was scored, and its features
were written. A resume whose candidates lack features (an earlier run with
fewer candidates, another selection or, for a sample, another seed, or an older
keras-lossal) is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from keras_lossal.contracts import (
    BUDGET_SELECTION,
    DEFAULT_CANDIDATES_FACTOR,
    DEFAULT_SELECTION_SEED,
    SELECTIONS,
    TriageSettings,
)
from keras_lossal.files import atomic_write
from keras_lossal.records import (
    EMBEDDING,
    JsonlLog,
    TopK,
    queue_key,
    read_jsonl_log,
    to_jsonl,
)
from keras_lossal.serving.scorers import KEPT_OUTPUTS

__all__ = ["Candidates", "QueueRule", "ResumeWithoutFeaturesError", "sample_key"]

_CLUSTERS, _LEARNING_LOSS_BADGE, _TOP_K, _BADGE, _TYPICLUST = SELECTIONS
_GRADIENT_SELECTIONS = (_LEARNING_LOSS_BADGE, _BADGE)  # those that need the residual
_SAMPLING_SELECTIONS = (_BADGE, _TYPICLUST)  # those whose candidates are a uniform sample of the pool
_RESIDUAL = "residual"
_FEATURES = "_selection_features"  # the key of a held record's features (never written out)
_ORDER = "_queue_order"  # a sampled candidate's tie order, for ranking by predicted loss (never written out)
_HELD_ONLY = (_FEATURES, _ORDER)
_COMPACT_FACTOR = 4


class ResumeWithoutFeaturesError(ValueError):
    """A resumed triage's candidates include items scored without the features the selection needs."""


@dataclasses.dataclass(frozen=True)
class QueueRule:
    """How the labeling queue is chosen from the scored items; validated once, passed whole.

    Args:
        top_k: queue length, or `None` for every item at or above `threshold`
            (then the selection has nothing to choose and the queue is ranked).
        threshold: only items with at least this predicted loss, or `None`.
        selection: one of `contracts.SELECTIONS` (see the module docstring); `budget_switch` is resolved
            first (`TriageSettings.resolved`).
        candidates_factor: the diverse selections choose among
            `candidates_factor * top_k` candidates: the highest predicted
            losses, or for `badge` and `typiclust` a uniform sample of the pool.
        seed: the seed of the diverse selections (and of the samples).

    Example:

    >>> rule = QueueRule(top_k=2, candidates_factor=3)
    >>> rule.max_candidates, rule.outputs
    (6, ('embedding',))
    >>> queue = rule.select([({"id": "a", "predicted_loss": 0.9}, {"embedding": np.array([0.0], np.float32)}),
    ...                      ({"id": "b", "predicted_loss": 0.8}, {"embedding": np.array([0.1], np.float32)}),
    ...                      ({"id": "c", "predicted_loss": 0.1}, {"embedding": np.array([9.0], np.float32)})])
    >>> [record["id"] for record in queue]
    ['a', 'c']
    """

    top_k: int | None = 1000
    threshold: float | None = None
    selection: str = _CLUSTERS
    candidates_factor: int = DEFAULT_CANDIDATES_FACTOR
    seed: int = DEFAULT_SELECTION_SEED

    def __post_init__(self):
        if self.selection == BUDGET_SELECTION:
            raise ValueError(
                f"Expected a resolved selection: {BUDGET_SELECTION} becomes typiclust or badge by the labeled count "
                "(TriageSettings.resolved) before a queue rule is built"
            )
        # One validation for the queue's settings, wherever they come from (`TriageSettings` checks them).
        checked = TriageSettings(self.top_k, self.threshold, self.selection, self.candidates_factor, self.seed)
        for name in ("top_k", "threshold", "candidates_factor", "seed"):
            object.__setattr__(self, name, getattr(checked, name))

    @classmethod
    def of(cls, settings: TriageSettings) -> QueueRule:
        """The rule of `settings` (the queue part of them)."""
        return cls(settings.top_k, settings.threshold, settings.selection, settings.candidates_factor, settings.seed)

    @property
    def diverse(self) -> bool:
        """Whether the selection chooses among candidates (and needs their features)."""
        return self.selection != _TOP_K and self.top_k is not None

    @property
    def samples(self) -> bool:
        """Whether the candidates are a uniform sample of the pool (`badge`, `typiclust`), not the highest losses."""
        return self.selection in _SAMPLING_SELECTIONS and self.diverse

    @property
    def max_candidates(self) -> int | None:
        """The most candidates held while scoring: `candidates_factor * top_k` (`top_k` for `top_k`)."""
        return self.top_k * self.candidates_factor if self.diverse else self.top_k

    @property
    def outputs(self) -> tuple[str, ...]:
        """The scorer outputs the selection needs besides the predicted loss."""
        if not self.diverse:
            return ()
        return (EMBEDDING, "probabilities") if self.selection in _GRADIENT_SELECTIONS else (EMBEDDING,)

    def features(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """One item's selection features from its rows of `outputs` (as `score_isolating` keeps them)."""
        if not self.diverse:
            return None
        features = {EMBEDDING: np.asarray(outputs[EMBEDDING], np.float32).reshape(-1)}
        if self.selection in _GRADIENT_SELECTIONS:
            probabilities = np.asarray(outputs["probabilities"], np.float32).reshape(-1)
            predicted_class = np.zeros_like(probabilities)
            predicted_class[np.argmax(probabilities)] = 1.0
            features[_RESIDUAL] = probabilities - predicted_class
        return features

    def candidate_rank(self, record: Mapping, order) -> tuple[float, object]:
        """`(score, tie order)` of a scored record: the candidates are the largest `records.queue_key` of it.

        The predicted loss and the item's `order`; for a sample, `sample_key(seed, id)` and the id, so the
        sample depends on the items alone (triage's `Candidates` and Beam's combiner both rank by this).
        """
        if self.samples:
            return sample_key(self.seed, record["id"]), record["id"]
        return record["predicted_loss"], order

    def select(
        self, ranked: Sequence[tuple[dict, Mapping[str, np.ndarray] | None]], labeled: np.ndarray | None = None
    ) -> list[dict]:
        """The queue from the candidates `(record, features)`, best first: the picks by predicted loss.

        `labeled`: `(L, D)` embeddings of the items already labeled, which `typiclust` fills around (the
        clusters they cover are picked from last); `None` or empty: none. The other selections ignore it.
        """
        records = [record for record, _ in ranked]
        if not self.diverse or len(records) <= self.top_k:
            return records[: self.top_k]
        return [records[position] for position in np.sort(self._picks(ranked, labeled))]

    def _picks(self, ranked, labeled) -> np.ndarray:
        from keras_lossal.acquisition import diversity  # TensorFlow: only when a diverse queue is built

        missing = [record["id"] for record, features in ranked if not self.has_features(features)]
        if missing:
            raise ResumeWithoutFeaturesError(f"{len(missing)} candidates have no selection features: {missing[:5]}")
        predicted = np.array([record["predicted_loss"] for record, _ in ranked], np.float32)
        embeddings = np.stack([features[EMBEDDING] for _, features in ranked])
        gradients = self.selection in _GRADIENT_SELECTIONS
        residuals = np.stack([features[_RESIDUAL] for _, features in ranked]) if gradients else None
        kept = _finite_rows(embeddings, residuals)
        if len(kept) <= self.top_k:
            return kept
        if self.selection == _CLUSTERS:
            return kept[diversity.hardest_per_cluster(predicted[kept], embeddings[kept], self.top_k, self.seed)]
        if self.selection == _TYPICLUST:
            chosen, _ = diversity.typiclust_picks(embeddings[kept], labeled, self.top_k, self.seed)
            return kept[chosen]
        if self.selection == _BADGE:
            chosen, _ = diversity.kmeans_plus_plus_gradients(residuals[kept], embeddings[kept], self.top_k, self.seed)
            return kept[chosen]
        chosen, _ = diversity.kmeans_plus_plus_loss_weighted(
            predicted[kept], residuals[kept], embeddings[kept], self.top_k, self.seed
        )
        return kept[chosen]

    def has_features(self, features: Mapping[str, np.ndarray] | None) -> bool:
        """Whether `features` hold all the selection needs."""
        return features is not None and (self.selection not in _GRADIENT_SELECTIONS or _RESIDUAL in features)


def sample_key(seed: int, item_id: str) -> float:
    """A uniform number in [0, 1) from `(seed, item_id)`: the sampled queues take the items with the largest.

    The 53 high bits of BLAKE2b of `f"{seed}:{item_id}"`, so the same on every machine, Python and run.

    Example:

    >>> sample_key(0, "a.png") == sample_key(0, "a.png") != sample_key(1, "a.png")
    True
    """
    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2**53


def _finite_rows(embeddings: np.ndarray, residuals: np.ndarray | None) -> np.ndarray:
    """Positions whose features are finite; the others are left out of the selection, with a warning."""
    finite = np.isfinite(embeddings).all(axis=1)
    if residuals is not None:
        finite &= np.isfinite(residuals).all(axis=1)
    if not finite.all():
        warnings.warn(
            f"{int(np.sum(~finite))} queue candidates have NaN/inf embeddings; they were not selected.",
            RuntimeWarning,
            stacklevel=4,
        )
    return np.flatnonzero(finite)


class Candidates:
    """The queue's candidates among the scored records, with their selection features, for one triage run.

    The records with the highest predicted loss, or the uniform sample (`QueueRule.candidate_rank`). Holds at
    most `rule.max_candidates` records (`peak` is the most it held) and, with `log_path`, keeps
    `candidates.jsonl` as the module docstring says.

    Args:
        rule: the `QueueRule`.
        log_path: the features file (`None`: not persisted; no resume).

    Example:

    >>> candidates = Candidates(QueueRule(top_k=1, selection="top_k"))
    >>> for order, loss in enumerate([0.2, 0.7, 0.5]):
    ...     _ = candidates.add([{"id": f"i{order}", "predicted_loss": loss}], [order])
    >>> [record["id"] for record in candidates.queue()], candidates.peak
    (['i1'], 1)
    """

    def __init__(self, rule: QueueRule, log_path: str | None = None):
        self.rule = rule
        self.log_path = log_path
        self.peak = 0
        self._top = TopK(rule.max_candidates, rule.threshold)
        self._log: JsonlLog | None = None
        self._lines = 0
        self._pushes = 0

    def __len__(self) -> int:
        return len(self._top)

    def push(self, record: dict, order, features: Mapping[str, np.ndarray] | None = None) -> bool:
        """Offers a scored record (`QueueRule.candidate_rank` decides); returns whether it is now a candidate.

        `order` ranks ties of the predicted loss, lower first (`None`: the order of pushes).
        """
        self._pushes += 1
        held = {**record, _FEATURES: features}
        if self.rule.samples:
            held[_ORDER] = self._pushes if order is None else order
        score, tie_order = self.rule.candidate_rank(record, order)
        admitted = self._top.push(record["predicted_loss"], held, tie_order, score=score)
        self.peak = max(self.peak, len(self._top))
        return admitted

    def add(self, records: Iterable[dict], orders: Iterable) -> None:
        """Offers newly scored records, taking their kept outputs off (`score_isolating(..., keep=rule.outputs)`).

        The features of those that become candidates are buffered for the log: call `sync` before the
        records' scores are synced to `scored.jsonl`.
        """
        admitted = []
        for record, order in zip(records, orders):
            features = self.rule.features(record.pop(KEPT_OUTPUTS, None) or {})
            if self.push(record, order, features) and features is not None:
                admitted.append(_feature_line(record["id"], features))
        if self._log is not None and admitted:
            self._log.write(admitted)
            self._lines += len(admitted)

    def sync(self) -> None:
        """Writes the buffered features to the log and syncs it (compacting a log grown past its bound)."""
        if self._log is None:
            return
        if self._lines > _COMPACT_FACTOR * self.rule.max_candidates:
            self._compact()
        else:
            self._log.sync()

    # ------------------------------------------------------------------ resume
    def restore_features(self, output_dir: str) -> None:
        """After the resumed records are pushed: reads their features back, refuses gaps, opens the log."""
        if self.log_path is None or not self.rule.diverse:
            return
        held = {record["id"]: record for record in self._top.ranked()}
        for line in read_jsonl_log(self.log_path):
            self._lines += 1
            if line["id"] in held:
                held[line["id"]][_FEATURES] = _features_of(line)
        missing = [item_id for item_id, record in held.items() if not self.rule.has_features(record[_FEATURES])]
        if missing:
            raise ResumeWithoutFeaturesError(
                f"Output directory {output_dir!r} holds {len(missing)} scored items among the queue's candidates "
                f"without the features --selection {self.rule.selection} needs (e.g. {missing[0]!r}): an earlier "
                "run kept fewer candidates (a smaller --top-k or --candidates-factor), used another selection (or, "
                "for badge or typiclust, another --seed), or an older keras-lossal. Re-run with that run's settings, with "
                "--selection top_k, or restart (--restart) to score everything again."
            )
        self._log = JsonlLog(self.log_path)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _compact(self) -> None:
        """Rewrites the log with the current candidates' features only (older lines can never be needed)."""
        self._log.close()  # what it buffered is written first: the atomic rewrite below replaces it whole
        held = [record for record in self._top.ranked() if record[_FEATURES] is not None]
        atomic_write(self.log_path, to_jsonl([_feature_line(record["id"], record[_FEATURES]) for record in held]))
        self._log = JsonlLog(self.log_path)
        self._lines = len(held)

    # --------------------------------------------------------------------- end
    def ranked(self) -> list[tuple[dict, dict | None]]:
        """`(record, features)` of every candidate, by predicted loss, best first (the tie rule)."""
        held = self._top.ranked()
        if self.rule.samples:
            held.sort(key=lambda record: queue_key(record["predicted_loss"], record[_ORDER]), reverse=True)
        return [
            ({key: value for key, value in record.items() if key not in _HELD_ONLY}, record[_FEATURES])
            for record in held
        ]

    def queue(self, labeled: np.ndarray | None = None) -> list[dict]:
        """The queue (`QueueRule.select` of the candidates, with the `labeled` items' embeddings), without ranks."""
        return self.rule.select(self.ranked(), labeled)


def _feature_line(item_id: str, features: Mapping[str, np.ndarray]) -> dict:
    """A `candidates.jsonl` line: float32 arrays as base64 of their little-endian bytes (exact and compact)."""
    encoded = {
        name: base64.b64encode(np.asarray(value, "<f4").tobytes()).decode("ascii") for name, value in features.items()
    }
    return {"id": item_id, **encoded}


def _features_of(line: Mapping[str, str]) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(base64.b64decode(value), "<f4").astype(np.float32)
        for name, value in line.items()
        if name != "id"
    }
