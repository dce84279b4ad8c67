"""Records: the formats and rules that in-process triage and the Beam pipeline share.

One place for each of them, so the two ways of scoring a pool write files that
downstream tools read alike and rank the same items first:

- item records: `scored_record` (id, path, predicted loss, class and
  probabilities) and `failure_record` (id, path, reason, whether a re-run
  retries it), with the wording of the common failures;
- item identity: `content_sha256` / `file_sha256`, the hex SHA-256 of an
  item's bytes (`CONTENT_HASH`, the field scored records, the queue, Label
  Studio tasks and the labeled-set manifest carry beside the path);
- the tie rule (`queue_key`: a higher predicted loss first, then the earlier
  item), the streaming top-K that applies it (`TopK`) and the rank
  assignment (`assign_ranks`);
- the output file names and writers: JSONL (`jsonl_line`, `to_jsonl`, the
  append-only `JsonlLog` and its crash-tolerant reader `read_jsonl_log`),
  `queue_csv`, `label_studio_tasks` (atomic writes are `keras_lossal.files`');
- the names and defaults of the queue selections are `keras_lossal.contracts`'
  (`SELECTIONS`, `TriageSettings`); the rule itself is
  `keras_lossal.serving.queue`.

Example:

>>> top = TopK(2)
>>> for input_index, loss in enumerate([0.5, 0.9, 0.5]):
...     _ = top.push(loss, {"id": f"item_{input_index}", "predicted_loss": loss}, order=input_index)
>>> [(record["rank"], record["id"]) for record in assign_ranks(top.ranked())]
[(1, 'item_1'), (2, 'item_0')]
"""

from __future__ import annotations

import csv
import functools
import heapq
import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from keras_lossal.contracts import CONTENT_FIELD, STATE_FILE, Item
from keras_lossal.files import content_sha256, file_sha256, jsonl_line, to_jsonl

__all__ = [
    "CONTENT_HASH",
    "CANDIDATES_FILE",
    "DUPLICATE_REASON",
    "EMBEDDING",
    "FAILURES_FILE",
    "LABEL_CONFIG_FILE",
    "LABEL_STUDIO_FILE",
    "LABEL_STUDIO_IMAGES_DIR",
    "MODEL_VERSION",
    "QUEUE_CSV",
    "QUEUE_JSONL",
    "SCORED_FILE",
    "STATE_FILE",
    "SUMMARY_FILE",
    "Earlier",
    "JsonlLog",
    "TopK",
    "assign_ranks",
    "content_sha256",
    "failure_record",
    "file_sha256",
    "jsonl_line",
    "label_studio_tasks",
    "non_finite_reason",
    "queue_csv",
    "queue_key",
    "read_jsonl_log",
    "scored_record",
    "sharded",
    "to_jsonl",
]

# Files of an output directory. Triage writes all of them; Beam writes the two logs as shards.
SCORED_FILE = "scored.jsonl"
FAILURES_FILE = "failures.jsonl"
CANDIDATES_FILE = "candidates.jsonl"  # triage only: the selection features of items that became queue candidates
QUEUE_JSONL = "queue.jsonl"
QUEUE_CSV = "queue.csv"
LABEL_STUDIO_FILE = "label_studio_tasks.json"
LABEL_CONFIG_FILE = "label_config.xml"
LABEL_STUDIO_IMAGES_DIR = "label_studio_images"  # TFRecord items' images, written for labeling
SUMMARY_FILE = "summary.json"

# The record field (and Label Studio task data field) holding the hex SHA-256 of an item's bytes: its identity
# (`contracts.CONTENT_FIELD`, under the name the records have always used).
CONTENT_HASH = CONTENT_FIELD
QUEUE_CSV_COLUMNS = (
    "rank", "id", "path", "predicted_loss", "class_id", "label", "probabilities", "model_version", CONTENT_HASH,
)  # fmt: skip
# The scorer output, and the scored-record field, naming the model version that scored an item.
MODEL_VERSION = "model_version"
# The serving output with each item's penultimate features, float32 [B, D]: what the diverse queue selections cluster.
EMBEDDING = "embedding"
# Triage writes it once per repeated id (with `"duplicate": true`); Beam once per extra copy.
DUPLICATE_REASON = "duplicate item id (an earlier item had the same id; not scored)"


# --------------------------------------------------------------------------- item records
def scored_record(item: Item, outputs: Mapping[str, Any], row: int, labels: Sequence[str] | None) -> dict[str, Any]:
    """The scored-file record of row `row` of a scorer's `outputs` (`predicted_loss`, optional class outputs).

    `model_version` is the version that scored the item, when the scorer says (`MODEL_VERSION`).

    Example:

    >>> from keras_lossal.contracts import CONTENT_FIELD, STATE_FILE, Item
    >>> outputs = {"predicted_loss": [0.25], "class_id": [1], "probabilities": [[0.1, 0.9]], "model_version": [3]}
    >>> scored_record(Item("a.png", "pool/a.png", "image"), outputs, 0, ["cat", "dog"])
    {'id': 'a.png', 'path': 'pool/a.png', 'predicted_loss': 0.25, 'class_id': 1, 'label': 'dog', 'probabilities': [0.1, 0.9], 'model_version': 3}
    """
    record: dict[str, Any] = {"id": item.item_id, "path": item.path}
    record["predicted_loss"] = float(outputs["predicted_loss"][row])
    if "class_id" in outputs:
        class_id = int(outputs["class_id"][row])
        record["class_id"] = class_id
        record["label"] = labels[class_id] if labels and 0 <= class_id < len(labels) else str(class_id)
    if "probabilities" in outputs:
        record["probabilities"] = [round(float(p), 6) for p in outputs["probabilities"][row]]
    if MODEL_VERSION in outputs:
        version = outputs[MODEL_VERSION][row]
        record[MODEL_VERSION] = None if version is None else int(version)
    if item.extra:
        record["extra"] = item.extra
    return record


def failure_record(item: Item, reason: str, retryable: bool = False) -> dict[str, Any]:
    """The failures-file record of an item that could not be scored.

    Example:

    >>> from keras_lossal.contracts import CONTENT_FIELD, STATE_FILE, Item
    >>> failure_record(Item("a.png", "pool/a.png", "image"), "corrupt image: not a PNG")
    {'id': 'a.png', 'path': 'pool/a.png', 'reason': 'corrupt image: not a PNG', 'retryable': False}
    """
    return {"id": item.item_id, "path": item.path, "reason": reason, "retryable": retryable}


def non_finite_reason(predicted_loss: float) -> str:
    """The failure reason of an item the model scored NaN/inf: it would corrupt the ranking, so it is not queued."""
    return f"non-finite predicted loss {predicted_loss!r} (the model returned NaN/inf for this item; not queued)"


# Item identity (`content_sha256`, `file_sha256`) and JSON lines (`jsonl_line`, `to_jsonl`) live in
# `keras_lossal.files`, below the data layer that also reads them; they are re-exported here.
# --------------------------------------------------------------------------- the tie rule and ranking
@functools.total_ordering
class Earlier:
    """Wraps an item's position so that the *earlier* position sorts *higher*: in a best-first ranking it wins ties.

    Positions are anything ordered: triage's input index, Beam's `(source file, position)`.

    Example:

    >>> Earlier(3) > Earlier(9), Earlier(("a.tfrecord", 9)) > Earlier(("b.tfrecord", 0))
    (True, True)
    """

    __slots__ = ("order",)

    def __init__(self, order):
        self.order = order

    def __lt__(self, other: Earlier) -> bool:
        return self.order > other.order

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Earlier) and self.order == other.order

    def __hash__(self) -> int:
        return hash(self.order)

    def __repr__(self) -> str:
        return f"Earlier({self.order!r})"


def queue_key(predicted_loss: float, order) -> tuple[float, Earlier]:
    """The tie rule as a sort key: larger keys rank first (higher predicted loss, then the earlier `order`).

    Example:

    >>> items = [("b", 0.5, 2), ("a", 0.5, 7), ("c", 0.9, 5)]
    >>> [name for name, loss, order in sorted(items, key=lambda i: queue_key(i[1], i[2]), reverse=True)]
    ['c', 'b', 'a']
    """
    return float(predicted_loss), Earlier(order)


class TopK:
    """The `k` records with the highest predicted loss (all above `threshold` when `k` is None).

    Ties keep the earlier item (the lower `order`, by default the earlier push; see `queue_key`).
    A `score` given to `push` ranks instead of the predicted loss (the `badge` queue's sample key).
    Memory is O(k).

    Args:
        k: queue length, or `None` for every record passing `threshold`.
        threshold: minimum predicted loss, or `None`.

    Example:

    >>> top = TopK(2)
    >>> for i, loss in enumerate([0.1, 0.9, 0.5]):
    ...     _ = top.push(loss, {"id": i})
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
        self._heap: list[tuple[float, Earlier, int, dict]] = []
        self._count = 0

    def push(self, predicted_loss: float, record: dict, order: Any = None, score: float | None = None) -> bool:
        """Offers a record; `order` ranks ties, lower first (default: the order of pushes).

        `score`, when given, ranks the record instead of its predicted loss (the threshold still applies to
        the predicted loss). Returns whether the record is now kept (it may be pushed out later).
        """
        if not math.isfinite(predicted_loss):
            raise ValueError(
                "Expected a finite predicted_loss (an item scored NaN/inf is a failure, never queued). "
                f"Received: predicted_loss={predicted_loss!r} for id {record.get('id')!r}"
            )
        if self.threshold is not None and not predicted_loss >= self.threshold:
            return False
        self._count += 1
        score = predicted_loss if score is None else score
        full = self.k is not None and len(self._heap) >= self.k
        if full and score < self._heap[0][0]:
            return False  # the common case in a long stream, decided without building a key
        # The push count last: entries never tie, so records themselves are never compared.
        entry = (*queue_key(score, self._count if order is None else order), -self._count, record)
        if not full:
            heapq.heappush(self._heap, entry)
        elif entry[:3] > self._heap[0][:3]:
            heapq.heapreplace(self._heap, entry)
        else:
            return False
        return True

    def __len__(self) -> int:
        return len(self._heap)

    def ranked(self) -> list[dict]:
        """The records kept, best first."""
        return [entry[-1] for entry in sorted(self._heap, key=lambda entry: entry[:3], reverse=True)]


def assign_ranks(records: Sequence[dict]) -> list[dict]:
    """Copies of best-first `records`, each with its 1-based `rank`.

    Example:

    >>> assign_ranks([{"id": "b"}, {"id": "a"}])
    [{'id': 'b', 'rank': 1}, {'id': 'a', 'rank': 2}]
    """
    return [{**record, "rank": rank} for rank, record in enumerate(records, start=1)]


# --------------------------------------------------------------------------- JSONL
def read_jsonl_log(path: str) -> Iterator[dict]:
    """Reads a JSONL log, dropping a partial last line left by a crash (and truncating it away).

    Yields nothing for a missing file.
    """
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


class JsonlLog:
    """An append-only JSONL log on local disk; `write` buffers records in memory, `sync` makes them survive a crash.

    Nothing written reaches the file before `sync` (or `close`): then the buffered lines are appended in
    one write and fsynced. So the caller decides the order in which several logs reach the disk, and a
    kill loses only what was buffered since the last `sync` (at worst it leaves a torn last line, which
    `read_jsonl_log` drops).

    Args:
        path: the log file (created if missing, appended to otherwise).

    Example:

    >>> log = JsonlLog("triage_out/scored.jsonl")  # doctest: +SKIP
    >>> log.write([{"id": "a", "predicted_loss": 0.5}])  # doctest: +SKIP
    >>> log.close()  # doctest: +SKIP
    """

    def __init__(self, path: str):
        self.path = path
        self.handle = open(path, "a", encoding="utf-8")
        self._buffered: list[str] = []

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if records:
            self._buffered.append(to_jsonl(records))

    @property
    def buffered(self) -> bool:
        """Whether records wait in memory for the next `sync`."""
        return bool(self._buffered)

    def sync(self) -> None:
        if not self._buffered:
            return  # everything written is synced already
        self.handle.write("".join(self._buffered))
        self._buffered.clear()
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.sync()
        self.handle.close()


def sharded(name: str) -> tuple[str, str]:
    """`(prefix, suffix)` of an output file name, for writers that shard it as `prefix-SSSSS-of-NNNNN suffix`.

    Example:

    >>> sharded(SCORED_FILE)
    ('scored', '.jsonl')
    """
    prefix, dot, extension = name.rpartition(".")
    return (prefix, dot + extension) if dot else (name, "")


# --------------------------------------------------------------------------- queue formats
def queue_csv(queue: Sequence[Mapping[str, Any]]) -> str:
    """The labeling queue as CSV text, one row per item in rank order.

    Example:

    >>> print(queue_csv([{"id": "a", "path": "pool/a.png", "predicted_loss": 0.5, "class_id": 1, "label": "dog"}]))
    rank,id,path,predicted_loss,class_id,label,probabilities,model_version,sha256
    1,a,pool/a.png,0.5,1,dog,,,
    <BLANKLINE>
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(QUEUE_CSV_COLUMNS)
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
                "" if record.get(MODEL_VERSION) is None else record[MODEL_VERSION],
                record.get(CONTENT_HASH, ""),
            ]
        )
    return buffer.getvalue()


def label_studio_tasks(
    queue: Sequence[Mapping[str, Any]],
    image_prefix: str = "",
    model_version: str = "",
    image_urls: Mapping[str, str] | None = None,
    model_versions: Mapping[str, str] | None = None,
) -> list[dict]:
    """Label Studio tasks for the queue: the image URL, id, content hash and predicted loss, the model's class as a
    pre-annotation.

    The prediction's `score` is the predicted loss, so the Data Manager sorts the queue by it. `data.sha256`
    (when the record has it) is what `lossal ingest` checks the file against before it records a label.

    Args:
        queue: ranked records.
        image_prefix: prepended to each record's path when `image_urls` does not name its URL.
        model_version: shown by Label Studio with each prediction.
        image_urls: the image URL per record id (`keras_lossal.serving.labeling` builds them).
        model_versions: the model version string per record id (instead of `model_version`).

    Example:

    >>> (task,) = label_studio_tasks([{"id": "a", "path": "a.png", "predicted_loss": 0.5}], "/data/", "v1")
    >>> task
    {'data': {'image': '/data/a.png', 'item_id': 'a', 'predicted_loss': 0.5}}
    """
    tasks = []
    for record in queue:
        data = {
            "image": image_urls[record["id"]] if image_urls is not None else image_prefix + record["path"],
            "item_id": record["id"],
            "predicted_loss": record["predicted_loss"],
        }
        if record.get(CONTENT_HASH):
            data[CONTENT_HASH] = record[CONTENT_HASH]
        task: dict[str, Any] = {"data": data}
        if "label" in record:
            choice = {"from_name": "label", "to_name": "image", "type": "choices"}
            choice["value"] = {"choices": [record["label"]]}
            version = model_versions[record["id"]] if model_versions is not None else model_version
            task["predictions"] = [{"model_version": version, "score": record["predicted_loss"], "result": [choice]}]
        tasks.append(task)
    return tasks
