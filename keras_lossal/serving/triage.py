"""Triage: turn a stream of unlabeled items into a ranked labeling queue.

Items are scored in batches by predicted loss (in-process or through TF
Serving). Every item ends up in exactly one of two append-only logs in the
output directory, flushed after every batch:

- `scored.jsonl`: id, path, predicted loss, class and probabilities, the
  payload's sha256 and the item's position in the input;
- `failures.jsonl`: id, path, reason and whether a re-run retries it
  (timeouts and an unavailable server are retried, with the server's error
  `code`; corrupt images are not).

Re-running on the same output directory reads both logs and scores only what
is missing, so an interrupted job resumes instead of starting over; at the end
of every run, failure records superseded by a later score or failure of the
same id are removed. The ranked queue (`queue.jsonl`, `queue.csv`,
`label_studio_tasks.json`) is kept in a top-K heap while streaming, so memory
is O(K + batch) for scores (plus one id per item for resume bookkeeping, and
one content hash per item with `dedupe`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import heapq
import io
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from keras_lossal.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, image_header_size
from keras_lossal.serving.client import ServingError
from keras_lossal.serving.readers import Item
from keras_lossal.serving.scorers import InvalidInputError

__all__ = ["ServerUnavailableError", "TopK", "TriageResult", "triage"]

SCORED_FILE = "scored.jsonl"
FAILURES_FILE = "failures.jsonl"
QUEUE_JSONL = "queue.jsonl"
QUEUE_CSV = "queue.csv"
LABEL_STUDIO_FILE = "label_studio_tasks.json"
STATE_FILE = "state.json"
SUMMARY_FILE = "summary.json"


class TopK:
    """The `k` records with the highest predicted loss (all above `threshold` when `k` is None).

    Ties keep the earlier item (the lower `order`, by default the earlier push). Memory is O(k).

    Args:
        k: queue length, or `None` for every record passing `threshold`.
        threshold: minimum predicted loss, or `None`.

    Example:

    >>> top = TopK(2)
    >>> for i, loss in enumerate([0.1, 0.9, 0.5]):
    ...     top.push(loss, {"id": i})
    >>> [record["id"] for record in top.ranked()]
    [1, 2]
    """

    def __init__(self, k: int | None, threshold: float | None = None):
        if k is not None and int(k) < 1:
            raise ValueError(f"Expected top_k >= 1 or None. Received: top_k={k}")
        if k is None and threshold is None:
            raise ValueError("Expected top_k and/or threshold; with neither the queue would hold every item.")
        self.k = None if k is None else int(k)
        self.threshold = None if threshold is None else float(threshold)
        self._heap: list[tuple[float, int, int, dict]] = []
        self._count = 0

    def push(self, predicted_loss: float, record: dict, order: int | None = None) -> None:
        """Offers a record; `order` ranks ties, lower first (default: the order of pushes)."""
        if not math.isfinite(predicted_loss):
            raise ValueError(
                "Expected a finite predicted_loss (an item scored NaN/inf is a failure, never queued). "
                f"Received: predicted_loss={predicted_loss!r} for id {record.get('id')!r}"
            )
        if self.threshold is not None and not predicted_loss >= self.threshold:
            return
        self._count += 1
        # The push count last: entries never tie, so records themselves are never compared.
        entry = (float(predicted_loss), -(self._count if order is None else int(order)), -self._count, record)
        if self.k is None or len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry[:3] > self._heap[0][:3]:
            heapq.heapreplace(self._heap, entry)

    def __len__(self) -> int:
        return len(self._heap)

    def ranked(self) -> list[dict]:
        return [entry[-1] for entry in sorted(self._heap, key=lambda entry: entry[:3], reverse=True)]


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
        queue: the head of the ranked queue (at most 10 records).
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

    @property
    def items_per_second(self) -> float:
        return (self.scored + self.failed) / self.seconds if self.seconds > 0 else float("nan")


def _atomic_write(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _read_log(path: str) -> Iterator[dict]:
    """Reads a JSONL log, dropping a partial last line left by a crash (and truncating it away)."""
    if not os.path.exists(path):
        return
    good_bytes = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                break
            good_bytes += len(line)
            yield record
    if good_bytes != os.path.getsize(path):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)


class _Log:
    def __init__(self, path: str):
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        if records:
            self.handle.write("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.sync()
        self.handle.close()


def _check_state(output_dir: str, description: str, restart: bool) -> None:
    path = os.path.join(output_dir, STATE_FILE)
    if restart:
        for name in (SCORED_FILE, FAILURES_FILE, QUEUE_JSONL, QUEUE_CSV, LABEL_STUDIO_FILE, SUMMARY_FILE):
            if os.path.exists(os.path.join(output_dir, name)):
                os.remove(os.path.join(output_dir, name))
    elif os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle).get("scorer")
        if previous != description:
            raise ValueError(
                f"Output directory {output_dir!r} holds scores from {previous!r}, not {description!r}; scores "
                "from different models do not rank together. Use a new output directory or restart=True."
            )
    _atomic_write(path, json.dumps({"scorer": description}, indent=2) + "\n")


def _record(item: Item, outputs: dict[str, np.ndarray], row: int, labels) -> dict[str, Any]:
    record: dict[str, Any] = {"id": item.item_id, "path": item.path}
    record["predicted_loss"] = float(outputs["predicted_loss"][row])
    if "class_id" in outputs:
        class_id = int(outputs["class_id"][row])
        record["class_id"] = class_id
        record["label"] = labels[class_id] if labels and 0 <= class_id < len(labels) else str(class_id)
    if "probabilities" in outputs:
        record["probabilities"] = [round(float(p), 6) for p in outputs["probabilities"][row]]
    if item.extra:
        record["extra"] = item.extra
    return record


DUPLICATE_REASON = "duplicate item id (an earlier item had the same id; not scored)"


def failure_record(item: Item, reason: str, retryable: bool = False) -> dict[str, Any]:
    """The failures-file record of an item that could not be scored (shared with the Beam path)."""
    return {"id": item.item_id, "path": item.path, "reason": reason, "retryable": retryable}


def precheck(item: Item, max_image_pixels: int, max_image_bytes: int) -> tuple[bytes | None, dict | None]:
    """Reads an item's payload and checks its size and image header: `(payload, None)` or `(None, failure)`."""
    if item.error is not None:
        return None, failure_record(item, item.error)
    try:
        payload = item.load()
    except FileNotFoundError as error:
        return None, failure_record(item, f"not found: {error}")
    except OSError as error:
        return None, failure_record(item, f"unreadable: {error}")
    if len(payload) > max_image_bytes:
        return None, failure_record(item, f"too large: {len(payload)} bytes > max_image_bytes={max_image_bytes}")
    if item.kind == "image":
        try:
            _, height, width = image_header_size(payload)
        except ValueError as error:
            return None, failure_record(item, f"corrupt image: {error}")
        if height * width > max_image_pixels:
            return None, failure_record(
                item,
                f"image too large: header says {height}x{width} = {height * width} pixels > "
                f"max_image_pixels={max_image_pixels} (decompression-bomb guard; not decoded)",
            )
        if height == 0 or width == 0:
            return None, failure_record(item, f"corrupt image: header says {height}x{width}")
    return payload, None


def score_isolating(scorer, kind: str, batch: list[tuple[Item, bytes]], labels) -> tuple[list[dict], list[dict]]:
    """Scores `batch`; when the model refuses it, splits it to pin the refusal on single items.

    Returns `(scored, failed)` records; an item scored NaN/inf is a failure (`non_finite_reason`).
    """
    try:
        outputs = scorer.score(kind, [payload for _, payload in batch])
    except InvalidInputError as error:
        if len(batch) == 1:
            return [], [failure_record(batch[0][0], f"rejected by model: {error}")]
        middle = len(batch) // 2
        scored_a, failed_a = score_isolating(scorer, kind, batch[:middle], labels)
        scored_b, failed_b = score_isolating(scorer, kind, batch[middle:], labels)
        return scored_a + scored_b, failed_a + failed_b
    except ServingError as error:
        # Not the items' fault (their own faults arrive as InvalidInputError): a re-run retries them.
        kind_of_failure = "timeout" if error.is_timeout else "server error"
        failures = [failure_record(item, f"{kind_of_failure}: {error}", retryable=True) for item, _ in batch]
        return [], [{**failure, "code": error.code} for failure in failures]
    if len(outputs["predicted_loss"]) != len(batch):
        raise RuntimeError(f"Scorer returned {len(outputs['predicted_loss'])} scores for {len(batch)} items")
    scored, failed = [], []
    for row, (item, _) in enumerate(batch):
        record = _record(item, outputs, row, labels)
        if math.isfinite(record["predicted_loss"]):
            scored.append(record)
        else:
            failed.append(failure_record(item, non_finite_reason(record["predicted_loss"])))
    return scored, failed


def non_finite_reason(predicted_loss: float) -> str:
    """The failure reason of an item the model scored NaN/inf: it would corrupt the ranking, so it is not queued."""
    return f"non-finite predicted loss {predicted_loss!r} (the model returned NaN/inf for this item; not queued)"


_END = object()


def _read_ahead(items: Iterable[Item], prepare: Callable[[Item], Any], depth: int) -> Iterator[tuple[Item, Any]]:
    """Yields `(item, prepare(item))` in order, computed by a background thread at most `depth` items ahead.

    Overlaps reading files (local disk, NFS, object stores) with scoring; memory stays O(depth).
    """
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, prepare(item))):
                    return
            put((_END, None))
        except BaseException as error:  # noqa: BLE001 - re-raised in the consuming thread
            put((_END, error))

    thread = threading.Thread(target=work, name="lossal-triage-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, value = results.get()
            if item is _END:
                if value is not None:
                    raise value
                return
            yield item, value
    finally:
        stop.set()
        thread.join(timeout=10)


def _label_studio_tasks(queue: list[dict], image_prefix: str, model_version: str) -> list[dict]:
    tasks = []
    for record in queue:
        data = {
            "image": image_prefix + record["path"],
            "item_id": record["id"],
            "predicted_loss": record["predicted_loss"],
        }
        task: dict[str, Any] = {"data": data}
        if "label" in record:
            task["predictions"] = [
                {
                    "model_version": model_version,
                    "score": record["predicted_loss"],
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": [record["label"]]},
                        }
                    ],
                }
            ]
        tasks.append(task)
    return tasks


def queue_csv(queue: list[dict]) -> str:
    """The labeling queue as CSV text, one row per item in rank order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "id", "path", "predicted_loss", "class_id", "label", "probabilities"])
    for rank, record in enumerate(queue, start=1):
        writer.writerow(
            [
                rank,
                record["id"],
                record["path"],
                repr(record["predicted_loss"]),
                record.get("class_id", ""),
                record.get("label", ""),
                json.dumps(record["probabilities"]) if "probabilities" in record else "",
            ]
        )
    return buffer.getvalue()


class ServerUnavailableError(RuntimeError):
    """Triage stopped because the server failed several scoring calls in a row; re-running resumes.

    Attributes:
        result: the `TriageResult` of the stopped run (its logs and queue are written).
    """

    def __init__(self, message: str, result: TriageResult):
        super().__init__(message)
        self.result = result


class _Run:
    """What one triage run changes: the two logs, the queue, the counts and what is already handled.

    Resume rules: an id in `scored.jsonl` is done; otherwise its *last* failure record decides (retryable:
    score again; not retryable: done). Duplicate-id records are about a second item with a known id.
    """

    def __init__(
        self,
        output_dir: str,
        scorer,
        top: TopK,
        batch_size: int,
        dedupe: bool,
        stop_after: int | None,
        progress: Callable[[int, int], None] | None,
    ):
        self.scorer = scorer
        self.progress = progress
        self.top = top
        self.batch_size = int(batch_size)
        self.dedupe = bool(dedupe)
        self.stop_after = stop_after
        self.labels = getattr(scorer, "labels", None)
        self.scored_path = os.path.join(output_dir, SCORED_FILE)
        self.failures_path = os.path.join(output_dir, FAILURES_FILE)
        self.counts = {"scored": 0, "failed": 0, "resumed": 0}
        self.scored_ids: set[str] = set()
        self.done: set[str] = set()
        self.duplicates_recorded: set[str] = set()
        self.seen_this_run: set[str] = set()
        self.owner_of_content: dict[str, str] = {}  # with dedupe: sha256 -> the first item with those bytes
        self.pending: list[tuple[Item, bytes, int, str]] = []
        self.server_error_streak = 0
        self.stopped: str | None = None

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        for record in _read_log(self.scored_path):
            if record["id"] in self.scored_ids or not math.isfinite(record["predicted_loss"]):
                continue  # a NaN/inf score (logged by an older version) is scored again and becomes a failure
            self.scored_ids.add(record["id"])
            self.top.push(record["predicted_loss"], record, order=record.get("input_index"))
            self._own_content(record.get("sha256"), record["id"])
        last_failure: dict[str, dict] = {}
        for record in _read_log(self.failures_path):
            if record.get("duplicate"):
                self.duplicates_recorded.add(record["id"])
            else:
                last_failure[record["id"]] = record
        self.done = set(self.scored_ids)
        for item_id, record in last_failure.items():
            if item_id not in self.scored_ids and not record.get("retryable"):
                self.done.add(item_id)
                self._own_content(record.get("sha256"), item_id)
        self.scored_log, self.failures_log = _Log(self.scored_path), _Log(self.failures_path)

    def _own_content(self, digest: str | None, item_id: str) -> str:
        """The id of the first item with these bytes (this one if it is the first); ids only with dedupe."""
        if not self.dedupe or digest is None:
            return item_id
        return self.owner_of_content.setdefault(digest, item_id)

    def prepare(self, item: Item, max_image_pixels: int, max_image_bytes: int):
        """Runs in the read-ahead thread: loads and checks an item not handled yet; `None` for one that is."""
        if item.item_id in self.done:
            return None
        payload, failure = precheck(item, max_image_pixels, max_image_bytes)
        digest = None if payload is None else hashlib.sha256(payload).hexdigest()
        return payload, failure, digest

    # ----------------------------------------------------------------- one item
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
        if failure is not None:
            self._fail([failure if digest is None else {**failure, "sha256": digest}])
            return
        owner = self._own_content(digest, item.item_id)
        if owner != item.item_id:
            reason = f"duplicate content: the same bytes as item {owner!r} (sha256 {digest[:12]}...; not scored)"
            self._fail([{**failure_record(item, reason), "sha256": digest}])
            return
        if self.pending and self.pending[0][0].kind != item.kind:
            self.flush()
        self.pending.append((item, payload, position, digest))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def _fail(self, records: list[dict]) -> None:
        self.failures_log.write(records)
        self.counts["failed"] += len(records)

    def flush(self) -> None:
        if not self.pending:
            return
        batch = [(item, payload) for item, payload, _, _ in self.pending]
        facts = {item.item_id: (position, digest) for item, _, position, digest in self.pending}
        self.pending.clear()
        scored, failed = score_isolating(self.scorer, batch[0][0].kind, batch, self.labels)
        for record in scored:
            record["input_index"], record["sha256"] = facts[record["id"]]
        for record in failed:
            record["sha256"] = facts[record["id"]][1]
        self.scored_log.write(scored)
        self.failures_log.write(failed)
        self.scored_log.sync()
        self.failures_log.sync()
        for record in scored:
            self.scored_ids.add(record["id"])
            self.top.push(record["predicted_loss"], record, order=record["input_index"])
        self.counts["scored"] += len(scored)
        self.counts["failed"] += len(failed)
        self._watch_server(scored, failed)
        if self.progress is not None:
            self.progress(self.counts["scored"], self.counts["failed"])

    def _watch_server(self, scored: list[dict], failed: list[dict]) -> None:
        server_failures = [record for record in failed if record.get("code")]
        if scored or len(server_failures) < len(failed):
            self.server_error_streak = 0
            return
        self.server_error_streak += 1
        if self.stop_after is not None and self.server_error_streak >= self.stop_after:
            self.stopped = (
                f"stopped after {self.server_error_streak} scoring calls in a row failed on the server side "
                f"(last: {server_failures[-1]['reason']}). Is the server up? Re-run the same command to resume: "
                "items already handled are not sent again."
            )

    # -------------------------------------------------------------------- end
    def close(self) -> None:
        self.scored_log.close()
        self.failures_log.close()

    def compact_failures(self) -> int:
        """Drops failure records made stale by a later record of the same id; returns how many remain."""
        return _compact_failures(self.failures_path, self.scored_ids)


def triage(
    items: Iterable[Item],
    scorer,
    output_dir: str,
    top_k: int | None = 1000,
    threshold: float | None = None,
    batch_size: int = 32,
    max_image_pixels: int | None = None,
    max_image_bytes: int | None = None,
    label_studio_image_prefix: str = "",
    restart: bool = False,
    progress: Callable[[int, int], None] | None = None,
    dedupe: bool = False,
    stop_after_server_errors: int | None = 3,
) -> TriageResult:
    """Scores `items` by predicted loss and writes the ranked labeling queue to `output_dir`.

    Every item read ends in exactly one of `scored.jsonl` / `failures.jsonl` when a run finishes (a
    failure superseded by a later score or failure of the same id is removed). Records carry the
    payload's `sha256` and scored ones the item's `input_index` in the stream, so ties in the queue keep
    the earlier item even across resumed runs.

    Args:
        items: `Item`s, e.g. from `keras_lossal.serving.readers.read_items`.
        scorer: an `InProcessScorer` or `ServerScorer`.
        output_dir: where logs and the queue go; re-running resumes there.
        top_k: queue length (`None`: every item above `threshold`).
        threshold: only items whose predicted loss is at least this.
        batch_size: items per scoring call.
        max_image_pixels: header-declared size limit (default: the export's
            limit, else `DEFAULT_MAX_IMAGE_PIXELS`).
        max_image_bytes: encoded size limit (default likewise).
        label_studio_image_prefix: prepended to paths in Label Studio tasks
            (e.g. `"/data/local-files/?d="`).
        restart: discard earlier results in `output_dir` instead of resuming.
        progress: called as `progress(scored, failed)` after every batch.
        dedupe: items whose bytes equal an earlier item's are not scored; they go to the failures
            file as "duplicate content" naming the first item (so copies do not fill the queue).
        stop_after_server_errors: stop (raising `ServerUnavailableError`, outputs written) after this
            many scoring calls in a row failed on the server side (unavailable, timeouts, ...), instead
            of failing every remaining item; `None` never stops.

    Example:

    >>> from keras_lossal.serving import InProcessScorer, read_items
    >>> result = triage(read_items("unlabeled/"), InProcessScorer("models/lossal"), "triage_out", top_k=100)  # doctest: +SKIP
    >>> result.queue[0]["predicted_loss"]  # doctest: +SKIP
    """
    if int(batch_size) < 1:
        raise ValueError(f"Expected batch_size >= 1. Received: batch_size={batch_size}")
    if stop_after_server_errors is not None and int(stop_after_server_errors) < 1:
        raise ValueError(
            f"Expected stop_after_server_errors >= 1 or None. Received: stop_after_server_errors={stop_after_server_errors}"
        )
    top = TopK(top_k, threshold)
    max_image_pixels = int(max_image_pixels or getattr(scorer, "max_image_pixels", None) or DEFAULT_MAX_IMAGE_PIXELS)
    max_image_bytes = int(max_image_bytes or getattr(scorer, "max_image_bytes", None) or DEFAULT_MAX_IMAGE_BYTES)
    description = getattr(scorer, "description", type(scorer).__name__)
    os.makedirs(output_dir, exist_ok=True)
    _check_state(output_dir, description, restart)
    start = time.perf_counter()

    run = _Run(output_dir, scorer, top, batch_size, dedupe, stop_after_server_errors, progress)
    run.resume()
    stream = _read_ahead(
        items, lambda item: run.prepare(item, max_image_pixels, max_image_bytes), depth=2 * int(batch_size)
    )
    try:
        for position, (item, prepared) in enumerate(stream):
            run.handle(item, prepared, position)
            if run.stopped:
                break
        if not run.stopped:
            run.flush()
    finally:
        stream.close()
        run.close()

    total_failed = run.compact_failures()
    queue = top.ranked()
    for rank, record in enumerate(queue, start=1):
        record["rank"] = rank
    _write_queue(output_dir, queue, label_studio_image_prefix, description)
    result = TriageResult(
        scored=run.counts["scored"],
        failed=run.counts["failed"],
        resumed=run.counts["resumed"],
        queued=len(queue),
        total_scored=len(run.scored_ids),
        total_failed=total_failed,
        seconds=time.perf_counter() - start,
        output_dir=output_dir,
        queue=queue[:10],
    )
    summary = {key: value for key, value in dataclasses.asdict(result).items() if key != "queue"}
    summary["stopped"] = run.stopped
    _atomic_write(os.path.join(output_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    if run.stopped:
        raise ServerUnavailableError(f"Triage {run.stopped}", result)
    return result


def _write_queue(output_dir: str, queue: list[dict], image_prefix: str, model_version: str) -> None:
    _atomic_write(
        os.path.join(output_dir, QUEUE_JSONL), "".join(json.dumps(record, sort_keys=True) + "\n" for record in queue)
    )
    _atomic_write(os.path.join(output_dir, QUEUE_CSV), queue_csv(queue))
    tasks = _label_studio_tasks(queue, image_prefix, model_version)
    _atomic_write(os.path.join(output_dir, LABEL_STUDIO_FILE), json.dumps(tasks, indent=1) + "\n")


def _compact_failures(path: str, scored_ids: set[str]) -> int:
    """Rewrites the failures log keeping, per id, only its last record, and none for a scored id.

    Duplicate-id records (about a second item that reused an id) are kept. Streams the file twice;
    returns the number of records left.
    """
    if not os.path.exists(path):
        return 0
    last_line: dict[str, int] = {}
    with open(path, "rb") as source:
        records = (json.loads(line) for line in source)
        for number, record in enumerate(records):
            if not record.get("duplicate"):
                last_line[record["id"]] = number
    kept = total = 0
    temporary = f"{path}.tmp"
    with open(path, "rb") as source, open(temporary, "wb") as target:
        for number, line in enumerate(source):
            total += 1
            record = json.loads(line)
            if record.get("duplicate") or (last_line[record["id"]] == number and record["id"] not in scored_ids):
                target.write(line)
                kept += 1
        target.flush()
        os.fsync(target.fileno())
    if kept < total:
        os.replace(temporary, path)
    else:
        os.remove(temporary)
    return kept
