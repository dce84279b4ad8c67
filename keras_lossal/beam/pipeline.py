"""`ScorePool`: read, score and rank an unlabeled pool on any Beam runner.

The pipeline, per item:

    read (folder / glob / TFRecord / manifest) -> header checks (decoding guard)
      -> group by id (drops duplicate ids, rebalances work across workers)
      -> RunInference(LossalModelHandler)   # batched, one model per worker
      -> scores | failures,  scores -> Top.Of(candidates) -> QueueRule.select -> ranked queue

Records, the tie rule and the file names come from `keras_lossal.records`,
and the queue rule (`QueueRule`: which items are candidates, the highest
predicted losses or the uniform sample of `badge` and `typiclust`, and which of them are queued)
from `keras_lossal.serving.queue`, as for
in-process triage (`scored.jsonl`, `failures.jsonl`, `queue.jsonl`), so
downstream tools read either and both queue the same items. Every item ends in
exactly one of `scores` and `failures`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from keras_lossal.contracts import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    TriageSettings,
    check_integer,
    trained_items,
)
from keras_lossal.export import read_export_config, resolve_version_dir
from keras_lossal.records import (
    DUPLICATE_REASON,
    FAILURES_FILE,
    QUEUE_CSV,
    QUEUE_JSONL,
    SCORED_FILE,
    assign_ranks,
    failure_record,
    jsonl_line,
    queue_csv,
    queue_key,
    sharded,
    to_jsonl,
)
from keras_lossal.serving.queue import QueueRule
from keras_lossal.serving.readers import (
    IMAGE_EXTENSIONS,
    INPUT_TYPES,
    Item,
    detect_input_type,
    is_inside,
    precheck,
    read_file,
    read_image_directory,
    read_manifest,
    read_tfrecord,
)
from keras_lossal.serving.scorers import (
    KEPT_OUTPUTS,
    SIGNATURE_BY_KIND,
    InProcessScorer,
    MissingOutputError,
    score_isolating,
)

__all__ = ["LossalModelHandler", "ReadPool", "ScorePool", "WriteScorePool", "score_pool"]

METRICS_NAMESPACE = "keras_lossal"
_WILDCARDS = "*?["


# --------------------------------------------------------------------------- items
# A pool item travels between stages as a plain dict (Beam encodes dicts without pickling):
# {"id", "path", "kind", "payload", "extra", "order"}; `order` = (source file, position) breaks
# ties the way triage does (the earlier item wins) and picks which duplicate id is kept.


def _pool_item(item: Item, payload: bytes, order: tuple[str, int]) -> dict[str, Any]:
    return {
        "id": item.item_id,
        "path": item.path,
        "kind": item.kind,
        "payload": payload,
        "extra": item.extra,
        "order": order,
    }


def _as_item(pool_item: dict[str, Any]) -> Item:
    return Item(pool_item["id"], pool_item["path"], pool_item["kind"], extra=pool_item["extra"])


def _resolve_input(input_path: str, input_type: str) -> tuple[str, str]:
    """Returns `(input_type, file pattern)` for `input_path`."""
    if input_type not in INPUT_TYPES:
        raise ValueError(f"Expected input_type in {INPUT_TYPES}. Received: input_type={input_type!r}")
    if not isinstance(input_path, str) or not input_path:
        raise ValueError(f"Expected a path or glob for the input. Received: input_path={input_path!r}")
    is_directory = input_path.endswith("/") or os.path.isdir(input_path)
    if input_type == "auto":
        if is_directory or input_path.lower().endswith(IMAGE_EXTENSIONS):
            input_type = "images"
        else:
            input_type = detect_input_type(input_path)
    if "://" not in input_path:
        # Local matches come back absolute; image ids are relative to the absolute glob base.
        input_path = os.path.abspath(input_path)
    if input_type == "images" and is_directory:
        return input_type, FileSystems.join(input_path.rstrip("/"), "**")
    return input_type, input_path


def _glob_base(pattern: str) -> str:
    """The folder part of `pattern` before its first wildcard; image ids are paths relative to it."""
    cut = min((pattern.find(char) for char in _WILDCARDS if char in pattern), default=len(pattern))
    prefix = pattern[:cut]
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""


class _ListImageDirectory(beam.DoFn):
    """Lists a local image folder with triage's reader, so the same names are items and the same ones fail.

    A directory named like an image (which a file match never lists) and a symlink out of the folder
    become failures here; only `(item_id, path)` pairs travel on, and the bytes are read after the reshuffle.
    """

    def process(self, root):
        for item in read_image_directory(root):
            if item.error is not None:
                yield beam.pvalue.TaggedOutput("failures", failure_record(item, item.error))
            else:
                yield item.item_id, item.path


class _LoadListedImages(beam.DoFn):
    """Loads the `(item_id, path)` pairs `_ListImageDirectory` yields and applies triage's header checks."""

    def __init__(self, max_image_pixels: int, max_image_bytes: int):
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes

    def process(self, listed):
        item_id, path = listed
        item = _image_item(item_id, path, self.max_image_bytes)
        yield from _checked(item, (path, 0), self.max_image_pixels, self.max_image_bytes)


class _LoadImages(beam.DoFn):
    """Loads matched image files and applies triage's header checks; bad items go to `failures`."""

    def __init__(self, base: str, max_image_pixels: int, max_image_bytes: int):
        self.base = base
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes

    def process(self, metadata):
        path = metadata.path
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            return
        item_id = path[len(self.base) :] if path.startswith(self.base) else path
        if "://" not in path and self.base and not is_inside(self.base, path):
            error = f"path escapes the input directory {self.base!r} (symlink)"
            yield beam.pvalue.TaggedOutput("failures", failure_record(Item(item_id, path, "image"), error))
            return
        if "://" in path and metadata.size_in_bytes > self.max_image_bytes:
            reason = f"too large: {metadata.size_in_bytes} bytes > max_image_bytes={self.max_image_bytes}"
            yield beam.pvalue.TaggedOutput("failures", failure_record(Item(item_id, path, "image"), reason))
            return
        item = _image_item(item_id, path, self.max_image_bytes)
        yield from _checked(item, (path, 0), self.max_image_pixels, self.max_image_bytes)


def _image_item(item_id: str, path: str, max_image_bytes: int) -> Item:
    if "://" in path:
        return Item(item_id, path, "image", loader=functools.partial(_read_object, path, max_image_bytes))
    # Triage's read: regular files only (a FIFO would block forever), at most max_image_bytes.
    return Item(item_id, path, "image", loader=functools.partial(read_file, path, max_image_bytes))


def _read_object(path: str, max_image_bytes: int) -> bytes:
    """Reads an object-store file through Beam's file systems (they read every scheme Beam matched)."""
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read(max_image_bytes + 1)


def _checked(item: Item, order: tuple[str, int], max_image_pixels: int, max_image_bytes: int):
    payload, failure = precheck(item, max_image_pixels, max_image_bytes)
    if failure is not None:
        yield beam.pvalue.TaggedOutput("failures", failure)
    else:
        yield item.item_id, _pool_item(item, payload, order)


class _ReadTFRecords(beam.DoFn):
    """Reads whole TFRecord files with triage's reader (ids from the `id` feature, corrupt records reported)."""

    def __init__(self, max_image_pixels: int, max_image_bytes: int):
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes

    def process(self, metadata):
        for position, item in enumerate(read_tfrecord(metadata.path)):
            yield from _checked(item, (metadata.path, position), self.max_image_pixels, self.max_image_bytes)


class _ReadManifests(beam.DoFn):
    """Reads JSONL manifests with triage's reader (path-traversal guard, passthrough fields)."""

    def __init__(self, root: str | None, max_image_pixels: int, max_image_bytes: int):
        self.root = root
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes

    def process(self, metadata):
        items = read_manifest(metadata.path, self.root, self.max_image_bytes)
        for position, item in enumerate(items):
            yield from _checked(item, (metadata.path, position), self.max_image_pixels, self.max_image_bytes)


class ReadPool(beam.PTransform):
    """Reads an unlabeled pool as `(item_id, item)` pairs plus a `failures` output.

    Applied to a pipeline, returns `{"items": ..., "failures": ...}`. Items
    that cannot be read, or whose image header fails the export's
    decoding guard (corrupt, unsupported format, decompression bomb, too
    many bytes), become failure records with a reason instead of being
    dropped. Only regular files are read, with triage's rule: a FIFO, device
    or directory named like an image is a failure, never a hang.

    Args:
        input_path: a folder of images (recursively), an image glob
            (`gs://bucket/pool/**.jpg`), a TFRecord file or glob of
            serialized `tf.Example`s, or a JSONL manifest (or glob of shards).
        input_type: `"auto"`, `"images"`, `"tfrecord"` or `"manifest"`.
        root: manifests only; relative paths resolve against it (default:
            the manifest's folder) and paths escaping it are refused.
        max_image_pixels: header-declared pixel limit.
        max_image_bytes: encoded size limit.

    Example:

    >>> import apache_beam as beam  # doctest: +SKIP
    >>> with beam.Pipeline() as pipeline:  # doctest: +SKIP
    ...     pool = pipeline | ReadPool("unlabeled/")
    ...     pool["failures"] | beam.Map(print)
    """

    def __init__(
        self,
        input_path: str,
        input_type: str = "auto",
        root: str | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ):
        super().__init__()
        self.input_type, self.pattern = _resolve_input(input_path, input_type)
        # A local folder is walked with triage's reader (a file match never lists a directory named x.png).
        is_local_folder = self.input_type == "images" and "://" not in input_path and os.path.isdir(input_path)
        self.directory = os.path.abspath(input_path) if is_local_folder else None
        self.root = root
        self.max_image_pixels = check_integer("max_image_pixels", max_image_pixels)
        self.max_image_bytes = check_integer("max_image_bytes", max_image_bytes)

    def expand(self, pbegin):
        limits = (self.max_image_pixels, self.max_image_bytes)
        if self.directory is not None:
            listed = (
                pbegin
                | "Folder" >> beam.Create([self.directory])
                | "ListFolder" >> beam.ParDo(_ListImageDirectory()).with_outputs("failures", main="files")
            )
            loaded = (
                listed.files
                | "SpreadFiles" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(_LoadListedImages(*limits)).with_outputs("failures", main="items")
            )
            failures = (listed.failures, loaded.failures) | "ListAndReadFailures" >> beam.Flatten()
            return {"items": loaded.items, "failures": failures}
        files = pbegin | "MatchFiles" >> fileio.MatchFiles(self.pattern)
        if self.input_type == "images":
            # Spread the file list before loading so bytes are read in parallel.
            reader = _LoadImages(_glob_base(self.pattern), *limits)
            files = files | "SpreadFiles" >> beam.Reshuffle()
        elif self.input_type == "tfrecord":
            reader = _ReadTFRecords(*limits)
            files = files | "SpreadFiles" >> beam.Reshuffle()
        else:
            reader = _ReadManifests(self.root, *limits)
        outputs = files | "Read" >> beam.ParDo(reader).with_outputs("failures", main="items")
        return {"items": outputs.items, "failures": outputs.failures}


# --------------------------------------------------------------------------- model handler
class LossalModelHandler(ModelHandler):
    """A RunInference model handler for SavedModels written by `export_for_serving`.

    Loads the export once per worker (`InProcessScorer`: `tf.saved_model.load`,
    no Keras code from the artifact) and scores each batch through the
    signature that fits the item kind: `score_image_bytes` for encoded images,
    `score_examples` for serialized `tf.Example`s. A batch the model refuses
    (an image whose header passed but whose body does not decode) is split
    until the refused items are found; they come back as failure records,
    the rest are scored.

    Examples are pool-item dicts (`{"id", "path", "kind", "payload", ...}`,
    as `ReadPool` yields them); each `PredictionResult.inference` is a triage
    record: `{"id", "path", "predicted_loss", "class_id", "label",
    "probabilities"}` or `{"id", "path", "reason", "retryable"}`.

    Args:
        model_dir: a TF Serving base path (the highest version is pinned now,
            when the pipeline is built, so every worker loads the same one) or
            a version directory. Local, `gs://` or `s3://` (what TensorFlow's
            file system reads).
        version: a specific version under a base path.
        min_batch_size: smallest batch `BatchElements` forms.
        max_batch_size: largest batch.
        large_model: load one copy per machine shared by its worker processes
            (Beam's `large_model`) instead of one per process.
        keep: scorer outputs handed on with each scored record (`score_isolating`'s
            `keep`), e.g. `QueueRule.outputs`.

    Example:

    >>> from apache_beam.ml.inference.base import KeyedModelHandler, RunInference  # doctest: +SKIP
    >>> handler = KeyedModelHandler(LossalModelHandler("models/lossal", max_batch_size=64))  # doctest: +SKIP
    >>> scored = keyed_items | RunInference(handler)  # doctest: +SKIP
    """

    def __init__(
        self,
        model_dir: str,
        version: int | None = None,
        min_batch_size: int = 1,
        max_batch_size: int = 64,
        large_model: bool = False,
        keep: Sequence[str] = (),
    ):
        min_batch_size = check_integer("min_batch_size", min_batch_size)
        max_batch_size = check_integer("max_batch_size", max_batch_size)
        if min_batch_size > max_batch_size:
            raise ValueError(
                f"Expected min_batch_size <= max_batch_size. Received: min_batch_size={min_batch_size}, "
                f"max_batch_size={max_batch_size}"
            )
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, large_model=large_model)
        self.version_dir = resolve_version_dir(model_dir, version)
        self.keep = tuple(keep)

    def load_model(self) -> InProcessScorer:
        return InProcessScorer(self.version_dir)

    def run_inference(
        self, batch: Sequence[dict[str, Any]], model: InProcessScorer, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        ids = [pool_item["id"] for pool_item in batch]
        if len(set(ids)) != len(ids):
            raise ValueError(f"Expected unique item ids within a batch (ScorePool drops duplicates). Received: {ids}")
        records: dict[str, dict] = {}
        for kind in sorted({pool_item["kind"] for pool_item in batch}):
            pairs = [(_as_item(pool_item), pool_item["payload"]) for pool_item in batch if pool_item["kind"] == kind]
            scored, failed = score_isolating(model, kind, pairs, model.labels, self.keep)
            records.update((record["id"], record) for record in scored + failed)
        return [
            PredictionResult({**pool_item, "payload": b""}, records[pool_item["id"]], model_id=self.version_dir)
            for pool_item in batch
        ]

    def get_num_bytes(self, batch: Sequence[dict[str, Any]]) -> int:
        return sum(len(pool_item["payload"]) for pool_item in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


# --------------------------------------------------------------------------- the transform
class _KeepFirstOfEachId(beam.DoFn):
    def process(self, grouped):
        _, pool_items = grouped
        first, *duplicates = sorted(pool_items, key=lambda pool_item: tuple(pool_item["order"]))
        yield first
        for duplicate in duplicates:
            record = {**failure_record(_as_item(duplicate), DUPLICATE_REASON), "duplicate": True}
            yield beam.pvalue.TaggedOutput("failures", record)


class _SplitPredictions(beam.DoFn):
    """Failures to `failures`; scores as `(order, record, selection features)` (features `None` for top_k)."""

    def __init__(self, rule: QueueRule):
        self.rule = rule
        self.scored = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "scored")
        self.rejected = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "rejected_by_model")

    def process(self, keyed_prediction):
        item_id, prediction = keyed_prediction
        record = prediction.inference
        if record["id"] != item_id:
            raise RuntimeError(f"Score for {record['id']!r} came back under id {item_id!r}")
        if "reason" in record:
            self.rejected.inc()
            yield beam.pvalue.TaggedOutput("failures", record)
        else:
            self.scored.inc()
            record = dict(record)
            features = self.rule.features(record.pop(KEPT_OUTPUTS, None) or {})
            yield tuple(prediction.example["order"]), record, features


def _ordered_queue_key(ordered_record) -> tuple:
    """`records.queue_key` of an `(order, record, ...)` tuple: ties keep the earlier `(source, position)`."""
    order, record = ordered_record[:2]
    return queue_key(record["predicted_loss"], tuple(order))


def _candidate_key(rule: QueueRule, ordered_record) -> tuple:
    """The combiner's key of an `(order, record, ...)` tuple: `QueueRule.candidate_rank`, as triage's `Candidates`."""
    order, record = ordered_record[:2]
    return queue_key(*rule.candidate_rank(record, tuple(order)))


def _ranked_queue(candidates: list, rule: QueueRule) -> list[dict]:
    """The queue, with ranks, from the `(order, record, features)` candidates (`QueueRule.select`).

    The combiner gives them by its key (`badge`, `typiclust`: a hash); the selection sees them by predicted loss, best first.
    """
    best_first = sorted(candidates, key=_ordered_queue_key, reverse=True)
    return assign_ranks(rule.select([(record, features) for _, record, features in best_first]))


def _count_failure(record: dict) -> dict:
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, "failed").inc()
    return record


class ScorePool(beam.PTransform):
    """Scores an unlabeled pool by predicted loss and chooses the labeling queue, as in-process triage does.

    Applied to a pipeline, returns a dict of PCollections:

    - `"scores"`: one triage record per scored item (`id`, `path`,
      `predicted_loss`, and for classifiers `class_id`, `label`,
      `probabilities`; manifest fields under `extra`);
    - `"top_k"`: a single element, the queue: the list of the `top_k` records
      `selection` picks among `candidates_factor * top_k` candidates (the
      highest predicted losses, or for `badge` and `typiclust` a uniform sample of the pool (Beam has no labeled items: typiclust counts every cluster as uncovered);
      `keras_lossal.serving.queue`), by predicted loss,
      highest first, each with its `rank` (ties keep the earlier item; the
      same queue as in-process triage's);
    - `"failures"`: `{"id", "path", "reason", "retryable"}` for every item
      that was not scored (unreadable, failed the header checks, refused by
      the model, duplicate id). Nothing is dropped silently.

    Args:
        input_path: what `ReadPool` reads (image folder or glob, TFRecord,
            JSONL manifest; local or object storage).
        model_dir: the `export_for_serving` base path or version directory.
        settings: the queue and the image limits, `keras_lossal.contracts.TriageSettings` (the same as
            in-process `triage`'s; `threshold` is not supported here). Its fields may also be given as
            keyword arguments (`top_k=100`, `selection="badge"`, `max_image_bytes=...`), which replace
            those of `settings`. The image limits default to the export's.
        input_type: `"auto"`, `"images"`, `"tfrecord"` or `"manifest"`.
        version: a specific export version (default: the highest, pinned
            when the pipeline is built).
        min_batch_size: smallest RunInference batch.
        max_batch_size: largest RunInference batch.
        root: manifests only: the folder relative paths must stay inside.
        large_model: share one model copy per machine (Beam's `large_model`).
        **setting_fields: fields of `TriageSettings` (see `settings`).

    Example:

    >>> import apache_beam as beam  # doctest: +SKIP
    >>> with beam.Pipeline() as pipeline:  # doctest: +SKIP
    ...     result = pipeline | ScorePool("unlabeled/", "models/lossal", top_k=100)
    ...     result | WriteScorePool("gs://bucket/triage")
    """

    def __init__(
        self,
        input_path: str,
        model_dir: str,
        settings: TriageSettings | None = None,
        *,
        input_type: str = "auto",
        version: int | None = None,
        min_batch_size: int = 1,
        max_batch_size: int = 64,
        root: str | None = None,
        large_model: bool = False,
        **setting_fields,
    ):
        super().__init__()
        settings = TriageSettings.of(settings, **setting_fields)
        if settings.top_k is None or settings.threshold is not None:
            raise ValueError(
                "Expected a queue length top_k and no threshold: Beam's queue is the top_k selection. "
                f"Received: top_k={settings.top_k!r}, threshold={settings.threshold!r}"
            )
        # One version pinned for everything: the handler loads the directory whose config chose the settings.
        version_dir = resolve_version_dir(model_dir, version)
        config = read_export_config(version_dir)
        # budget_switch: Beam has no labeled items, so the export's training record counts them (else badge).
        settings, self.selection_reason = settings.resolved(
            trained_items(config), len(config.get("labels") or ()) or None
        )
        self.settings, self.top_k = settings, settings.top_k
        self.rule = QueueRule.of(settings)
        self.handler = LossalModelHandler(
            version_dir,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            large_model=large_model,
            keep=self.rule.outputs,
        )
        _check_outputs(config, self.rule)
        max_image_pixels, max_image_bytes = settings.image_limits(config)
        self.reader = ReadPool(
            input_path, input_type, root=root, max_image_pixels=max_image_pixels, max_image_bytes=max_image_bytes
        )

    def expand(self, pbegin):
        pool = pbegin | "ReadPool" >> self.reader
        # Grouping by id drops duplicate ids and is the shuffle that spreads items over workers.
        unique = (
            pool["items"]
            | "GroupById" >> beam.GroupByKey()
            | "KeepFirstOfEachId" >> beam.ParDo(_KeepFirstOfEachId()).with_outputs("failures", main="items")
        )
        predictions = (
            unique.items
            | "Key" >> beam.Map(lambda pool_item: (pool_item["id"], pool_item))
            | "RunInference" >> RunInference(KeyedModelHandler(self.handler))
            | "Split" >> beam.ParDo(_SplitPredictions(self.rule)).with_outputs("failures", main="scores")
        )
        ordered_scores = predictions.scores
        # A combiner: each bundle keeps its `max_candidates` (with features), then one merge and the selection.
        candidate_key = functools.partial(_candidate_key, self.rule)
        top_k = (
            ordered_scores
            | "Candidates" >> beam.combiners.Top.Of(self.rule.max_candidates, key=candidate_key)
            | "Select" >> beam.Map(_ranked_queue, self.rule)
        )
        failures = (
            (pool["failures"], unique.failures, predictions.failures)
            | "AllFailures" >> beam.Flatten()
            | "CountFailures" >> beam.Map(_count_failure)
        )
        scores = ordered_scores | "Records" >> beam.Map(lambda candidate: candidate[1])
        return {"scores": scores, "top_k": top_k, "failures": failures}


# --------------------------------------------------------------------------- outputs
class WriteScorePool(beam.PTransform):
    """Writes a `ScorePool` result to `output_dir` (local or object storage).

    Files, in triage's record format:

    - `scored-SSSSS-of-NNNNN.jsonl`: every score (sharded, unordered);
    - `failures-SSSSS-of-NNNNN.jsonl`: every failure with its reason;
    - `queue.jsonl` and `queue.csv`: the ranked top-K queue (one file each).

    Args:
        output_dir: the output folder (`gs://...` works on Dataflow).

    Example:

    >>> result = pipeline | ScorePool("pool.tfrecord", "models/lossal")  # doctest: +SKIP
    >>> result | WriteScorePool("triage_out")  # doctest: +SKIP
    """

    def __init__(self, output_dir: str):
        super().__init__()
        if not isinstance(output_dir, str) or not output_dir:
            raise ValueError(f"Expected an output directory. Received: output_dir={output_dir!r}")
        self.output_dir = output_dir

    def expand(self, result):
        def path(name: str) -> str:
            return FileSystems.join(self.output_dir, name)

        for tag, name in (("Scores", SCORED_FILE), ("Failures", FAILURES_FILE)):
            prefix, suffix = sharded(name)
            lines = result[tag.lower()] | f"{tag}ToJson" >> beam.Map(jsonl_line)
            _ = lines | f"Write{tag}" >> beam.io.WriteToText(path(prefix), file_name_suffix=suffix)
        queue = result["top_k"]
        _ = queue | "QueueToJsonl" >> beam.Map(to_jsonl) | "WriteQueue" >> _whole_file(path(QUEUE_JSONL))
        return queue | "QueueToCsv" >> beam.Map(queue_csv) | "WriteQueueCsv" >> _whole_file(path(QUEUE_CSV))


def _whole_file(path: str) -> beam.io.WriteToText:
    """Writes one element, a file's whole text, to exactly `path` (no shard suffix, no added newline)."""
    return beam.io.WriteToText(path, num_shards=1, shard_name_template="", append_trailing_newlines=False)


def _counter(result, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))["counters"]
    total = 0
    for counter in counters:
        try:
            value = counter.committed
        except Exception:  # noqa: BLE001 - some runners only report attempted values
            value = None
        total += value if value is not None else counter.attempted
    return int(total)


def _model_loads(result) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    query = result.metrics().query(MetricsFilter().with_name("load_model_latency_milli_secs"))
    loads = 0
    for distribution in query["distributions"]:
        try:
            value = distribution.committed
        except Exception:  # noqa: BLE001 - some runners only report attempted values
            value = None
        value = value if value is not None else distribution.attempted
        loads += value.count if value is not None else 0
    return int(loads)


def score_pool(
    input_path: str,
    model_dir: str,
    output_dir: str,
    settings: TriageSettings | None = None,
    pipeline_options: PipelineOptions | Sequence[str] | None = None,
    **score_pool_kwargs,
) -> dict[str, Any]:
    """Builds, runs and waits for a `ScorePool` + `WriteScorePool` pipeline; returns a summary.

    Args:
        input_path: see `ScorePool`.
        model_dir: see `ScorePool`.
        output_dir: see `WriteScorePool`.
        settings: the queue and the image limits (`keras_lossal.contracts.TriageSettings`), as for `ScorePool`.
        pipeline_options: a `PipelineOptions` or command-line style flags
            (`["--runner=FlinkRunner", "--flink_master=host:8081"]`); default
            DirectRunner.
        **score_pool_kwargs: the other `ScorePool` arguments, and `TriageSettings` fields (`top_k=100`).

    Returns:
        `{"scored", "failed", "queued", "model_loads", "seconds", "items_per_second", "output_dir",
        "state", "selection", "selection_reason"}` (`selection`: `budget_switch` resolved, and why); counts come from Beam metrics (`model_loads`: how many times a worker loaded the
        SavedModel, once per worker process, or per machine with `large_model`).

    Example:

    >>> summary = score_pool("unlabeled/", "models/lossal", "triage_out", top_k=100)  # doctest: +SKIP
    """
    if pipeline_options is None or not isinstance(pipeline_options, PipelineOptions):
        pipeline_options = PipelineOptions(list(pipeline_options or []))
    transform = ScorePool(input_path, model_dir, settings, **score_pool_kwargs)
    start = time.perf_counter()
    pipeline = beam.Pipeline(options=pipeline_options)
    _ = pipeline | "ScorePool" >> transform | "Write" >> WriteScorePool(output_dir)
    result = pipeline.run()
    state = result.wait_until_finish()
    seconds = time.perf_counter() - start
    scored, failed = _counter(result, "scored"), _counter(result, "failed")
    return {
        "scored": scored,
        "failed": failed,
        "queued": min(scored, transform.top_k),
        "model_loads": _model_loads(result),
        "seconds": seconds,
        "items_per_second": (scored + failed) / seconds if seconds > 0 else float("nan"),
        "output_dir": output_dir,
        "state": str(state),
        "selection": transform.rule.selection,
        "selection_reason": transform.selection_reason,
    }


def _check_outputs(config: dict[str, Any], rule: QueueRule) -> None:
    """Refuses, before any worker starts, an export whose scoring signatures lack what the selection needs."""
    for signature in SIGNATURE_BY_KIND.values():
        outputs = config.get("signatures", {}).get(signature, {}).get("outputs")
        if outputs is not None and not set(rule.outputs) <= set(outputs):
            raise MissingOutputError(sorted(set(rule.outputs) - set(outputs)), sorted(outputs))
