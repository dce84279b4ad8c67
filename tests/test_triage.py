"""`triage` and `lossal triage`: ranked queue, failures, resume, readers and their security checks."""

import collections
import csv
import dataclasses
import functools
import itertools
import json
import os
import struct
import sys
import time
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_lossal import cli
from keras_lossal.contracts import SCORER_ATTRIBUTES
from keras_lossal.serving import InProcessScorer, ServingError, TopK, read_items, triage
from keras_lossal.serving.readers import read_manifest

sys.path.insert(0, os.path.dirname(__file__))
from serving_fixtures import LABELS, PREP, lossal_export  # noqa: E402, F401
from tfserving_standin import start_grpc_standin  # noqa: E402

N_GOOD = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory, lossal_export):  # noqa: F811 - pytest fixture
    model, base = lossal_export["model"], lossal_export["base"]
    root = tmp_path_factory.mktemp("triage")
    pixels = np.random.default_rng(0).integers(0, 256, size=(N_GOOD, 8, 8, 3), dtype=np.uint8)
    folder = root / "unlabeled"
    ids = []
    for index, image in enumerate(pixels):
        relative = f"{'ab'[index % 2]}/img_{index:02d}.png"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(tf.io.encode_png(image).numpy())
        ids.append(relative)
    good_png = tf.io.encode_png(pixels[0]).numpy()
    (folder / "a" / "garbage.png").write_bytes(b"this is not an image")
    (folder / "b" / "truncated.png").write_bytes(good_png[:40])  # header fine, pixels missing
    (folder / "b" / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (folder / "notes.txt").write_text("ignored: not an image extension")
    predictions = model.predict(PREP(pixels).numpy(), verbose=0)
    expected = dict(zip(ids, predictions["predicted_loss"].tolist()))
    return {"model": model, "base": base, "folder": str(folder), "expected": expected, "pixels": pixels, "ids": ids}


def png_header_only(height, width) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 16


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


class CountingScorer:
    """Wraps a scorer, counts the items it is asked to score, and can crash on a chosen call."""

    def __init__(self, scorer, crash_on_call=None):
        self.scorer = scorer
        self.crash_on_call = crash_on_call
        self.calls = 0
        self.sent = []  # every payload the model was asked to score, in order
        for name in SCORER_ATTRIBUTES:  # what the Scorer protocol carries besides score()
            setattr(self, name, getattr(scorer, name))

    def score(self, kind, payloads):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise KeyboardInterrupt("simulated crash mid-run")
        self.sent.extend(payloads)
        return self.scorer.score(kind, payloads)


def test_settings_passed_whole_equal_the_same_keywords_and_a_partial_scorer_is_refused(setup, tmp_path):
    from keras_lossal.contracts import Scorer, TriageSettings

    scorer = InProcessScorer(setup["base"])
    assert isinstance(scorer, Scorer)
    settings = TriageSettings(top_k=4, selection="top_k", max_image_bytes=1 << 20)
    whole = triage(read_items(setup["folder"]), scorer, str(tmp_path / "a"), settings, batch_size=4)
    keywords = triage(
        read_items(setup["folder"]), scorer, str(tmp_path / "b"), top_k=4, selection="top_k", max_image_bytes=1 << 20
    )
    assert [r["id"] for r in whole.queue] == [r["id"] for r in keywords.queue] and len(whole.queue) == 4
    replaced = triage(read_items(setup["folder"]), scorer, str(tmp_path / "c"), settings, top_k=2)
    assert [r["id"] for r in replaced.queue] == [r["id"] for r in whole.queue][:2]

    class Bare:  # a wrapper that forgot the protocol's attributes
        def score(self, kind, payloads):
            return scorer.score(kind, payloads)

    with pytest.raises(TypeError, match=r"Expected a Scorer .* Received: Bare, without \['description'"):
        triage(read_items(setup["folder"]), Bare(), str(tmp_path / "d"))
    assert not os.path.exists(tmp_path / "d")


def test_end_to_end_queue_failures_and_exports(setup, tmp_path):
    out = str(tmp_path / "out")
    scorer = InProcessScorer(setup["base"])
    result = triage(read_items(setup["folder"]), scorer, out, top_k=5, batch_size=4, selection="top_k")
    assert (result.scored, result.failed, result.queued) == (N_GOOD, 3, 5)
    scored = read_jsonl(os.path.join(out, "scored.jsonl"))
    assert sorted(record["id"] for record in scored) == sorted(setup["ids"])
    for record in scored:
        assert record["predicted_loss"] == pytest.approx(setup["expected"][record["id"]], abs=1e-5)
        assert record["label"] == LABELS[record["class_id"]] and len(record["probabilities"]) == 3
    ranking = sorted(setup["expected"], key=setup["expected"].get, reverse=True)[:5]
    queue = read_jsonl(os.path.join(out, "queue.jsonl"))
    assert [record["id"] for record in queue] == ranking
    assert [record["rank"] for record in queue] == [1, 2, 3, 4, 5]
    failures = {record["id"]: record for record in read_jsonl(os.path.join(out, "failures.jsonl"))}
    assert set(failures) == {"a/garbage.png", "b/truncated.png", "b/bomb.png"}
    assert "corrupt image" in failures["a/garbage.png"]["reason"]
    assert "rejected by model" in failures["b/truncated.png"]["reason"]
    assert "decompression-bomb" in failures["b/bomb.png"]["reason"]
    assert not any(record["retryable"] for record in failures.values())
    with open(os.path.join(out, "queue.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ranking
    assert float(rows[0]["predicted_loss"]) == pytest.approx(queue[0]["predicted_loss"])
    assert json.loads(rows[0]["probabilities"]) == queue[0]["probabilities"]
    with open(os.path.join(out, "label_studio_tasks.json")) as handle:
        tasks = json.load(handle)
    assert [task["data"]["item_id"] for task in tasks] == ranking
    assert tasks[0]["predictions"][0]["result"][0]["value"]["choices"] == [queue[0]["label"]]
    assert tasks[0]["data"]["image"].endswith(ranking[0])
    # Every score names the version that computed it; state.json names the model and that version.
    assert {record["model_version"] for record in scored + queue} == {1} and result.model_version == 1
    with open(os.path.join(out, "state.json")) as handle:
        assert json.load(handle) == {"scorer": f"saved_model:{os.path.normpath(setup['base'])}", "model_version": 1}


def test_interrupted_run_resumes_without_rescoring(setup, tmp_path):
    out = str(tmp_path / "out")
    crashing = CountingScorer(InProcessScorer(setup["base"]), crash_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        triage(read_items(setup["folder"]), crashing, out, top_k=5, batch_size=4, selection="top_k")
    first = read_jsonl(os.path.join(out, "scored.jsonl"))
    first_failed = read_jsonl(os.path.join(out, "failures.jsonl"))
    assert 0 < len(first) < N_GOOD
    # A crash while appending leaves a partial last line; resume must drop it, not choke on it.
    with open(os.path.join(out, "scored.jsonl"), "a") as handle:
        handle.write('{"id": "a/img_00.png", "predicted_lo')
    counting = CountingScorer(InProcessScorer(setup["base"]))
    result = triage(read_items(setup["folder"]), counting, out, top_k=5, batch_size=4, selection="top_k")
    final = read_jsonl(os.path.join(out, "scored.jsonl"))
    assert sorted(record["id"] for record in final) == sorted(setup["ids"])  # each exactly once
    assert result.resumed == len(first) + len(first_failed) and result.scored == N_GOOD - len(first)
    # Only never-scored items (plus the truncated file, isolated by bisection) reached the model.
    payload_of = {item_id: open(os.path.join(setup["folder"], item_id), "rb").read() for item_id in setup["ids"]}
    already_scored = {payload_of[record["id"]] for record in first}
    assert not already_scored & set(counting.sent)  # nothing scored before the crash was sent again
    assert {payload_of[i] for i in setup["ids"]} - already_scored <= set(counting.sent)
    assert result.total_scored == N_GOOD and result.total_failed == 3
    again = CountingScorer(InProcessScorer(setup["base"]))
    rerun = triage(read_items(setup["folder"]), again, out, top_k=5, batch_size=4, selection="top_k")
    assert again.calls == 0 and rerun.scored == 0 and rerun.resumed == N_GOOD + 3
    ranking = sorted(setup["expected"], key=setup["expected"].get, reverse=True)[:5]
    assert [record["id"] for record in rerun.queue] == ranking


class TimeoutScorer(CountingScorer):
    def score(self, kind, payloads):
        self.calls += 1
        raise ServingError("lossal", "score_image_bytes", "DEADLINE_EXCEEDED", "deadline", True, 4)


def test_timeouts_are_recorded_then_retried_on_rerun(setup, tmp_path):
    out = str(tmp_path / "out")
    first = triage(read_items(setup["folder"]), TimeoutScorer(InProcessScorer(setup["base"])), out, batch_size=8)
    failures = read_jsonl(os.path.join(out, "failures.jsonl"))
    timeouts = [record for record in failures if record["reason"].startswith("timeout")]
    assert first.scored == 0 and len(timeouts) == N_GOOD + 1 and all(r["retryable"] for r in timeouts)
    second = triage(read_items(setup["folder"]), InProcessScorer(setup["base"]), out, batch_size=8)
    assert second.scored == N_GOOD and second.total_failed == 3
    reasons = sorted(record["reason"].split(":")[0] for record in read_jsonl(os.path.join(out, "failures.jsonl")))
    assert reasons == ["corrupt image", "image too large", "rejected by model"]


def test_threshold_and_model_mismatch(setup, tmp_path):
    out = str(tmp_path / "out")
    threshold = float(np.median(list(setup["expected"].values())))
    result = triage(read_items(setup["folder"]), InProcessScorer(setup["base"]), out, top_k=None, threshold=threshold)
    expected = sorted((v for v in setup["expected"].values() if v >= threshold), reverse=True)
    assert [record["predicted_loss"] for record in read_jsonl(os.path.join(out, "queue.jsonl"))] == pytest.approx(
        expected, abs=1e-5
    )
    assert result.queued == len(expected)
    other = CountingScorer(InProcessScorer(setup["base"]))
    other.description = "saved_model:/some/other/model/3"
    with pytest.raises(ValueError, match="do not rank together"):
        triage(read_items(setup["folder"]), other, out)
    restarted = triage(read_items(setup["folder"]), other, out, restart=True)
    assert restarted.scored == N_GOOD and restarted.resumed == 0


def test_in_process_scoring_never_deserialises_keras_objects(setup, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Keras deserialisation must not be used to load a served model")

    monkeypatch.setattr(keras.models, "load_model", refuse)
    monkeypatch.setattr(keras.saving, "load_model", refuse)
    monkeypatch.setattr(keras.saving, "deserialize_keras_object", refuse)
    scorer = InProcessScorer(setup["base"])
    payload = tf.io.encode_png(setup["pixels"][0]).numpy()
    loss = scorer.score("image", [payload])["predicted_loss"][0]
    assert loss == pytest.approx(setup["expected"][setup["ids"][0]], abs=1e-5)


def test_top_k_matches_numpy():
    rng = np.random.default_rng(1)
    losses = rng.normal(size=500).round(2)  # rounding makes ties
    for k in (1, 7, 500, 600):
        top = TopK(k)
        for index, loss in enumerate(losses):
            top.push(float(loss), {"i": index})
        order = np.lexsort((np.arange(len(losses)), -losses))[:k]
        assert [record["i"] for record in top.ranked()] == order.tolist()
    with pytest.raises(ValueError, match="top_k"):
        TopK(0)
    with pytest.raises(ValueError, match="threshold"):
        TopK(None, None)


def test_manifest_refuses_traversal_and_bad_lines(setup, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    png = tf.io.encode_png(setup["pixels"][0]).numpy()
    (root / "ok.png").write_bytes(png)
    (tmp_path / "outside.png").write_bytes(png)
    os.symlink(tmp_path / "outside.png", root / "link.png")
    lines = [
        {"id": "ok", "path": "ok.png", "source": "camera-3"},
        {"id": "uri", "uri": f"file://{root / 'ok.png'}"},
        {"id": "dotdot", "path": "../outside.png"},
        {"id": "absolute", "path": str(tmp_path / "outside.png")},
        {"id": "symlink", "path": "link.png"},
        {"id": "http", "uri": "http://example.com/x.png"},
        {"id": "missing", "path": "nope.png"},
    ]
    manifest = root / "items.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n{not json\n")
    items = list(read_manifest(str(manifest)))
    errors = {item.item_id: item.error for item in items}
    assert errors["ok"] is None and errors["uri"] is None and errors["missing"] is None
    for name in ("dotdot", "absolute", "symlink"):
        assert "path traversal refused" in errors[name]
    assert "unsupported URI scheme" in errors["http"] and "invalid manifest line" in errors["line:8"]
    out = str(tmp_path / "out")
    result = triage(read_items(str(manifest)), InProcessScorer(setup["base"]), out, top_k=3)
    assert (result.scored, result.failed) == (2, 6)
    queue = read_jsonl(os.path.join(out, "queue.jsonl"))
    assert queue[0]["extra"] == {"source": "camera-3"} or queue[1]["extra"] == {"source": "camera-3"}
    reasons = {r["id"]: r["reason"] for r in read_jsonl(os.path.join(out, "failures.jsonl"))}
    assert reasons["missing"].startswith("not found")


def test_duplicate_ids_recorded_once_across_reruns(setup, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for name, image in (("x.png", setup["pixels"][0]), ("y.png", setup["pixels"][1])):
        (root / name).write_bytes(tf.io.encode_png(image).numpy())
    lines = [{"id": "same", "path": "x.png"}, {"id": "same", "path": "y.png"}, {"id": "other", "path": "y.png"}]
    manifest = root / "items.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = str(tmp_path / "out")
    for _ in range(2):
        result = triage(read_items(str(manifest)), InProcessScorer(setup["base"]), out, top_k=3)
    assert result.total_scored == 2 and result.total_failed == 1 and result.resumed == 3
    (failure,) = read_jsonl(os.path.join(out, "failures.jsonl"))
    assert failure["path"] == os.path.join(os.path.realpath(root), "y.png")
    assert failure["reason"].startswith("duplicate item id")
    scored = {record["id"]: record["path"] for record in read_jsonl(os.path.join(out, "scored.jsonl"))}
    assert scored == {
        "same": os.path.join(os.path.realpath(root), "x.png"),
        "other": os.path.join(os.path.realpath(root), "y.png"),
    }


def test_tfrecord_of_examples(setup, tmp_path):
    path = str(tmp_path / "pool.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for item_id, image in zip(setup["ids"][:5], setup["pixels"][:5]):
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(image).numpy()])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item_id.encode()])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    result = triage(read_items(path), InProcessScorer(setup["base"]), str(tmp_path / "out"), top_k=2)
    assert result.scored == 5
    for record in read_jsonl(str(tmp_path / "out" / "scored.jsonl")):
        assert record["predicted_loss"] == pytest.approx(setup["expected"][record["id"]], abs=1e-5)


def test_cli_in_process_and_through_grpc_standin(setup, tmp_path, capsys):
    local = str(tmp_path / "local")
    code = cli.main(["triage", setup["folder"], "--model", setup["base"], "--output", local, "--top-k", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"scored {N_GOOD}, failed 3" in printed and "failures.jsonl" in printed
    server, target, service = start_grpc_standin(setup["base"], "lossal")
    try:
        remote = str(tmp_path / "remote")
        args = ["triage", setup["folder"], "--server", f"grpc://{target}", "--output", remote, "--top-k", "4"]
        assert cli.main([*args, "--batch-size", "3", "--concurrency", "2", "--labels", ",".join(LABELS)]) == 0
    finally:
        server.stop(None)
    local_queue = read_jsonl(os.path.join(local, "queue.jsonl"))
    remote_queue = read_jsonl(os.path.join(remote, "queue.jsonl"))
    assert [r["id"] for r in remote_queue] == [r["id"] for r in local_queue]
    assert [r["label"] for r in remote_queue] == [r["label"] for r in local_queue]
    np.testing.assert_allclose(
        [r["predicted_loss"] for r in remote_queue], [r["predicted_loss"] for r in local_queue], atol=1e-5
    )
    assert service.faults.items >= N_GOOD + 1  # the truncated image was sent, and isolated by bisection
    assert cli.main(["triage", setup["folder"], "--output", local]) == 2


def test_reader_errors_surface_and_read_ahead_is_bounded():
    from keras_lossal.serving.triage import _read_ahead

    produced = []

    def items():
        for index in range(100):
            produced.append(index)
            yield index
        raise RuntimeError("reader failed at the end")

    stream = _read_ahead(items(), lambda item: item * 2, depth=4)
    assert next(stream) == (0, 0)
    time.sleep(0.3)
    assert len(produced) <= 1 + 4 + 1  # consumed + queued + one waiting to be put
    stream.close()
    with pytest.raises(RuntimeError, match="reader failed"):
        list(_read_ahead(items(), lambda item: item, depth=4))

    # Items go to the readers 8 at a time; the order, and where an error of `prepare` surfaces, stay the item's.
    def prepare(item):
        if item == 37:
            raise ValueError("item 37 cannot be prepared")
        time.sleep(0.001 * (item % 3))  # finish out of order
        return item * 2

    seen = []
    with pytest.raises(ValueError, match="item 37"):
        for item, prepared in _read_ahead(iter(range(100)), prepare, depth=64, threads=3):
            seen.append((item, prepared))
    assert seen == [(index, 2 * index) for index in range(37)]
    assert list(_read_ahead(iter(range(21)), lambda item: -item, depth=64, threads=2)) == [(i, -i) for i in range(21)]


def assert_each_item_in_exactly_one_log(out, expected_ids):
    scored = [record["id"] for record in read_jsonl(os.path.join(out, "scored.jsonl"))]
    failed = [record["id"] for record in read_jsonl(os.path.join(out, "failures.jsonl")) if not record.get("duplicate")]
    assert len(scored) == len(set(scored)) and len(failed) == len(set(failed))
    assert not set(scored) & set(failed)
    assert sorted(scored + failed) == sorted(expected_ids)
    return scored, failed


class UnavailableScorer(CountingScorer):
    def score(self, kind, payloads):
        self.calls += 1
        raise ServingError("lossal", "score_image_bytes", "UNAVAILABLE", "connection refused", True, 1)


def test_killed_retry_run_leaves_no_stale_failures(setup, tmp_path):
    out = str(tmp_path / "out")
    all_ids = setup["ids"] + ["a/garbage.png", "b/truncated.png", "b/bomb.png"]
    dead = UnavailableScorer(InProcessScorer(setup["base"]))
    triage(read_items(setup["folder"]), dead, out, batch_size=4, stop_after_server_errors=None)
    assert sum(record["retryable"] for record in read_jsonl(os.path.join(out, "failures.jsonl"))) == N_GOOD + 1
    # The retry run dies after its first batch was scored: its superseded failures were never cleaned up.
    with pytest.raises(KeyboardInterrupt):
        triage(read_items(setup["folder"]), CountingScorer(InProcessScorer(setup["base"]), crash_on_call=2), out,
               batch_size=4)  # fmt: skip
    assert 0 < len(read_jsonl(os.path.join(out, "scored.jsonl"))) < N_GOOD
    result = triage(read_items(setup["folder"]), InProcessScorer(setup["base"]), out, batch_size=4)
    scored, failed = assert_each_item_in_exactly_one_log(out, all_ids)
    assert (result.total_scored, result.total_failed) == (N_GOOD, 3) == (len(scored), len(failed))
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["total_scored"] + summary["total_failed"] == len(all_ids)


def test_failure_reasons_carry_the_decoders_message(setup, tmp_path):
    out = str(tmp_path / "out")
    triage(read_items(setup["folder"]), InProcessScorer(setup["base"]), out, batch_size=4)
    reasons = {record["id"]: record["reason"] for record in read_jsonl(os.path.join(out, "failures.jsonl"))}
    reason = reasons["b/truncated.png"]
    assert reason.startswith("rejected by model: ") and "Graph execution error" not in reason
    assert "PNG" in reason and len(reason) > len("rejected by model: ") + 10
    server, target, _ = start_grpc_standin(setup["base"], "lossal")
    try:
        from keras_lossal.serving import ServerScorer, TFServingClient

        with TFServingClient(target, "lossal") as client:
            remote = str(tmp_path / "remote")
            triage(read_items(setup["folder"]), ServerScorer(client), remote, batch_size=4)
    finally:
        server.stop(None)
    remote_reasons = {record["id"]: record["reason"] for record in read_jsonl(os.path.join(remote, "failures.jsonl"))}
    assert remote_reasons["b/truncated.png"] == reason


def test_fifo_and_directory_named_like_images_are_reported_not_read(setup, tmp_path):
    import threading

    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "good.png").write_bytes(tf.io.encode_png(setup["pixels"][0]).numpy())
    os.mkfifo(folder / "pipe.png")  # opening it for reading would wait for a writer forever
    (folder / "folder.png").mkdir()
    (folder / "folder.png" / "inner.png").write_bytes(tf.io.encode_png(setup["pixels"][1]).numpy())
    out = str(tmp_path / "out")
    finished = {}
    worker = threading.Thread(
        target=lambda: finished.setdefault(
            "result", triage(read_items(str(folder)), InProcessScorer(setup["base"]), out)
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():  # release the reader stuck in open() so the process can exit
        os.close(os.open(folder / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("triage hung on a FIFO named pipe.png")
    result = finished["result"]
    assert (result.scored, result.failed) == (2, 2)
    reasons = {record["id"]: record["reason"] for record in read_jsonl(os.path.join(out, "failures.jsonl"))}
    assert "not a regular file (a FIFO)" in reasons["pipe.png"]
    assert "not a regular file (a directory)" in reasons["folder.png"]
    assert {record["id"] for record in read_jsonl(os.path.join(out, "scored.jsonl"))} == {
        "good.png",
        "folder.png/inner.png",
    }


def test_reads_are_bounded_by_max_bytes(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\x00" * 5000)
    (item,) = list(read_items(str(tmp_path), max_bytes=1000))
    with pytest.raises(OSError, match="file too large: 5004 bytes > max_image_bytes=1000"):
        item.load()


def test_cli_top_k_zero_queues_every_item(setup, tmp_path, capsys):
    out = str(tmp_path / "all")
    assert cli.main(["triage", setup["folder"], "--model", setup["base"], "--output", out, "--top-k", "0"]) == 0
    queue = read_jsonl(os.path.join(out, "queue.jsonl"))
    assert len(queue) == N_GOOD and [record["rank"] for record in queue] == list(range(1, N_GOOD + 1))
    losses = [record["predicted_loss"] for record in queue]
    assert losses == sorted(losses, reverse=True)
    capsys.readouterr()
    assert cli.main(["triage", setup["folder"], "--model", setup["base"], "--output", out, "--top-k", "-1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == "lossal triage: expected --top-k >= 0 (0 = no limit). Received: -1"


def test_dead_server_stops_the_run_which_resumes_later(setup, tmp_path, capsys):
    from keras_lossal.serving import ServerScorer, TFServingClient
    from keras_lossal.serving.triage import ServerUnavailableError

    out = str(tmp_path / "out")
    all_ids = setup["ids"] + ["a/garbage.png", "b/truncated.png", "b/bomb.png"]
    counting = CountingScorer(InProcessScorer(setup["base"]))
    with TFServingClient("localhost:1", "lossal", retries=0, timeout=2) as client:
        dead = ServerScorer(client)
        with pytest.raises(ServerUnavailableError, match="3 scoring calls in a row failed") as info:
            triage(read_items(setup["folder"]), dead, out, batch_size=2)
    failures = read_jsonl(os.path.join(out, "failures.jsonl"))
    unavailable = [record for record in failures if record.get("code") == "UNAVAILABLE"]
    assert len(unavailable) == 3 * 2 and all(record["retryable"] for record in unavailable)
    assert info.value.result.scored == 0 and len(failures) < len(all_ids)  # it did not walk the whole pool
    assert "Re-run the same command to resume" in str(info.value)
    counting.description = dead.description  # the same model, reached in-process this time
    result = triage(read_items(setup["folder"]), counting, out, batch_size=2)
    assert result.total_scored == N_GOOD and result.total_failed == 3
    assert_each_item_in_exactly_one_log(out, all_ids)
    capsys.readouterr()
    args = ["triage", setup["folder"], "--server", "grpc://localhost:1", "--output", str(tmp_path / "cli")]
    assert cli.main([*args, "--retries", "0", "--timeout", "2", "--batch-size", "1", "--concurrency", "1"]) == 3
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "stopped after 3 scoring calls in a row" in error


def test_dedupe_by_content_keeps_copies_out_of_the_queue(setup, tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for index, image in enumerate(setup["pixels"][:4]):
        (folder / f"img_{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    for copy in ("copy_a.png", "copy_b.png"):
        (folder / copy).write_bytes((folder / "img_2.png").read_bytes())
    plain = triage(read_items(str(folder)), InProcessScorer(setup["base"]), str(tmp_path / "plain"), top_k=None,
                   threshold=-1e9)  # fmt: skip
    copies = [i for i, record in enumerate(read_jsonl(str(tmp_path / "plain" / "queue.jsonl"))) if "img_2" in
              record["id"] or "copy" in record["id"]]  # fmt: skip
    assert plain.scored == 6 and copies == list(range(copies[0], copies[0] + 3))  # three adjacent ranks
    out = str(tmp_path / "dedupe")
    result = triage(read_items(str(folder)), InProcessScorer(setup["base"]), out, top_k=None, threshold=-1e9,
                    dedupe=True)  # fmt: skip
    assert (result.scored, result.failed) == (4, 2)
    queue = read_jsonl(os.path.join(out, "queue.jsonl"))
    assert len({record["sha256"] for record in queue}) == len(queue) == 4
    failures = read_jsonl(os.path.join(out, "failures.jsonl"))
    assert sorted(record["id"] for record in failures) == ["copy_b.png", "img_2.png"]  # copy_a.png comes first
    assert all("duplicate content" in r["reason"] and "'copy_a.png'" in r["reason"] for r in failures)
    assert not any(record["retryable"] for record in failures)
    rerun = triage(read_items(str(folder)), InProcessScorer(setup["base"]), out, top_k=None, threshold=-1e9,
                   dedupe=True)  # fmt: skip
    assert (rerun.scored, rerun.failed, rerun.resumed) == (0, 0, 6)


class TiedScorer(CountingScorer):
    """Every item gets the same predicted loss (exact ties); the first call can time out."""

    def __init__(self, scorer, fail_first_call=False):
        super().__init__(scorer)
        self.fail_first_call = fail_first_call

    def score(self, kind, payloads):
        self.calls += 1
        if self.fail_first_call and self.calls == 1:
            raise ServingError("lossal", "score_image_bytes", "DEADLINE_EXCEEDED", "deadline", True, 4)
        outputs = self.scorer.score(kind, payloads)
        return {**outputs, "predicted_loss": np.full(len(payloads), 0.5, np.float32)}


def test_resumed_queue_breaks_ties_by_input_order_like_an_uninterrupted_run(setup, tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for index, image in enumerate(setup["pixels"][:8]):
        (folder / f"same_{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    scorer = InProcessScorer(setup["base"])
    for selection in ("top_k", "learning_loss_clusters"):
        # Tied losses: the candidates are the earliest items, in input order, whichever run scored them.
        options = {"top_k": 3, "batch_size": 2, "selection": selection, "candidates_factor": 2}
        reference = triage(read_items(str(folder)), TiedScorer(scorer), str(tmp_path / f"ref_{selection}"), **options)
        out = str(tmp_path / f"resumed_{selection}")
        # The first batch (the earliest items) times out, so the resumed run scores it after all the others.
        triage(read_items(str(folder)), TiedScorer(scorer, fail_first_call=True), out, **options)
        resumed = triage(read_items(str(folder)), TiedScorer(scorer), out, **options)
        assert [json.loads(line)["id"] for line in open(os.path.join(out, "scored.jsonl"))][-2:] == [
            "same_0.png",
            "same_1.png",
        ]
        if selection == "top_k":
            assert [record["id"] for record in reference.queue] == ["same_0.png", "same_1.png", "same_2.png"]
        assert [record["id"] for record in resumed.queue] == [record["id"] for record in reference.queue]


@pytest.mark.slow
def test_soak_with_kills_and_a_server_restart(tmp_path):
    """benchmarks/triage_soak.py at a small size: SIGKILLs and a server restart lose, duplicate or misrank nothing."""
    import subprocess

    script = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "triage_soak.py")
    report = tmp_path / "soak.json"
    command = [sys.executable, script, "--items", "600", "--kills", "2", "--top-k", "50", "--json", str(report)]
    completed = subprocess.run(
        [*command, "--work-dir", str(tmp_path / "work")], capture_output=True, text=True, timeout=900
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    results = json.loads(report.read_text())
    assert results["each_item_in_exactly_one_log"] and results["queue_ids_equal_reference"]
    assert results["kills"] == 2 and results["server_restarts"] == 1 and results["retryable_failures_left"] == 0
    assert results["scored"] + results["failed"] == 600 and results["failed"] == results["corrupt_items"]


class NonFiniteScorer(CountingScorer):
    """Scores like the model, except that chosen payloads get a NaN or inf predicted loss."""

    def __init__(self, scorer, poisoned):
        super().__init__(scorer)
        self.poisoned = poisoned  # payload bytes -> the predicted loss to return

    def score(self, kind, payloads):
        outputs = self.scorer.score(kind, payloads)
        losses = np.array(outputs["predicted_loss"], dtype=np.float32)
        for row, payload in enumerate(payloads):
            losses[row] = self.poisoned.get(payload, losses[row])
        return {**outputs, "predicted_loss": losses}


def test_non_finite_predicted_losses_are_failures_never_queued(setup, tmp_path):
    folder = setup["folder"]
    poisoned_ids = {"b/img_03.png": np.nan, "a/img_06.png": np.inf, "b/img_09.png": -np.inf}
    poisoned = {open(os.path.join(folder, item_id), "rb").read(): loss for item_id, loss in poisoned_ids.items()}
    out = str(tmp_path / "out")
    scorer = NonFiniteScorer(InProcessScorer(setup["base"]), poisoned)
    result = triage(read_items(folder), scorer, out, top_k=N_GOOD, batch_size=4)
    all_ids = setup["ids"] + ["a/garbage.png", "b/truncated.png", "b/bomb.png"]
    scored, failed = assert_each_item_in_exactly_one_log(out, all_ids)
    assert (result.scored, result.failed, result.queued) == (N_GOOD - 3, 6, N_GOOD - 3)
    assert (result.total_scored, result.total_failed) == (N_GOOD - 3, 6)
    reasons = {record["id"]: record["reason"] for record in read_jsonl(os.path.join(out, "failures.jsonl"))}
    for item_id, loss in poisoned_ids.items():
        assert (
            reasons[item_id]
            == f"non-finite predicted loss {float(loss)!r} (the model returned NaN/inf for this item; not queued)"
        )
    queue = read_jsonl(os.path.join(out, "queue.jsonl"))
    assert not {record["id"] for record in queue} & set(poisoned_ids)
    expected = sorted((loss, item_id) for item_id, loss in setup["expected"].items() if item_id not in poisoned_ids)
    np.testing.assert_allclose([record["predicted_loss"] for record in queue], [loss for loss, _ in expected[::-1]],
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert (summary["total_scored"], summary["total_failed"]) == (N_GOOD - 3, 6)
    # A NaN/inf score is not the server's fault: a re-run does not send those items again.
    rerun = triage(read_items(folder), scorer, out, top_k=N_GOOD, batch_size=4)
    assert (rerun.scored, rerun.failed, rerun.resumed) == (0, 0, N_GOOD + 3)
    # With a threshold the items used to vanish without a word; they are still failures.
    thresholded = triage(read_items(folder), scorer, str(tmp_path / "threshold"), top_k=None, threshold=-1e9)
    assert (thresholded.scored, thresholded.failed) == (N_GOOD - 3, 6)


def test_top_k_refuses_a_non_finite_predicted_loss():
    top = TopK(3)
    top.push(0.5, {"id": "a"})
    for loss in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=rf"Expected a finite predicted_loss.*predicted_loss={loss!r} for id 'b'"):
            top.push(loss, {"id": "b"})
    assert [record["id"] for record in top.ranked()] == ["a"]


# --------------------------------------------------------------------------- served model versions
class ServedAs(CountingScorer):
    """Stands for a server scorer (description `server:lossal`, pinned to `version`) whose answers name `answering`."""

    def __init__(self, scorer, answering, version=None, **kwargs):
        super().__init__(scorer, **kwargs)
        self.description, self.version, self.answering = "server:lossal", version, answering

    def score(self, kind, payloads):
        outputs = super().score(kind, payloads)
        return {**outputs, "model_version": np.full(len(payloads), self.answering)}


def two_versions(base, tmp_path, versions=(1, 2)):
    """A base path serving the shared export under each of `versions` (copies: same weights, other numbers)."""
    import shutil

    target = tmp_path / "two_versions"
    for version in versions:
        shutil.copytree(os.path.join(base, "1"), target / str(version))
    return str(target)


def test_resume_after_a_rollout_is_refused_unless_pinned_or_restarted(setup, tmp_path):
    out = str(tmp_path / "out")
    scorer = InProcessScorer(setup["base"])
    with pytest.raises(KeyboardInterrupt):
        triage(read_items(setup["folder"]), ServedAs(scorer, 1, crash_on_call=3), out, batch_size=4)
    first = read_jsonl(os.path.join(out, "scored.jsonl"))
    assert first and {record["model_version"] for record in first} == {1}
    # The server now answers with version 2: resuming unpinned would mix the two in one queue.
    with pytest.raises(ValueError, match=r"holds \d+ scores of model version 1, but this run scores with version 2"):
        triage(read_items(setup["folder"]), ServedAs(scorer, 2, version=2), out, batch_size=4)
    rolled_out = ServedAs(scorer, 2)
    with pytest.raises(triage_module().ModelVersionChangedError, match="answered with model version 2") as info:
        triage(read_items(setup["folder"]), rolled_out, out, batch_size=4)
    assert "--model-version 1" in str(info.value) and "--restart" in str(info.value)
    assert read_jsonl(os.path.join(out, "scored.jsonl")) == first  # version 2's answers were not written
    # Scoring is pipelined: the batch after the first answer may be in flight already; it is dropped unwritten.
    assert info.value.result.model_version == 1 and rolled_out.calls in (1, 2)
    pinned = triage(read_items(setup["folder"]), ServedAs(scorer, 1, version=1), out, batch_size=4)
    scored = read_jsonl(os.path.join(out, "scored.jsonl"))
    assert pinned.total_scored == N_GOOD and {record["model_version"] for record in scored} == {1}
    restarted = triage(read_items(setup["folder"]), ServedAs(scorer, 2), out, batch_size=4, restart=True)
    assert restarted.scored == N_GOOD and restarted.model_version == 2
    assert {record["model_version"] for record in read_jsonl(os.path.join(out, "queue.jsonl"))} == {2}


def triage_module():
    import importlib

    return importlib.import_module("keras_lossal.serving.triage")


def strip_versions(out, state):
    """Rewrites `out` as a triage before model versions were recorded left it: no versions, the old state.json."""
    records = read_jsonl(os.path.join(out, "scored.jsonl"))
    with open(os.path.join(out, "scored.jsonl"), "w") as handle:
        handle.writelines(json.dumps({k: v for k, v in r.items() if k != "model_version"}) + "\n" for r in records)
    with open(os.path.join(out, "state.json"), "w") as handle:
        json.dump({"scorer": state}, handle)
    return len(records)


@pytest.mark.parametrize("legacy_state", ["saved_model:{base}/1", "server:lossal:version=1:label=None"])
def test_an_output_of_a_0_1_run_is_refused_naming_the_restart(setup, tmp_path, legacy_state):
    out = str(tmp_path / "out")
    scorer = InProcessScorer(setup["base"])
    with pytest.raises(KeyboardInterrupt):
        triage(read_items(setup["folder"]), CountingScorer(scorer, crash_on_call=2), out, batch_size=4)
    strip_versions(out, legacy_state.format(base=os.path.normpath(setup["base"])))
    unpinned = CountingScorer(scorer)
    with pytest.raises(ValueError, match=r"Expected a triage state.json with 'scorer' and 'model_version'.*--restart"):
        triage(read_items(setup["folder"]), unpinned, out, batch_size=4)
    assert unpinned.calls == 0
    result = triage(read_items(setup["folder"]), unpinned, out, batch_size=4, restart=True)
    assert result.total_scored == N_GOOD and result.resumed == 0


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_a_rollout_during_a_run_through_the_standin_stops_it(setup, tmp_path, protocol, capsys):
    import shutil

    from tfserving_standin import start_rest_standin

    from keras_lossal.serving import ServerScorer, TFServingClient

    base = two_versions(setup["base"], tmp_path, versions=(1,))
    if protocol == "grpc":
        server, target, service = start_grpc_standin(base, "lossal")
        repository, stop = service.repository, lambda: server.stop(None)
    else:
        server, target, _ = start_rest_standin(base, "lossal")
        repository, stop = server.RequestHandlerClass.repository, server.shutdown

    class RollingOut(CountingScorer):
        def score(self, kind, payloads):
            if self.calls == 2:  # TF Serving finds version 2 and, with its default policy, unloads version 1
                shutil.copytree(os.path.join(base, "1"), os.path.join(base, "2"))
                assert repository.poll(latest_only=True) == [2]
            return super().score(kind, payloads)

    out = str(tmp_path / "out")
    try:
        with TFServingClient(target, "lossal", protocol=protocol, batch_size=2) as client:
            rolling = RollingOut(ServerScorer(client, labels=LABELS))
            with pytest.raises(triage_module().ModelVersionChangedError) as info:
                triage(read_items(setup["folder"]), rolling, out, batch_size=2)
            assert "version 2 while this queue's 4 scores come from version 1" in str(info.value)
            scored = read_jsonl(os.path.join(out, "scored.jsonl"))
            assert len(scored) == 4 and {record["model_version"] for record in scored} == {1}
            with open(os.path.join(out, "summary.json")) as handle:
                assert "answered with model version 2" in json.load(handle)["stopped"]
        # The command line: a resume stops at version 2's first answer, in one line; --restart rescores with it.
        args = ["triage", setup["folder"], "--server", f"{'grpc://' if protocol == 'grpc' else ''}{target}"]
        args += ["--output", out, "--labels", ",".join(LABELS)]
        capsys.readouterr()
        assert cli.main(args) == 3
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "--model-version 1" in error and "--restart" in error
        assert len(read_jsonl(os.path.join(out, "scored.jsonl"))) == 4
        assert cli.main([*args, "--restart"]) == 0
        assert "(model version 2)" in capsys.readouterr().out
    finally:
        stop()
    assert {record["model_version"] for record in read_jsonl(os.path.join(out, "scored.jsonl"))} == {2}


# --------------------------------------------------------------------------- Label Studio tasks
def test_relative_manifest_paths_mean_the_same_from_any_working_directory(setup, tmp_path, monkeypatch):
    import shutil

    from keras_lossal.labeling.manifest import read_known_items

    names = [os.path.basename(item) for item in setup["ids"][:3]]
    (tmp_path / "pool").mkdir()
    for item, name in zip(setup["ids"], names):
        shutil.copy(os.path.join(setup["folder"], item), tmp_path / "pool" / name)
    manifest = tmp_path / "pool.jsonl"  # entries relative to the manifest's folder
    manifest.write_text("".join(json.dumps({"id": name, "path": f"pool/{name}"}) + "\n" for name in names))
    elsewhere = tmp_path / "elsewhere"  # inside the document root, so a cwd-relative reading gives wrong URLs
    elsewhere.mkdir()
    for cwd, out in ((elsewhere, tmp_path / "out"), (os.path.dirname(setup["folder"]), tmp_path / "out_outside")):
        monkeypatch.chdir(cwd)  # not the manifest's folder
        args = ["triage", str(manifest), "--model", setup["base"], "--output", str(out), "--top-k", "3"]
        assert cli.main([*args, "--label-studio-document-root", str(tmp_path)]) == 0
        with open(out / "label_studio_tasks.json") as handle:
            images = sorted(task["data"]["image"] for task in json.load(handle))
        assert len(names) == 3 and images == sorted(f"/data/local-files/?d=pool/{name}" for name in names)
        known = read_known_items(str(out))
        assert {item_id: os.path.realpath(item.path) for item_id, item in known.items()} == {
            name: os.path.realpath(tmp_path / "pool" / name) for name in names
        }


def test_label_studio_tasks_name_local_files_or_cloud_urls_and_a_label_config(setup, tmp_path):
    from urllib.parse import quote

    from keras_lossal.labeling.labelstudio import read_label_config
    from keras_lossal.serving.labeling import LabelStudioOptions

    root = os.path.dirname(setup["folder"])
    out = str(tmp_path / "out")
    options = LabelStudioOptions(document_root=root)
    result = triage(read_items(setup["folder"]), InProcessScorer(setup["base"]), out, top_k=4, label_studio=options)
    with open(os.path.join(out, "label_studio_tasks.json")) as handle:
        tasks = json.load(handle)
    queue = read_jsonl(os.path.join(out, "queue.jsonl"))
    assert [task["data"]["item_id"] for task in tasks] == [record["id"] for record in queue]
    for task, record in zip(tasks, queue):
        relative = os.path.relpath(record["path"], root)
        assert task["data"]["image"] == "/data/local-files/?d=" + quote(relative)
        assert task["data"]["predicted_loss"] == task["predictions"][0]["score"] == record["predicted_loss"]
        assert task["predictions"][0]["model_version"] == "lossal/1"  # <model name>/<version>
    assert read_label_config(os.path.join(out, "label_config.xml")) == LABELS and result.queued == 4
    cloud = LabelStudioOptions(document_root=setup["folder"], url_prefix="gs://bucket/pool/")
    triage(read_items(setup["folder"]), InProcessScorer(setup["base"]), out, top_k=4, label_studio=cloud)
    with open(os.path.join(out, "label_studio_tasks.json")) as handle:
        assert json.load(handle)[0]["data"]["image"] == "gs://bucket/pool/" + queue[0]["id"]
    outside = LabelStudioOptions(document_root=str(tmp_path))
    with pytest.raises(ValueError, match=r"item '.*': Expected an image inside the Label Studio document root"):
        triage(read_items(setup["folder"]), InProcessScorer(setup["base"]), out, top_k=4, label_studio=outside)
    with pytest.raises(ValueError, match="url_prefix starting with one of"):
        LabelStudioOptions(url_prefix="bucket/pool")
    triage(read_items(setup["folder"]), InProcessScorer(setup["base"]), out)  # neither: the path as it is
    with open(os.path.join(out, "label_studio_tasks.json")) as handle:
        assert json.load(handle)[0]["data"]["image"] == queue[0]["path"]


def write_tfrecord(path, ids, pixels):
    with tf.io.TFRecordWriter(path) as writer:
        for item_id, image in zip(ids, pixels):
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(image).numpy()])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item_id.encode()])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_tfrecord_items_get_image_files_for_labeling_or_are_refused(setup, tmp_path):
    from keras_lossal.serving.labeling import LabelStudioOptions

    path = str(tmp_path / "pool.tfrecord")
    write_tfrecord(path, setup["ids"][:6], setup["pixels"][:6])
    out = str(tmp_path / "out")
    options = LabelStudioOptions(document_root=str(tmp_path))
    triage(read_items(path), InProcessScorer(setup["base"]), out, top_k=2, label_studio=options)
    with open(os.path.join(out, "label_studio_tasks.json")) as handle:
        tasks = json.load(handle)
    images = sorted(os.listdir(os.path.join(out, "label_studio_images")))
    assert len(tasks) == len(images) == 2  # queued items only
    png_of = {item_id: tf.io.encode_png(image).numpy() for item_id, image in zip(setup["ids"], setup["pixels"])}
    for task in tasks:
        relative = task["data"]["image"].removeprefix("/data/local-files/?d=")
        assert relative.startswith("out/label_studio_images/") and relative.endswith(".png")
        with open(os.path.join(str(tmp_path), relative), "rb") as handle:
            assert handle.read() == png_of[task["data"]["item_id"]]
    # A longer queue on resume: the new items' images are written, nothing is scored again.
    again = CountingScorer(InProcessScorer(setup["base"]))
    triage(read_items(path), again, out, top_k=4, label_studio=options)
    assert again.calls == 0 and len(os.listdir(os.path.join(out, "label_studio_images"))) == 4
    refuse = LabelStudioOptions(document_root=str(tmp_path), tfrecord_images="refuse")
    with pytest.raises(ValueError, match="items of TFRecord files .* which are no image URLs"):
        triage(read_items(path), InProcessScorer(setup["base"]), out, top_k=2, label_studio=refuse)


def queue_lines(printed: str) -> list[str]:
    """The printed queue entries: `rank  predicted_loss  label  id`."""
    return [line for line in printed.splitlines() if line.split()[0].isdigit() and line.split()[-1].endswith(".png")]


def test_cli_show_prints_that_many_queue_entries_or_all(setup, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["triage", setup["folder"], "--model", setup["base"], "--output", out, "--top-k", "0"]
    capsys.readouterr()
    assert cli.main([*args, "--show", "30"]) == 0  # 30 asked, the queue holds 12: all of them
    ranking = sorted(setup["expected"], key=setup["expected"].get, reverse=True)
    assert [line.split()[-1] for line in queue_lines(capsys.readouterr().out)] == ranking
    for show, expected in (("11", 11), ("0", 0), (None, 10)):
        assert cli.main([*args, *(["--show", show] if show else [])]) == 0  # resumed: the same queue
        assert len(queue_lines(capsys.readouterr().out)) == expected, show


def test_files_that_are_not_items_are_counted_by_reason(setup, tmp_path, capsys):
    import collections
    import shutil

    folder = tmp_path / "pool"
    shutil.copytree(setup["folder"], folder)  # it holds notes.txt already
    (folder / "a" / "anim.gif").write_bytes(b"GIF89a")
    (folder / "b" / "ANIM2.GIF").write_bytes(b"GIF89a")
    (folder / "README").write_text("no extension")
    skipped = collections.Counter()
    out = str(tmp_path / "out")
    result = triage(read_items(str(folder), skipped=skipped), InProcessScorer(setup["base"]), out, skipped=skipped)
    expected = {"no extension": 1, "unsupported extension .gif": 2, "unsupported extension .txt": 1}
    assert result.skipped == expected and (result.scored, result.failed) == (N_GOOD, 3)
    with open(os.path.join(out, "summary.json")) as handle:
        assert json.load(handle)["skipped"] == expected
    capsys.readouterr()
    assert cli.main(["triage", str(folder), "--model", setup["base"], "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "skipped 4 file(s) that are not items (no extension: 1, unsupported extension .gif: 2, " in printed
    assert triage(read_items(str(folder)), InProcessScorer(setup["base"]), out).skipped == {}  # not counted


def test_cli_refusal_of_another_models_scores_names_the_restart_flag(setup, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"scorer": "saved_model:/some/other/model", "model_version": 3}))
    capsys.readouterr()
    assert cli.main(["triage", setup["folder"], "--model", setup["base"], "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and "Traceback" not in error and "do not rank together" in error
    assert "--restart" in error
    assert cli.main(["triage", setup["folder"], "--model", setup["base"], "--output", str(out), "--restart"]) == 0


class JitteredReads:
    """The folder's items, each read after a sleep that makes later items finish first; records finish order."""

    def __init__(self, folder):
        self.items = list(read_items(folder))
        self.finished = []

    def __iter__(self):
        for position, item in enumerate(self.items):
            if item.loader is not None:
                item = dataclasses.replace(item, loader=functools.partial(self.load, item, position))
            yield item

    def load(self, item, position):
        time.sleep(0.002 * ((len(self.items) - position) % 5))
        self.finished.append(item.item_id)
        return item.loader()


def count_syncs(monkeypatch):
    """`{log file name: JsonlLog.sync calls that wrote records}`, counted from now on."""
    from keras_lossal import records

    counts = collections.Counter()
    original = records.JsonlLog.sync

    def sync(log):
        counts[os.path.basename(log.path)] += log.buffered
        original(log)

    monkeypatch.setattr(records.JsonlLog, "sync", sync)
    return counts


def test_parallel_reads_and_buffered_commits_write_what_serial_reads_and_per_batch_commits_write(
    setup, tmp_path, monkeypatch
):
    scorer = InProcessScorer(setup["base"])
    manifest = tmp_path / "pool.jsonl"  # one more item, whose file is missing: a failure of its own
    manifest.write_text(json.dumps({"path": "gone.png", "id": "gone.png"}) + "\n")
    files = ("scored.jsonl", "failures.jsonl", "queue.jsonl", "candidates.jsonl", "label_studio_tasks.json")
    outputs = {}
    # Serial reads committed after every batch (the old behaviour), then 4 reader threads and one commit at the end.
    for name, threads, commit_seconds in (("serial", 1, 0.0), ("parallel", 4, 3600.0)):
        syncs = count_syncs(monkeypatch)
        reads = JitteredReads(setup["folder"])
        items = itertools.chain(reads, read_manifest(str(manifest)))
        # The default selection, choosing 4 among 8 candidates.
        result = triage(items, scorer, str(tmp_path / name), top_k=4, batch_size=4, candidates_factor=2,
                        read_threads=threads, commit_seconds=commit_seconds)  # fmt: skip
        assert (result.scored, result.failed, result.queued) == (N_GOOD, 4, 4)
        outputs[name] = {file: (tmp_path / name / file).read_bytes() for file in files}
        outputs[name].update(finished=reads.finished, syncs=syncs["scored.jsonl"])
    serial, parallel = outputs["serial"], outputs["parallel"]
    readable = [item.item_id for item in read_items(setup["folder"]) if item.loader is not None]
    assert serial["finished"] == readable and len(readable) == N_GOOD + 3
    assert sorted(parallel["finished"]) == sorted(readable) and parallel["finished"] != readable  # out of order
    # Per-batch commits sync scored.jsonl once per batch with scores (the last holds only the refused
    # truncated.png); buffered, once at the end.
    assert serial["syncs"] == N_GOOD // 4 and parallel["syncs"] == 1
    for file in files:
        assert parallel[file] == serial[file], file  # the same bytes: records, order, queue
    failures = {json.loads(line)["id"]: json.loads(line)["reason"] for line in serial["failures.jsonl"].splitlines()}
    assert sorted(failures) == ["a/garbage.png", "b/bomb.png", "b/truncated.png", "gone.png"]
    assert failures["gone.png"].startswith("not found") and "corrupt image" in failures["a/garbage.png"]


def test_a_run_killed_between_commits_resumes_to_the_uninterrupted_runs_records(setup, tmp_path):
    import signal
    import subprocess

    pool = tmp_path / "pool"
    pool.mkdir()
    pixels = np.random.default_rng(5).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        (pool / f"img_{index:02d}.png").write_bytes(tf.io.encode_png(image).numpy())
    (pool / "img_07x.png").write_bytes(b"not an image")
    (pool / "img_21x.png").write_bytes(tf.io.encode_png(pixels[0]).numpy()[:40])  # refused by the model
    reference = triage(read_items(str(pool)), InProcessScorer(setup["base"]), str(tmp_path / "reference"),
                       top_k=5, batch_size=4)  # fmt: skip
    out = tmp_path / "killed"
    driver = os.path.join(os.path.dirname(__file__), "triage_kill_driver.py")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, driver, setup["base"], str(pool), str(out), "--delay", "0.2", "--commit-seconds", "0.5"],
        stdout=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip
    try:
        # Kill once some records are on disk and a later batch is scored in memory only.
        for line in process.stdout:
            scored_in_memory = int(line.split()[1]) if line.startswith("progress") else 0
            on_disk = len((out / "scored.jsonl").read_bytes().splitlines()) if (out / "scored.jsonl").exists() else 0
            if 0 < on_disk < scored_in_memory:
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL and 0 < on_disk < scored_in_memory < 40
    committed = len(read_jsonl(out / "scored.jsonl")) + len(read_jsonl(out / "failures.jsonl"))
    on_disk = len(read_jsonl(out / "scored.jsonl"))
    with open(out / "scored.jsonl", "a") as handle:
        handle.write('{"id": "img_39.png", "predicted_lo')  # a kill in the middle of a write tears the last line
    resumed = triage(read_items(str(pool)), InProcessScorer(setup["base"]), str(out), top_k=5, batch_size=4)
    # What was on disk is kept, what was in memory only is scored again: every item once, none twice.
    assert resumed.scored == 40 - on_disk and resumed.resumed == committed
    records, expected = read_jsonl(out / "scored.jsonl"), read_jsonl(tmp_path / "reference" / "scored.jsonl")
    assert len(records) == len({record["id"] for record in records}) == 40
    by_id = {record["id"]: record for record in records}
    for record in expected:
        mine = by_id[record["id"]]
        assert {**mine, "predicted_loss": 0, "probabilities": 0} == {**record, "predicted_loss": 0, "probabilities": 0}
        np.testing.assert_allclose(mine["predicted_loss"], record["predicted_loss"], rtol=1e-5)
    assert [record["id"] for record in resumed.queue] == [record["id"] for record in reference.queue]
    failures = sorted((record["id"], record["reason"]) for record in read_jsonl(out / "failures.jsonl"))
    assert failures == sorted((r["id"], r["reason"]) for r in read_jsonl(tmp_path / "reference" / "failures.jsonl"))
    assert len(failures) == 2


def test_an_image_folder_refuses_symlinks_out_of_it_and_keeps_the_ones_inside(tmp_path):
    from keras_lossal.serving.readers import read_image_directory

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "a.png").write_bytes(b"a")
    os.symlink(real / "sub" / "a.png", real / "inside.png")  # a link to a file of the folder: read
    os.symlink(outside / "secret.png", real / "sub" / "out.png")  # a link out of it: a failure
    os.symlink("../../outside/secret.png", real / "sub" / "relative.png")  # likewise, relative
    os.symlink(outside, real / "linked_dir")  # a linked directory is not walked
    os.symlink(real, tmp_path / "alias")  # the folder reached through a symlink reads the same
    for root in (real, tmp_path / "alias"):
        items = {item.item_id: item for item in read_image_directory(str(root))}
        assert sorted(items) == ["inside.png", "sub/a.png", "sub/out.png", "sub/relative.png"]
        assert items["inside.png"].error is None and items["inside.png"].load() == b"a"
        assert items["sub/a.png"].error is None
        for name in ("sub/out.png", "sub/relative.png"):
            assert "path escapes the input directory" in items[name].error
