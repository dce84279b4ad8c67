"""Triage: turn a stream of unlabeled items into a ranked labeling queue.

Items are read and checked ahead of the scorer by a bounded pool of threads
(`read_threads`; results are taken in input order, so the outputs do not
depend on it) and scored in batches by predicted loss (in-process or through
TF Serving). Every item ends up in exactly one of two append-only logs in the
output directory, written and synced about once a second (`COMMIT_SECONDS`)
and at the end, so a kill loses at most the batches scored since the last
sync, and a resume scores those again:

- `scored.jsonl`: id, path, predicted loss, class and probabilities, the
  model version that scored it, the payload's sha256 and the item's position
  in the input;
- `failures.jsonl`: id, path, reason and whether a re-run retries it
  (timeouts and an unavailable server are retried, with the server's error
  `code`; corrupt images are not).

Re-running on the same output directory reads both logs and scores only what
is missing, so an interrupted job resumes instead of starting over; at the end
of every run, failure records superseded by a later score or failure of the
same id are removed. The queue (`queue.jsonl`, `queue.csv`,
`label_studio_tasks.json` and its `label_config.xml`, see
`keras_lossal.serving.labeling`) is chosen by a `QueueRule` (`keras_lossal.serving.queue`):
by default the highest predicted loss in each of K k-means clusters of the
`candidates_factor * K` highest-scored items' embeddings. Those candidates are
kept in a bounded heap while streaming (their features also in
`candidates.jsonl`, for resume), so memory is O(candidates_factor * K * D + batch)
(plus one id per item for resume bookkeeping, and one content hash per item
with `dedupe`).

One queue ranks the scores of one model version. `state.json` names the model
(without version) and the version its scores come from; a resume that would
add another version's scores is refused, and a server that starts answering
with another version mid-run stops the run (`ModelVersionChangedError`,
outputs kept), unless the scorer is pinned to a version. Outputs of older
runs, whose records carry no version, resume when `state.json` names the
version (in-process and pinned runs) or the caller pins it. The model is
compared canonically (`canonical_model`: a SavedModel's base path absolute),
so the same model typed two ways resumes.

An item's identity is its content hash (`sha256` in the records, the queue
and the Label Studio tasks), beside its absolute path. Items already labeled
(`exclude_content`, the hashes of labeled-set manifests) are recognised by
their bytes under any name, and neither scored nor queued (nor logged).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from keras_lossal.contracts import (
    COMMIT_SECONDS,
    DEFAULT_READ_THREADS,
    Item,
    Scorer,
    TriageSettings,
    check_integer,
    check_scorer,
    trained_items,
)
from keras_lossal.files import atomic_open, atomic_write
from keras_lossal.records import (
    CANDIDATES_FILE,
    DUPLICATE_REASON,
    EMBEDDING,
    FAILURES_FILE,
    LABEL_CONFIG_FILE,
    LABEL_STUDIO_FILE,
    MODEL_VERSION,
    QUEUE_CSV,
    QUEUE_JSONL,
    SCORED_FILE,
    STATE_FILE,
    SUMMARY_FILE,
    JsonlLog,
    TopK,
    assign_ranks,
    content_sha256,
    failure_record,
    queue_csv,
    read_jsonl_log,
    to_jsonl,
)
from keras_lossal.serving.labeling import LabelStudioOptions, write_labeling_files
from keras_lossal.serving.queue import Candidates, QueueRule
from keras_lossal.serving.readers import precheck
from keras_lossal.serving.scorers import KEPT_OUTPUTS, score_isolating

_DUPLICATE_OF = "duplicate_of"  # a content-duplicate failure's owner: the first item with the same bytes

# `TopK` lives in `keras_lossal.records` (Beam ranks with the same rule); re-exported as part of triage's API.
__all__ = [
    "EmbeddedItems",
    "ModelVersionChangedError",
    "ServerUnavailableError",
    "TopK",
    "TriageResult",
    "TriageStopped",
    "embed_items",
    "triage",
]


@dataclasses.dataclass
class TriageResult:
    """What a triage run did.

    Attributes:
        scored: items scored in this run.
        failed: items that failed in this run.
        resumed: items skipped because an earlier run already handled them.
        queued: length of the labeling queue.
        total_scored: items in `scored.jsonl` after the run.
        total_failed: items in `failures.jsonl` after the run.
        seconds: wall time of this run.
        output_dir: where the files are.
        queue: the ranked queue, as `queue.jsonl` holds it.
        model_version: the model version the queue's scores come from (`None`: not known).
        skipped: files the reader passed over in this run, by reason (`{"unsupported extension .gif": 2}`).
        excluded_labeled: items kept out of the queue in this run because their bytes are already labeled
            (`exclude_content`): not scored, or, scored by an earlier run, not queued.
        selection: the selection that chose the queue (`budget_switch` resolved to `typiclust` or `badge`).
        selection_reason: for `budget_switch`, why it chose that (labeled items, classes, switch point); else "".
    """

    scored: int
    failed: int
    resumed: int
    queued: int
    total_scored: int
    total_failed: int
    seconds: float
    output_dir: str
    queue: list[dict]
    model_version: int | None = None
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    excluded_labeled: int = 0
    selection: str = ""
    selection_reason: str = ""

    @property
    def items_per_second(self) -> float:
        return (self.scored + self.failed) / self.seconds if self.seconds > 0 else float("nan")


class TriageStopped(RuntimeError):
    """Triage stopped before the end of the stream; what it scored is written.

    Attributes:
        result: the `TriageResult` of the stopped run (its logs and queue are written).
    """

    def __init__(self, message: str, result: TriageResult):
        super().__init__(message)
        self.result = result


class ServerUnavailableError(TriageStopped):
    """Triage stopped because the server failed several scoring calls in a row; re-running resumes."""


class ModelVersionChangedError(TriageStopped):
    """Triage stopped because the server answered with another model version than the queue's scores come from.

    The answers of the other version are not written; re-run pinned to the queue's version, or restart.
    """


def triage(
    items: Iterable[Item],
    scorer: Scorer,
    output_dir: str,
    settings: TriageSettings | None = None,
    *,
    batch_size: int = 32,
    restart: bool = False,
    progress: Callable[[int, int], None] | None = None,
    dedupe: bool = False,
    stop_after_server_errors: int | None = 3,
    label_studio: LabelStudioOptions | None = None,
    skipped: Mapping[str, int] | None = None,
    exclude_content: Collection[str] = (),
    read_threads: int = DEFAULT_READ_THREADS,
    commit_seconds: float | None = None,
    labeled_embeddings: np.ndarray | None = None,
    scoring_calls: int | None = None,
    labeled_count: int | None = None,
    **setting_fields: Any,
) -> TriageResult:
    """Scores `items` by predicted loss and writes the labeling queue to `output_dir`.

    Every item read ends in exactly one of `scored.jsonl` / `failures.jsonl` when a run finishes (a
    failure superseded by a later score or failure of the same id is removed). Records carry the
    payload's `sha256` and scored ones the item's `input_index` in the stream, so ties in the queue keep
    the earlier item even across resumed runs.

    Args:
        items: `Item`s, e.g. from `keras_lossal.serving.readers.read_items`.
        scorer: a `keras_lossal.contracts.Scorer`: an `InProcessScorer`, a `ServerScorer` or your own.
        output_dir: where logs and the queue go; re-running resumes there.
        settings: the queue and the image limits (`keras_lossal.contracts.TriageSettings`: `top_k`,
            `threshold`, `selection`, `candidates_factor`, `seed`, `max_image_pixels`, `max_image_bytes`),
            the same settings Beam's `ScorePool` takes. Its fields may also be given as keyword arguments
            (`triage(items, scorer, out, top_k=100)`), which replace those of `settings`. The default
            selection, `"budget_switch"`, is `"typiclust"` while fewer than `labels_per_class` (10) items per
            class are labeled (`labeled_count`) and `"badge"` from there; the queue lists the picks by
            predicted loss, highest first.
        batch_size: items per scoring call.
        restart: discard earlier results in `output_dir` instead of resuming.
        progress: called as `progress(scored, failed)` after every batch.
        dedupe: items whose bytes equal an earlier item's are not scored; they go to the failures
            file as "duplicate content" naming the first item (so copies do not fill the queue).
        stop_after_server_errors: stop (raising `ServerUnavailableError`, outputs written) after this
            many scoring calls in a row failed on the server side (unavailable, timeouts, ...), instead
            of failing every remaining item; `None` never stops.
        label_studio: how the Label Studio tasks name images (`LabelStudioOptions`: a local-files
            document root or a cloud URL prefix; TFRecord items' images written out or refused). The
            tasks, and `label_config.xml` over the class names, are written beside the queue.
        skipped: the counter given to `read_items(..., skipped=...)`: files the reader passed over, by
            reason; read once the stream ends, and reported in the result and `summary.json`.
        exclude_content: content hashes (hex SHA-256 of the bytes) of items already labeled, e.g.
            `keras_lossal.labeling.manifest.labeled_content(manifests).sha256`: an item with those bytes, under any
            name, is not scored and not queued (nor logged); how many is `excluded_labeled`.
        read_threads: threads reading and checking items ahead of the scorer (the outputs are the same
            for any number: items are handled in input order).
        commit_seconds: the logs are written and synced at most this often (and at the end); a kill
            loses at most this much scoring and the batches in flight, which a resume does again. 0
            commits after every batch; `None`: `COMMIT_SECONDS` (1 s).
        labeled_embeddings: `(L, D)` embeddings of the items already labeled (`embed_items` of them), which
            the `"typiclust"` selection fills around; the other selections ignore them. Not part of the
            resume state: pass them again on a resume.
        scoring_calls: batches scored at once, each in a thread of its own, while the calling thread
            records the ones before them (in input order). `None`: the scorer's `concurrent_calls` (an
            `InProcessScorer`: 2; two calls keep the CPU busier than one) or 1. A server scorer sends its
            own concurrent requests (`--concurrency`), so it keeps 1: after a server-side failure the next
            batch waits for it, and a stop after N failed calls makes exactly N calls.
        labeled_count: how many items are labeled, for the `"budget_switch"` selection. `None`: the rows of
            `labeled_embeddings` when given, else the export's `training.num_items` (`lossal export` of a
            `lossal train` output records it), else not known, and the switch takes `"badge"`. The choice
            and why are in the result (`selection`, `selection_reason`) and `summary.json`.
        **setting_fields: fields of `TriageSettings` (see `settings`).

    Example:

    >>> from keras_lossal.serving import InProcessScorer, read_items
    >>> result = triage(read_items("unlabeled/"), InProcessScorer("models/lossal"), "triage_out", top_k=100)  # doctest: +SKIP
    >>> result.queue[0]["predicted_loss"]  # doctest: +SKIP
    """
    options = TriageSettings.of(settings, **setting_fields)
    if labeled_count is not None:
        labeled_count = check_integer("labeled_count", labeled_count, minimum=0)
    if labeled_embeddings is not None and np.size(labeled_embeddings) and np.ndim(labeled_embeddings) != 2:
        raise ValueError(
            "Expected labeled_embeddings as an (L, D) array of the labeled items' embeddings. Received shape "
            f"{np.shape(labeled_embeddings)}"
        )
    knobs = (batch_size, dedupe, stop_after_server_errors, read_threads, commit_seconds, scoring_calls)
    settings = _Settings.checked(options, scorer, *knobs)
    scorer = check_scorer(scorer)  # after the values: a wrong value is named first, whatever the scorer
    if labeled_count is None and labeled_embeddings is not None and np.size(labeled_embeddings):
        labeled_count = len(labeled_embeddings)
    options, why = options.resolved(
        trained_items(scorer) if labeled_count is None else labeled_count, len(scorer.labels or ()) or None
    )
    rule = QueueRule.of(options)
    labeling = _labeling_options(label_studio, scorer)
    run = _Run(output_dir, scorer, rule, settings, progress)
    run.labeled = frozenset(exclude_content)
    recorded_version = _claim_output_dir(output_dir, run.description, restart)
    start = time.perf_counter()
    run.resume(recorded_version)
    run.score(items)
    total_failed = run.compact_failures()
    queue = run.ranked_queue(labeled_embeddings)
    _write_queue(output_dir, queue)
    result = run.result(queue, total_failed, seconds=time.perf_counter() - start, skipped=skipped or {})
    result.selection_reason = why
    _write_summary(output_dir, result, run.stopped)
    write_labeling_files(output_dir, queue, run.labels, labeling, run.description)
    if run.stopped:
        raise run.stop_error(f"Triage {run.stopped}", result)
    return result


class EmbeddedItems(NamedTuple):
    """What `embed_items` returns."""

    embeddings: np.ndarray  # (N, D) float32, in item order, without the items that failed
    failures: list[dict]  # failure records (`records.failure_record`; server failures are `retryable`)
    model_versions: set  # the model versions that computed the embeddings


def embed_items(
    items: Iterable[Item], scorer: Scorer, settings: TriageSettings | None = None, *, batch_size: int = 32
) -> EmbeddedItems:
    """The `embedding` output of `items` (e.g. the labeled items, for `triage(..., labeled_embeddings=...)`).

    Items are checked and scored as triage does (the image limits of `settings`, else the export's; a
    refused item fails alone; NaN/inf fails); nothing is written.

    Example:

    >>> embedded = embed_items(read_items("labeled/"), InProcessScorer("models/lossal"))  # doctest: +SKIP
    >>> embedded.embeddings.shape  # doctest: +SKIP
    (24, 64)
    """
    scorer = check_scorer(scorer)
    batch_size = check_integer("batch_size", batch_size)
    max_pixels, max_bytes = TriageSettings.of(settings).image_limits(scorer)
    rows: list[np.ndarray] = []
    failures: list[dict] = []
    versions: set = set()

    def flush(batch: list) -> None:
        if batch:
            scored, failed = score_isolating(scorer, batch[0][0].kind, batch, None, keep=(EMBEDDING,))
            by_id = {item.item_id: item for item, _ in batch}
            for record in scored:
                row = np.asarray(record[KEPT_OUTPUTS][EMBEDDING], np.float32).reshape(-1)
                if np.isfinite(row).all():
                    rows.append(row)
                    versions.add(record.get(MODEL_VERSION))
                else:
                    failed.append(failure_record(by_id[record["id"]], "non-finite embedding"))
            failures.extend(failed)
            batch.clear()

    batch: list = []
    for item in items:
        payload, failure = precheck(item, max_pixels, max_bytes)
        if failure is not None:
            failures.append(failure)
            continue
        if batch and batch[0][0].kind != item.kind:
            flush(batch)
        batch.append((item, payload))
        if len(batch) >= batch_size:
            flush(batch)
    flush(batch)
    embeddings = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    return EmbeddedItems(embeddings, failures, versions - {None})


# --------------------------------------------------------------------------- the steps
@dataclasses.dataclass(frozen=True)
class _Settings:
    """A run's validated knobs, with the image limits resolved against the scorer's export."""

    batch_size: int
    max_image_pixels: int
    max_image_bytes: int
    dedupe: bool
    stop_after_server_errors: int | None
    read_threads: int
    commit_seconds: float = COMMIT_SECONDS
    scoring_calls: int = 1

    @classmethod
    def checked(
        cls,
        options: TriageSettings,
        scorer: Scorer,
        batch_size,
        dedupe,
        stop_after_server_errors,
        read_threads,
        commit_seconds=None,
        scoring_calls=None,
    ):
        max_image_pixels, max_image_bytes = options.image_limits(scorer)
        if scoring_calls is None:  # the scorer's own preference (an in-process model: 2), else one at a time
            scoring_calls = getattr(scorer, "concurrent_calls", 1)
        return cls(
            batch_size=check_integer("batch_size", batch_size),
            max_image_pixels=max_image_pixels,
            max_image_bytes=max_image_bytes,
            dedupe=bool(dedupe),
            stop_after_server_errors=check_integer("stop_after_server_errors", stop_after_server_errors, optional=True),
            read_threads=check_integer("read_threads", read_threads),
            commit_seconds=_checked_commit_seconds(COMMIT_SECONDS if commit_seconds is None else commit_seconds),
            scoring_calls=check_integer("scoring_calls", scoring_calls),
        )


def _checked_commit_seconds(commit_seconds: float) -> float:
    if (
        isinstance(commit_seconds, bool)
        or not isinstance(commit_seconds, (int, float))
        or not (0 <= commit_seconds < math.inf)
    ):
        raise ValueError(f"Expected commit_seconds to be a finite number >= 0. Received: {commit_seconds!r}")
    return float(commit_seconds)


def _claim_output_dir(output_dir: str, description: str, restart: bool) -> int | None:
    """Creates `output_dir` for the model `description`, clearing it on restart; refuses another model's scores.

    Returns the model version `state.json` says the scores come from (`None`: not recorded).
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, STATE_FILE)
    if restart:
        names = (SCORED_FILE, FAILURES_FILE, QUEUE_JSONL, QUEUE_CSV, LABEL_STUDIO_FILE, LABEL_CONFIG_FILE, SUMMARY_FILE)
        for name in (*names, CANDIDATES_FILE, STATE_FILE):
            if os.path.exists(os.path.join(output_dir, name)):
                os.remove(os.path.join(output_dir, name))
        return None
    if not os.path.exists(path):
        return None
    previous, version = read_state(path)
    if canonical_model(previous) != canonical_model(description):
        raise ValueError(
            f"Output directory {output_dir!r} holds scores from {previous!r}, not {description!r}; scores "
            "from different models do not rank together. Use a new output directory, or restart (--restart; "
            "restart=True in Python)."
        )
    return version


_SAVED_MODEL = "saved_model:"


def canonical_model(description: str | None) -> str | None:
    """A model description as resume compares it: a SavedModel base path absolute, with symlinks resolved.

    In-process scorers describe their model so already; older runs recorded the path as it was typed
    (`saved_model:../models/lossal`), read here relative to the current directory.

    Example:

    >>> canonical_model("saved_model:/srv/models/../models/lossal"), canonical_model("server:lossal")
    ('saved_model:/srv/models/lossal', 'server:lossal')
    """
    if not isinstance(description, str) or not description.startswith(_SAVED_MODEL) or "://" in description:
        return description
    return _SAVED_MODEL + os.path.realpath(description[len(_SAVED_MODEL) :])


def read_state(path: str) -> tuple[str | None, int | None]:
    """`(model description, model version)` from a triage `state.json`.

    A `state.json` without `model_version` (keras-lossal 0.1 wrote the version inside the description)
    is refused: its scores cannot be tied to a model version, so they must not rank with new ones.

    Example:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "state.json")
    >>> _ = open(path, "w").write('{"scorer": "server:lossal", "model_version": 2}')
    >>> read_state(path)
    ('server:lossal', 2)
    """
    with open(path, encoding="utf-8") as handle:
        state = json.load(handle)
    if not isinstance(state, dict) or MODEL_VERSION not in state or not isinstance(state.get("scorer"), str):
        raise ValueError(
            f"Expected a triage state.json with 'scorer' and '{MODEL_VERSION}' (written since keras-lossal 0.2). "
            f"Received: {path!r} holding {state!r}. Restart the run (--restart; restart=True in Python), or "
            "finish it with the version that started it."
        )
    return state["scorer"], state[MODEL_VERSION]


def _write_state(output_dir: str, description: str, version: int | None) -> None:
    state = {"scorer": description, MODEL_VERSION: version}
    atomic_write(os.path.join(output_dir, STATE_FILE), json.dumps(state, indent=2) + "\n")


class _ServedVersion:
    """The one model version a queue's scores come from: the resumed scores' version, else the first answer's.

    Args:
        pinned: the version the scorer is fixed to (`None`: whatever the server serves).
    """

    def __init__(self, pinned: int | None):
        self.pinned = pinned
        self.version = pinned
        self.recorded: dict[int, int] = {}  # version -> resumed scores
        self.unknown = 0  # resumed scores whose version was never recorded (an older, unpinned server run)

    def resumed(self, version: int | None) -> None:
        if version is None:
            self.unknown += 1
        else:
            self.recorded[version] = self.recorded.get(version, 0) + 1

    def settle(self, output_dir: str) -> None:
        """Fixes the version from the resumed scores; refuses a resume that would mix versions in one queue."""
        recorded = dict(self.recorded)
        if self.unknown and self.pinned is None:
            raise ValueError(
                f"Output directory {output_dir!r} holds {self.unknown} scores from an earlier triage that did not "
                "record which model version answered, and the server may serve another one now. Pin the version "
                "that scored them (--model-version N / TFServingClient(version=N)) to resume with it, or restart "
                "(--restart) to rescore everything."
            )
        if self.unknown:
            recorded[self.pinned] = recorded.get(self.pinned, 0) + self.unknown  # the caller names their version
        if len(recorded) > 1:
            raise ValueError(
                f"Output directory {output_dir!r} already mixes scores of model versions {sorted(recorded)}; "
                "they do not rank together. Restart (--restart) or use a new output directory."
            )
        if recorded:
            (version,) = recorded
            if self.pinned is not None and self.pinned != version:
                raise ValueError(
                    f"Output directory {output_dir!r} holds {recorded[version]} scores of model version {version}, "
                    f"but this run scores with version {self.pinned}; versions do not rank together in one queue. "
                    f"Pin version {version} (--model-version {version}) to finish this queue, or restart "
                    f"(--restart) to rescore everything with version {self.pinned}."
                )
            self.version = version

    def admit(self, records: list[dict]) -> tuple[list[dict], list[int | None]]:
        """`(records of the queue's version, the other versions that answered)`; the first answer fixes it."""
        if self.version is None:
            self.version = next((r[MODEL_VERSION] for r in records if r.get(MODEL_VERSION) is not None), None)
        kept, others = [], []
        for record in records:
            version = record.get(MODEL_VERSION, self.version)  # a scorer that names no version: nothing to check
            if version == self.version:
                kept.append(record)
            else:
                others.append(version)
        return kept, others

    def changed_message(self, other: int | None, scored: int) -> str:
        version = self.version
        return (
            f"stopped: the server answered with model version {other} while this queue's {scored} scores come "
            f"from version {version} (they are kept; the answers of version {other} were not written). To finish "
            f"this queue with version {version}, re-run pinned to it (--model-version {version}) while the server "
            f"still serves it; to rank everything with version {other}, re-run with --restart (or a new output "
            "directory)."
        )


def _labeling_options(options: LabelStudioOptions | None, scorer: Scorer) -> LabelStudioOptions:
    """`options` (default: paths as they are), naming the scorer's export's `tf.Example` image feature."""
    options = options or LabelStudioOptions()
    feature = scorer.example_feature
    return dataclasses.replace(options, example_feature=feature) if feature else options


def _write_queue(output_dir: str, queue: list[dict]) -> None:
    atomic_write(os.path.join(output_dir, QUEUE_JSONL), to_jsonl(queue))
    atomic_write(os.path.join(output_dir, QUEUE_CSV), queue_csv(queue))


def _write_summary(output_dir: str, result: TriageResult, stopped: str | None) -> None:
    summary = {key: value for key, value in dataclasses.asdict(result).items() if key != "queue"}
    summary["stopped"] = stopped
    atomic_write(os.path.join(output_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")


class _Run:
    """What one triage run changes: the two logs, the queue, the counts and what is already handled.

    Resume rules: an id in `scored.jsonl` is done; otherwise its *last* failure record decides (retryable:
    score again; not retryable: done). Duplicate-id records are about a second item with a known id.
    `prepare` runs in the reader threads and only reads `done`, which is fixed once `resume` returns;
    everything else is changed by the calling thread alone, in input order.

    The logs buffer their records in memory; `commit` writes and syncs them, the candidates' features
    first, at most `COMMIT_SECONDS` apart and at the end (also when the run stops or raises).

    Scoring is pipelined: up to `settings.scoring_calls` batches are scored at once, each in a thread of
    its own, while the calling thread records the batches before them (the scorer releases the
    interpreter while the model runs), so the records are written in input order, a few batches later.
    After a batch that failed on the server side the next one waits for those in flight, so with one
    call at a time (a server scorer) a stop after N failed calls makes exactly N calls. Batches in
    flight when the run stops or raises are dropped unrecorded, like an unflushed one: a resume scores
    them again.
    """

    def __init__(
        self,
        output_dir: str,
        scorer,
        rule: QueueRule,
        settings: _Settings,
        progress: Callable[[int, int], None] | None,
    ):
        self.scorer = scorer
        self.settings = settings
        self.progress = progress
        self.rule = rule
        self.candidates = Candidates(rule, os.path.join(output_dir, CANDIDATES_FILE))
        self.labels = scorer.labels
        self.description = scorer.description
        self.output_dir = output_dir
        self.scored_path = os.path.join(output_dir, SCORED_FILE)
        self.failures_path = os.path.join(output_dir, FAILURES_FILE)
        self.counts = {"scored": 0, "failed": 0, "resumed": 0, "labeled": 0}
        self.labeled: frozenset[str] = frozenset()  # content hashes of items already labeled: never queued
        self.scored_ids: set[str] = set()
        self.done: frozenset[str] = frozenset()
        self.duplicates_recorded: set[str] = set()
        self.seen_this_run: set[str] = set()
        self.owner_of_content: dict[str, str] = {}  # with dedupe: sha256 -> the first item with those bytes
        self.pending: list[tuple[Item, bytes, int, str]] = []
        self.scoring: concurrent.futures.ThreadPoolExecutor | None = None  # the scoring threads, during `score`
        # The batches being scored, oldest first: at most `settings.scoring_calls` after each `flush`.
        self.in_flight: collections.deque[tuple[concurrent.futures.Future, dict]] = collections.deque()
        self.server_error_streak = 0
        self.last_commit = time.monotonic()
        self.stopped: str | None = None
        self.stop_error: type[TriageStopped] = ServerUnavailableError
        self.versions = _ServedVersion(scorer.version)
        self.state_version: object = _UNWRITTEN

    # ------------------------------------------------------------------ resume
    def resume(self, recorded_version: int | None) -> None:
        """Reads what earlier runs logged (queueing their scores), checks their version, opens the logs for appending.

        Records without `model_version` (older runs) count as `recorded_version`, the version `state.json` names.
        """
        for record in read_jsonl_log(self.scored_path):
            if record["id"] in self.scored_ids or not math.isfinite(record["predicted_loss"]):
                continue  # a NaN/inf score (logged by an older version) is scored again and becomes a failure
            self.scored_ids.add(record["id"])
            self.versions.resumed(record.get(MODEL_VERSION, recorded_version))
            if not self._is_labeled(record.get("sha256")):
                self.candidates.push(record, order=record.get("input_index"))
            self._own_content(record.get("sha256"), record["id"])
        last_failure: dict[str, dict] = {}
        for record in read_jsonl_log(self.failures_path):
            if record.get("duplicate"):
                self.duplicates_recorded.add(record["id"])
            else:
                last_failure[record["id"]] = record
        done = set(self.scored_ids)
        copies = {}  # items failed as a copy of another one's bytes: done only if that one was handled
        for item_id, record in last_failure.items():
            if item_id in self.scored_ids or record.get("retryable"):
                continue
            if record.get(_DUPLICATE_OF) is not None:
                copies[item_id] = record[_DUPLICATE_OF]
                continue
            done.add(item_id)
            self._own_content(record.get("sha256"), item_id)
        # A copy whose owner's batch was dropped (a kill, a stop) or failed on the server side is handled
        # again, so the bytes are scored once; a copy never claims the bytes for itself on resume.
        done.update(item_id for item_id, owner in copies.items() if owner in done)
        self.done = frozenset(done)
        self.versions.settle(self.output_dir)
        self.candidates.restore_features(self.output_dir)
        self._save_state()
        self.scored_log, self.failures_log = JsonlLog(self.scored_path), JsonlLog(self.failures_path)

    def _save_state(self) -> None:
        if self.state_version != self.versions.version:
            _write_state(self.output_dir, self.description, self.versions.version)
            self.state_version = self.versions.version

    def _is_labeled(self, digest: str | None) -> bool:
        """Whether an item with these bytes is labeled already (then it is counted, and kept out of the queue)."""
        if digest is None or digest not in self.labeled:
            return False
        self.counts["labeled"] += 1
        return True

    def _own_content(self, digest: str | None, item_id: str) -> str:
        """The id of the first item with these bytes (this one if it is the first); ids only with dedupe."""
        if not self.settings.dedupe or digest is None:
            return item_id
        return self.owner_of_content.setdefault(digest, item_id)

    # ------------------------------------------------------------------ scoring
    def score(self, items: Iterable[Item]) -> None:
        """Streams `items` (read ahead by threads) through `handle`, until the end or a stop; commits, closes the logs."""
        depth = max(2 * self.settings.batch_size, 4 * self.settings.read_threads)
        stream = _read_ahead(items, self.prepare, depth, self.settings.read_threads)
        self.scoring = concurrent.futures.ThreadPoolExecutor(
            self.settings.scoring_calls, thread_name_prefix="lossal-triage-scorer"
        )
        try:
            for position, (item, prepared) in enumerate(stream):
                self.handle(item, prepared, position)
                if self.stopped:
                    break
            if not self.stopped:
                self.flush()
                self.record_in_flight()
        finally:
            stream.close()
            self._drop_in_flight()
            self.scoring.shutdown(wait=True)
            self.commit()
            self.scored_log.close()
            self.failures_log.close()
            self.candidates.close()

    def commit(self) -> None:
        """Writes and syncs what the logs buffered: features before scores (what a resume relies on), then state."""
        self.candidates.sync()
        self.scored_log.sync()
        self.failures_log.sync()
        self._save_state()
        self.last_commit = time.monotonic()

    def prepare(self, item: Item):
        """Runs in a reader thread: loads and checks an item not handled yet; `None` for one that is."""
        if item.item_id in self.done:
            return None
        payload, failure = precheck(item, self.settings.max_image_pixels, self.settings.max_image_bytes)
        digest = None if payload is None else content_sha256(payload)
        return payload, failure, digest

    def handle(self, item: Item, prepared, position: int) -> None:
        if item.item_id in self.seen_this_run:
            if item.item_id not in self.duplicates_recorded:
                duplicate = failure_record(item, DUPLICATE_REASON)
                self.failures_log.write([{**duplicate, "duplicate": True}])
                self.duplicates_recorded.add(item.item_id)
                self.counts["failed"] += 1
            else:
                self.counts["resumed"] += 1
            return
        self.seen_this_run.add(item.item_id)
        if item.item_id in self.done:
            self.counts["resumed"] += 1
            return
        payload, failure, digest = prepared
        if self._is_labeled(digest):
            return
        if failure is not None:
            self._fail([failure if digest is None else {**failure, "sha256": digest}])
            return
        owner = self._own_content(digest, item.item_id)
        if owner != item.item_id:
            reason = f"duplicate content: the same bytes as item {owner!r} (sha256 {digest[:12]}...; not scored)"
            self._fail([{**failure_record(item, reason), "sha256": digest, _DUPLICATE_OF: owner}])
            return
        if self.pending and self.pending[0][0].kind != item.kind:
            self.flush()
        self.pending.append((item, payload, position, digest))
        if len(self.pending) >= self.settings.batch_size:
            self.flush()

    def _fail(self, records: list[dict]) -> None:
        self.failures_log.write(records)
        self.counts["failed"] += len(records)

    def flush(self) -> None:
        """Sends the pending batch to a scoring thread, then records the oldest batches in flight beyond
        `settings.scoring_calls` (in input order)."""
        if not self.pending or self.stopped:
            return
        batch = [(item, payload) for item, payload, _, _ in self.pending]
        facts = {item.item_id: (position, digest) for item, _, position, digest in self.pending}
        self.pending.clear()
        if self.server_error_streak:  # the server failed the last batch: wait for this one's answer first
            self.record_in_flight()
            if self.stopped:
                return  # not scored: a resume scores it
        keep = self.rule.outputs
        future = self.scoring.submit(score_isolating, self.scorer, batch[0][0].kind, batch, self.labels, keep=keep)
        self.in_flight.append((future, facts))
        while len(self.in_flight) > self.settings.scoring_calls and not self.stopped:
            self._record(*self.in_flight.popleft())

    def record_in_flight(self) -> None:
        """Waits for the batches being scored, if any, and records them in input order (until a stop)."""
        while self.in_flight and not self.stopped:
            self._record(*self.in_flight.popleft())

    def _drop_in_flight(self) -> None:
        """Waits for the batches being scored and forgets them (the run stopped or raised): a resume scores them."""
        dropped, self.in_flight = list(self.in_flight), collections.deque()
        concurrent.futures.wait([future for future, _ in dropped])

    def _record(self, future: concurrent.futures.Future, facts: dict) -> None:
        """Logs a scored batch: its scores (of the queue's model version) and failures, then counts and checks."""
        scored, failed = future.result()
        if self.stopped:
            return  # an answer after the stop is not written
        scored, other_versions = self.versions.admit(scored)
        for record in scored:
            record["input_index"], record["sha256"] = facts[record["id"]]
        for record in failed:
            record["sha256"] = facts[record["id"]][1]
        self.candidates.add(scored, [record["input_index"] for record in scored])
        self.scored_log.write(scored)
        self.failures_log.write(failed)
        self.scored_ids.update(record["id"] for record in scored)
        self.counts["scored"] += len(scored)
        self.counts["failed"] += len(failed)
        if time.monotonic() - self.last_commit >= self.settings.commit_seconds:
            self.commit()
        if other_versions:
            self.stopped = self.versions.changed_message(other_versions[0], len(self.scored_ids))
            self.stop_error = ModelVersionChangedError
        else:
            self._watch_server(scored, failed)
        if self.progress is not None:
            self.progress(self.counts["scored"], self.counts["failed"])

    def _watch_server(self, scored: list[dict], failed: list[dict]) -> None:
        server_failures = [record for record in failed if record.get("code")]
        if scored or len(server_failures) < len(failed):
            self.server_error_streak = 0
            return
        self.server_error_streak += 1
        stop_after = self.settings.stop_after_server_errors
        if stop_after is not None and self.server_error_streak >= stop_after:
            self.stopped = (
                f"stopped after {self.server_error_streak} scoring calls in a row failed on the server side "
                f"(last: {server_failures[-1]['reason']}). Is the server up? Re-run the same command to resume: "
                "items already handled are not sent again."
            )

    # -------------------------------------------------------------------- end
    def compact_failures(self) -> int:
        """Drops failure records made stale by a later record of the same id; returns how many remain."""
        return _compact_failures(self.failures_path, self.scored_ids)

    def ranked_queue(self, labeled_embeddings: np.ndarray | None) -> list[dict]:
        # Scores resumed from older runs carry no version: they are the queue's version (checked by `settle`).
        version = self.versions.version
        queue = self.candidates.queue(labeled_embeddings)
        return assign_ranks([r if MODEL_VERSION in r else {**r, MODEL_VERSION: version} for r in queue])

    def result(self, queue: list[dict], total_failed: int, seconds: float, skipped: Mapping[str, int]) -> TriageResult:
        return TriageResult(
            scored=self.counts["scored"],
            failed=self.counts["failed"],
            resumed=self.counts["resumed"],
            queued=len(queue),
            total_scored=len(self.scored_ids),
            total_failed=total_failed,
            seconds=seconds,
            output_dir=self.output_dir,
            queue=queue,
            model_version=self.versions.version,
            skipped={reason: int(count) for reason, count in sorted(skipped.items())},
            excluded_labeled=self.counts["labeled"],
            selection=self.rule.selection,
        )


def _compact_failures(path: str, scored_ids: set[str]) -> int:
    """Rewrites the failures log keeping, per id, only its last record, and none for a scored id.

    Duplicate-id records (about a second item that reused an id) are kept. Reads the file once, and
    streams it a second time only when some record goes; returns the number of records left.
    """
    if not os.path.exists(path):
        return 0
    last_line: dict[str, int] = {}
    total = duplicates = 0
    with open(path, "rb") as source:
        for number, record in enumerate(json.loads(line) for line in source):
            total += 1
            if record.get("duplicate"):
                duplicates += 1
            else:
                last_line[record["id"]] = number
    kept = duplicates + sum(1 for item_id in last_line if item_id not in scored_ids)
    if kept == total:
        return kept
    with open(path, "rb") as source, atomic_open(path, binary=True) as target:
        for number, line in enumerate(source):
            record = json.loads(line)
            if record.get("duplicate") or (last_line[record["id"]] == number and record["id"] not in scored_ids):
                target.write(line)
    return kept


_END = object()
_UNWRITTEN = object()
_READ_CHUNK = 8  # items per reader task


def _read_ahead(
    items: Iterable[Item], prepare: Callable[[Item], Any], depth: int, threads: int = 1, chunk: int = _READ_CHUNK
) -> Iterator[tuple[Item, Any]]:
    """Yields `(item, prepare(item))` in input order; `threads` threads prepare items, at most `depth` ahead.

    A background thread walks `items` and hands them to the pool `chunk` at a time (one task per chunk,
    not per item: the hand-over costs more than reading a small file); the caller takes the results in
    the order of `items`, whatever order they finish in, and an exception of `prepare` is raised at its
    item's place. Overlaps reading files (local disk, NFS, object stores) with scoring; memory stays
    O(depth).
    """
    chunk = max(1, min(chunk, depth // 4))  # a short read-ahead stays short
    results: queue.Queue = queue.Queue(maxsize=max(1, depth // chunk))
    stop = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="lossal-triage-reader")

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def prepare_all(batch: list[Item]) -> list[tuple[bool, Any]]:
        outcomes = []
        for item in batch:
            try:
                outcomes.append((True, prepare(item)))
            except BaseException as error:  # noqa: BLE001 - raised in the consuming thread, at this item
                outcomes.append((False, error))
        return outcomes

    def work() -> None:
        try:
            for batch in _batched(items, chunk):
                if not put((batch, pool.submit(prepare_all, batch))):
                    return
            put((_END, None))
        except BaseException as error:  # noqa: BLE001 - re-raised in the consuming thread
            put((_END, error))

    thread = threading.Thread(target=work, name="lossal-triage-lister", daemon=True)
    thread.start()
    try:
        while True:
            batch, value = results.get()
            if batch is _END:
                if value is not None:
                    raise value
                return
            for item, (ok, prepared) in zip(batch, value.result()):
                if not ok:
                    raise prepared
                yield item, prepared
    finally:
        stop.set()
        thread.join(timeout=10)
        pool.shutdown(wait=False, cancel_futures=True)


def _batched(items: Iterable, size: int) -> Iterator[tuple]:
    """Tuples of `size` consecutive items (the last may be shorter), like `itertools.batched` (Python 3.12)."""
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, size)):
        yield batch
