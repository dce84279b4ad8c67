"""`keras_lossal.records`: record layouts, the tie rule and ranking, JSONL/CSV/Label Studio writers."""

import csv
import io

import numpy as np
import pytest

from keras_lossal import records
from keras_lossal.records import (
    JsonlLog,
    TopK,
    assign_ranks,
    failure_record,
    label_studio_tasks,
    non_finite_reason,
    queue_csv,
    queue_key,
    read_jsonl_log,
    scored_record,
    sharded,
    to_jsonl,
)
from keras_lossal.serving.readers import Item


def reference_ranking(losses, orders):
    """The tie rule written the obvious way: highest loss first, then the lowest order."""
    return sorted(range(len(losses)), key=lambda i: (-losses[i], orders[i]))


# --------------------------------------------------------------------------- the tie rule and ranking
@pytest.mark.parametrize("seed", range(5))
def test_top_k_matches_a_reference_sort_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    losses = rng.integers(0, 6, size=200).astype(float) / 4  # 6 distinct values: ties everywhere
    orders = rng.permutation(200)  # pushed out of order, as resumed records are
    for k in (1, 7, 50, 200, 500):
        top = TopK(k)
        for index in rng.permutation(200):
            top.push(losses[index], {"index": int(index)}, order=int(orders[index]))
        kept = [record["index"] for record in top.ranked()]
        assert kept == reference_ranking(losses, orders)[:k]
        assert len(top) == min(k, 200)


def test_default_order_is_the_push_order():
    top = TopK(3)
    for name, loss in [("a", 0.5), ("b", 0.9), ("c", 0.5), ("d", 0.5)]:
        top.push(loss, {"id": name})
    assert [record["id"] for record in top.ranked()] == ["b", "a", "c"]


def test_push_says_whether_the_record_is_kept():
    top = TopK(2, threshold=0.0)
    kept = [top.push(loss, {"id": index}, order=index) for index, loss in enumerate([0.5, -1.0, 0.7, 0.5, 0.6, 0.1])]
    # Below the threshold; then, when full, only what beats the worst kept (a tie loses to the earlier item).
    assert kept == [True, False, True, False, True, False]
    assert [record["id"] for record in top.ranked()] == [2, 4]


def test_threshold_keeps_every_item_at_or_above_it():
    top = TopK(None, threshold=0.5)
    for index, loss in enumerate([0.1, 0.5, 0.7, 0.49, 2.0]):
        top.push(loss, {"index": index}, order=index)
    assert [record["index"] for record in top.ranked()] == [4, 2, 1]
    top_two = TopK(2, threshold=0.5)
    for index, loss in enumerate([0.1, 0.5, 0.7, 0.49, 2.0]):
        top_two.push(loss, {"index": index}, order=index)
    assert [record["index"] for record in top_two.ranked()] == [4, 2]


def test_top_k_refuses_bad_arguments_and_non_finite_losses():
    with pytest.raises(ValueError, match="top_k=0"):
        TopK(0)
    with pytest.raises(ValueError, match="top_k and/or threshold"):
        TopK(None)
    with pytest.raises(ValueError, match="predicted_loss=nan for id 'x'"):
        TopK(3).push(float("nan"), {"id": "x"})


def test_queue_key_orders_beam_positions_like_the_reference():
    rng = np.random.default_rng(0)
    entries = [
        (float(rng.integers(0, 3)), (f"shard-{rng.integers(0, 3)}.tfrecord", int(rng.integers(0, 50))))
        for _ in range(100)
    ]
    best_first = sorted(entries, key=lambda entry: queue_key(*entry), reverse=True)
    assert best_first == sorted(entries, key=lambda entry: (-entry[0], entry[1]))


def test_assign_ranks_numbers_from_one_without_changing_the_input():
    queue = [{"id": "b", "predicted_loss": 0.9}, {"id": "a", "predicted_loss": 0.5}]
    ranked = assign_ranks(queue)
    assert [(record["rank"], record["id"]) for record in ranked] == [(1, "b"), (2, "a")]
    assert "rank" not in queue[0]
    assert assign_ranks([]) == []


# --------------------------------------------------------------------------- item records
def test_scored_record_layout():
    outputs = {
        "predicted_loss": np.array([0.25, 1.5], np.float32),
        "class_id": np.array([1, 7]),
        "probabilities": np.array([[0.1234567, 0.8765433], [0.5, 0.5]], np.float32),
    }
    item = Item("b.png", "pool/b.png", "image", extra={"batch": 3})
    record = scored_record(item, outputs, 1, ["cat", "dog"])
    # A class id without a name keeps its number as the label.
    assert record == {
        "id": "b.png",
        "path": "pool/b.png",
        "predicted_loss": 1.5,
        "class_id": 7,
        "label": "7",
        "probabilities": [0.5, 0.5],
        "extra": {"batch": 3},
    }
    first = scored_record(Item("a.png", "a.png", "image"), outputs, 0, ["cat", "dog"])
    assert first["label"] == "dog" and first["probabilities"] == [0.123457, 0.876543]
    assert scored_record(Item("r", "r", "example"), {"predicted_loss": [3.0]}, 0, None) == {
        "id": "r",
        "path": "r",
        "predicted_loss": 3.0,
    }
    # The version that scored each row, as a Python int (JSON), or None when the server did not say.
    versions = {"predicted_loss": [3.0, 4.0], "model_version": np.array([2, None], object)}
    assert scored_record(Item("r", "r", "example"), versions, 0, None)["model_version"] == 2
    from_numpy = scored_record(
        Item("r", "r", "example"), {"predicted_loss": [1.0], "model_version": np.array([5])}, 0, None
    )
    assert type(from_numpy["model_version"]) is int
    assert scored_record(Item("r", "r", "example"), versions, 1, None)["model_version"] is None


def test_failure_record_and_non_finite_reason():
    item = Item("a.png", "pool/a.png", "image")
    assert failure_record(item, "timeout: x", retryable=True) == {
        "id": "a.png",
        "path": "pool/a.png",
        "reason": "timeout: x",
        "retryable": True,
    }
    assert non_finite_reason(float("inf")).startswith("non-finite predicted loss inf ")


# --------------------------------------------------------------------------- JSONL
def test_jsonl_bytes_are_sorted_keys_one_line_per_record():
    # The format resumed runs read back: keep it byte for byte.
    text = to_jsonl([{"path": "a", "id": "x", "predicted_loss": 0.5}, {"id": "é", "extra": {"z": 1, "a": [1, 2]}}])
    assert (
        text == '{"id": "x", "path": "a", "predicted_loss": 0.5}\n{"extra": {"a": [1, 2], "z": 1}, "id": "\\u00e9"}\n'
    )


def test_jsonl_round_trip_through_the_log(tmp_path):
    path = str(tmp_path / "scored.jsonl")
    written = [{"id": f"item_{i}", "predicted_loss": i / 3, "probabilities": [0.25, 0.75]} for i in range(5)]
    log = JsonlLog(path)
    log.write(written[:3])
    log.write([])
    log.sync()
    log.write(written[3:])
    log.close()
    assert list(read_jsonl_log(path)) == written
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == to_jsonl(written)
    log = JsonlLog(path)  # appends
    log.write([{"id": "late"}])
    log.close()
    assert [record["id"] for record in read_jsonl_log(path)][-2:] == ["item_4", "late"]


def test_reading_a_log_drops_and_truncates_a_partial_last_line(tmp_path):
    path = tmp_path / "failures.jsonl"
    good = to_jsonl([{"id": "a"}, {"id": "b"}])
    path.write_text(good + '{"id": "c", "rea')  # a crash in the middle of a write
    assert [record["id"] for record in read_jsonl_log(str(path))] == ["a", "b"]
    assert path.read_text() == good
    path.write_text(good + "not json\n" + to_jsonl([{"id": "d"}]))
    assert [record["id"] for record in read_jsonl_log(str(path))] == ["a", "b"]
    assert path.read_text() == good
    assert list(read_jsonl_log(str(tmp_path / "missing.jsonl"))) == []


def test_output_file_names_and_sharding():
    assert (records.SCORED_FILE, records.FAILURES_FILE, records.QUEUE_JSONL, records.QUEUE_CSV) == (
        "scored.jsonl",
        "failures.jsonl",
        "queue.jsonl",
        "queue.csv",
    )
    assert (records.LABEL_STUDIO_FILE, records.STATE_FILE, records.SUMMARY_FILE) == (
        "label_studio_tasks.json",
        "state.json",
        "summary.json",
    )
    assert sharded("failures.jsonl") == ("failures", ".jsonl")
    assert sharded("archive.tar.gz") == ("archive.tar", ".gz")
    assert sharded("README") == ("README", "")


# --------------------------------------------------------------------------- queue formats
QUEUE = [
    {"rank": 1, "id": "b", "path": "pool/b.png", "predicted_loss": 0.1 + 0.2, "class_id": 0, "label": "cat",
     "probabilities": [0.75, 0.25]},
    {"rank": 2, "id": "a,1", "path": "pool/a 1.png", "predicted_loss": 0.25, "model_version": 3, "sha256": "ab" * 32},
]  # fmt: skip


def test_queue_csv_layout():
    text = queue_csv(QUEUE)
    assert text.splitlines()[0] == "rank,id,path,predicted_loss,class_id,label,probabilities,model_version,sha256"
    assert text.splitlines()[1] == '1,b,pool/b.png,0.30000000000000004,0,cat,"[0.75, 0.25]",,'
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["rank"] for row in rows] == ["1", "2"]
    assert rows[1] == {
        "rank": "2",
        "id": "a,1",
        "path": "pool/a 1.png",
        "predicted_loss": "0.25",
        "class_id": "",
        "label": "",
        "probabilities": "",
        "model_version": "3",
        "sha256": "ab" * 32,
    }
    assert float(rows[0]["predicted_loss"]) == QUEUE[0]["predicted_loss"]  # repr: the float exactly
    assert queue_csv([]) == "rank,id,path,predicted_loss,class_id,label,probabilities,model_version,sha256\n"


def test_label_studio_tasks_layout():
    tasks = label_studio_tasks(QUEUE, "/data/local-files/?d=", "saved_model:models/lossal/1")
    assert tasks[0] == {
        "data": {
            "image": "/data/local-files/?d=pool/b.png",
            "item_id": "b",
            "predicted_loss": QUEUE[0]["predicted_loss"],
        },
        "predictions": [
            {
                "model_version": "saved_model:models/lossal/1",
                "score": QUEUE[0]["predicted_loss"],
                "result": [
                    {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}
                ],
            }
        ],
    }
    assert tasks[1] == {  # the content hash rides along: ingest checks the file against it
        "data": {"image": "/data/local-files/?d=pool/a 1.png", "item_id": "a,1", "predicted_loss": 0.25,
                 "sha256": "ab" * 32}
    }  # fmt: skip
    # The key order is part of the file's bytes.
    assert list(tasks[0]["predictions"][0]) == ["model_version", "score", "result"]
    assert list(tasks[0]["predictions"][0]["result"][0]) == ["from_name", "to_name", "type", "value"]
