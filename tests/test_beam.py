"""`keras_lossal.beam`: Beam scoring on DirectRunner agrees with in-process triage, item for item."""

import glob
import importlib
import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("apache_beam")

import keras_lossal as kl  # noqa: E402
from keras_lossal import cli  # noqa: E402
from keras_lossal.beam import LossalModelHandler, ScorePool, score_pool  # noqa: E402
from keras_lossal.preprocessing import ImagePreprocessing  # noqa: E402
from keras_lossal.serving.readers import read_items  # noqa: E402
from keras_lossal.serving.scorers import InProcessScorer  # noqa: E402
from keras_lossal.serving.triage import triage  # noqa: E402

SHAPE = (16, 16, 3)
LABELS = ["cat", "dog", "bird"]
PREP = ImagePreprocessing(16, 16, 3, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
TOP_K = 7
# FnApiRunner is the engine DirectRunner runs pipelines on when Prism is unavailable; naming it
# directly keeps tests off the network (DirectRunner would first try to download Prism).
DIRECT = ["--runner=FnApiRunner", "--direct_num_workers=1"]


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    backbone = kl.backbones.resnet18_cifar(SHAPE, num_classes=len(LABELS), width=4)
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=8))
    # Non-trivial BN statistics and head bias, so predicted losses spread out.
    rng = np.random.default_rng(1)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    return model


def png(seed) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=SHAPE, dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


def example(image_bytes: bytes, item_id: str | None) -> bytes:
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))}
    if item_id is not None:
        feature["id"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[item_id.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("beam_export") / "lossal"
    kl.export.export_for_serving(make_model(), str(base), preprocessing=PREP, labels=LABELS, warmup=False)
    return str(base)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """24 good PNGs in two folders, plus a corrupt header and a PNG whose body does not decode."""
    root = tmp_path_factory.mktemp("pool") / "images"
    for index in range(24):
        folder = root / ("a" if index % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:02d}.png").write_bytes(png(index))
    (root / "corrupt.png").write_bytes(b"this is not an image at all, just text bytes")
    good = png(99)
    (root / "a" / "truncated.png").write_bytes(good[:40])  # valid IHDR header, body cut: the model refuses it
    (root / "notes.txt").write_text("not an image extension: ignored by both readers")
    return str(root)


def read_jsonl(pattern):
    records = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    return records


def run_triage(input_path, model_dir, output_dir, **queue_options):
    triage(read_items(input_path), InProcessScorer(model_dir), output_dir, top_k=TOP_K, batch_size=5, **queue_options)
    return (
        read_jsonl(os.path.join(output_dir, "scored.jsonl")),
        read_jsonl(os.path.join(output_dir, "queue.jsonl")),
        read_jsonl(os.path.join(output_dir, "failures.jsonl")),
    )


def read_beam_output(output_dir):
    return (
        read_jsonl(os.path.join(output_dir, "scored-*.jsonl")),
        read_jsonl(os.path.join(output_dir, "queue.jsonl")),
        read_jsonl(os.path.join(output_dir, "failures-*.jsonl")),
    )


def assert_same_as_triage(beam_output, triage_output):
    beam_scored, beam_queue, beam_failures = beam_output
    triage_scored, triage_queue, triage_failures = triage_output
    # Every item scored by both, once, under the same id, with the same predicted loss and class.
    beam_by_id = {record["id"]: record for record in beam_scored}
    triage_by_id = {record["id"]: record for record in triage_scored}
    assert len(beam_by_id) == len(beam_scored)
    assert sorted(beam_by_id) == sorted(triage_by_id)
    for item_id, record in triage_by_id.items():
        np.testing.assert_allclose(
            beam_by_id[item_id]["predicted_loss"], record["predicted_loss"], rtol=1e-5, atol=1e-6
        )
        assert beam_by_id[item_id]["label"] == record["label"]
        assert beam_by_id[item_id]["path"] == record["path"]
    # The global top-K: same ids in the same order, ranks 1..K.
    assert [record["id"] for record in beam_queue] == [record["id"] for record in triage_queue]
    assert [record["rank"] for record in beam_queue] == list(range(1, len(triage_queue) + 1))
    losses = [record["predicted_loss"] for record in beam_queue]
    assert losses == sorted(losses, reverse=True)

    # Failures: the same items, the same reasons (duplicates: the same ids, flagged).
    def failures(records):
        return sorted((r["id"], "duplicate" if r.get("duplicate") else r["reason"]) for r in records)

    assert failures(beam_failures) == failures(triage_failures)


def test_image_folder_top_k_scores_and_failures_match_triage(model_dir, pool, tmp_path):
    summary = score_pool(
        pool, model_dir, str(tmp_path / "beam"), top_k=TOP_K, pipeline_options=DIRECT, max_batch_size=5
    )
    beam_output = read_beam_output(str(tmp_path / "beam"))
    triage_output = run_triage(pool, model_dir, str(tmp_path / "triage"))
    assert_same_as_triage(beam_output, triage_output)

    scored, queue, failures = beam_output
    assert summary["scored"] == len(scored) == 24 and summary["failed"] == len(failures) == 2
    assert len(queue) == TOP_K
    # Ids are the paths relative to the folder, like the folder reader's.
    assert {record["id"] for record in scored} == {f"{'a' if i % 2 else 'b'}/{i:02d}.png" for i in range(24)}
    reasons = {record["id"]: record["reason"] for record in failures}
    assert reasons["corrupt.png"].startswith("corrupt image:")
    assert reasons["a/truncated.png"].startswith("rejected by model:")
    assert not any(record["retryable"] for record in failures)
    with open(os.path.join(tmp_path, "beam", "queue.csv"), encoding="utf-8") as handle:
        rows = handle.read().splitlines()
    assert rows[0].startswith("rank,id,path,predicted_loss") and len(rows) == TOP_K + 1
    assert rows[1].split(",")[1] == queue[0]["id"]


@pytest.mark.parametrize(
    "selection", ["learning_loss_clusters", "learning_loss_badge", "top_k", "badge", "budget_switch"]
)
def test_each_selection_queues_what_triage_queues(model_dir, pool, tmp_path, selection):
    # 24 scored, 14 candidates: the diverse selections really choose (the other tests keep all 24 as candidates);
    # badge's 14 are a hash sample that Beam's combiner must draw as triage's heap does, whatever the bundles.
    # budget_switch: the export records no training, so both resolve it to badge.
    options = {"selection": selection, "candidates_factor": 2, "seed": 5}
    summary = score_pool(pool, model_dir, str(tmp_path / "beam"), top_k=TOP_K, pipeline_options=DIRECT,
                         max_batch_size=5, **options)  # fmt: skip
    beam_output = read_beam_output(str(tmp_path / "beam"))
    triage_output = run_triage(pool, model_dir, str(tmp_path / "triage"), **options)
    assert_same_as_triage(beam_output, triage_output)
    assert len(beam_output[1]) == TOP_K
    assert summary["selection"] == ("badge" if selection == "budget_switch" else selection)


def test_budget_switch_is_beams_default_and_counts_the_exports_training_items(model_dir, pool, tmp_path):
    import shutil

    base = tmp_path / "lossal"
    shutil.copytree(model_dir, base)
    (config_path,) = base.glob("*/assets.extra/lossal.json")
    config = json.loads(config_path.read_text())
    assert ScorePool(str(pool), str(base), top_k=TOP_K).rule.selection == "badge"  # no training record
    classes = len(LABELS)
    for count, chosen in ((10 * classes - 1, "typiclust"), (10 * classes, "badge")):
        config_path.write_text(json.dumps({**config, "training": {"num_items": count}}))
        transform = ScorePool(str(pool), str(base), top_k=TOP_K)
        assert transform.rule.selection == chosen
        assert transform.selection_reason == (
            f"selection budget_switch: {count} labeled item(s), {classes} classes, switch at 10 per class -> {chosen}"
        )
    assert ScorePool(str(pool), str(base), top_k=TOP_K, labels_per_class=5).rule.selection == "badge"
    assert ScorePool(str(pool), str(base), top_k=TOP_K, selection="top_k").selection_reason == ""


def write_tfrecord(path, records):
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def test_tfrecord_and_manifest_via_cli_match_triage(model_dir, pool, tmp_path):
    # TFRecord: ids from the `id` feature, one without id (-> file:index), one that is no tf.Example.
    records = [example(png(200 + i), f"ex-{i}") for i in range(10)]
    records.append(example(png(300), None))
    records.append(b"\x00 not a serialized tf.Example")
    tfrecord = str(tmp_path / "pool.tfrecord")
    write_tfrecord(tfrecord, records)

    # Manifest: good rows with passthrough fields, a missing file, path traversal, a duplicate id,
    # a row without a path and a line that is not JSON.
    lines = [json.dumps({"id": f"m{i}", "path": f"b/{i:02d}.png", "source": "cam-1"}) for i in range(0, 12, 2)]
    lines += [
        json.dumps({"id": "missing", "path": "b/nope.png"}),
        json.dumps({"id": "escape", "path": "../../../etc/passwd"}),
        json.dumps({"id": "m0", "path": "a/01.png"}),
        json.dumps({"id": "nopath"}),
        "{not json",
    ]
    manifest = os.path.join(pool, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")

    for name, input_path, n_scored, n_failed in (("tfrecord", tfrecord, 11, 1), ("manifest", manifest, 6, 5)):
        output = str(tmp_path / f"beam_{name}")
        # Unknown flags (--direct_num_workers=1) must reach Beam's PipelineOptions, not be rejected.
        argv = ["beam-score", "--model", model_dir, "--input", input_path, "--output", output]
        argv += ["--top-k", str(TOP_K), "--max-batch-size", "4", *DIRECT]
        assert cli.main(argv) == 0
        beam_output = read_beam_output(output)
        assert_same_as_triage(beam_output, run_triage(input_path, model_dir, str(tmp_path / f"triage_{name}")))
        scored, _, failures = beam_output
        assert (len(scored), len(failures)) == (n_scored, n_failed), name
        if name == "tfrecord":
            assert {record["id"] for record in scored} == {f"ex-{i}" for i in range(10)} | {"pool.tfrecord:10"}
        else:
            reasons = {record["id"]: record["reason"] for record in failures}
            assert reasons["m0"].startswith("duplicate item id")
            assert "path traversal" in reasons["escape"] and reasons["missing"].startswith("not found")
            assert all(record["extra"] == {"source": "cam-1"} for record in scored)
            # The kept m0 is the first occurrence (b/00.png), like triage, named under the manifest's root.
            kept = {record["id"]: record["path"] for record in scored}["m0"]
            assert kept == os.path.join(os.path.realpath(pool), "b", "00.png")


def test_model_handler_batches_and_isolates_refused_items(model_dir):
    handler = LossalModelHandler(model_dir, min_batch_size=2, max_batch_size=8)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 8}
    assert handler.version_dir.endswith(os.sep + "1")
    model = handler.load_model()
    payloads = [png(1), png(2)[:40], png(3)]
    batch = [
        {"id": f"i{i}", "path": f"p{i}", "kind": "image", "payload": payload, "extra": None, "order": ("s", i)}
        for i, payload in enumerate(payloads)
    ]
    results = list(handler.run_inference(batch, model))
    assert [result.inference["id"] for result in results] == ["i0", "i1", "i2"]
    assert "reason" in results[1].inference and results[1].example["payload"] == b""
    expected = InProcessScorer(model_dir).score("image", [payloads[0], payloads[2]])["predicted_loss"]
    np.testing.assert_allclose(
        [results[0].inference["predicted_loss"], results[2].inference["predicted_loss"]], expected, rtol=1e-6
    )
    assert handler.get_num_bytes(batch) == sum(len(payload) for payload in payloads)
    with pytest.raises(ValueError, match="unique item ids"):
        handler.run_inference(batch + batch[:1], model)


def test_bad_arguments_name_the_value(model_dir, pool):
    with pytest.raises(ValueError, match="top_k=0"):
        ScorePool(pool, model_dir, top_k=0)
    with pytest.raises(ValueError, match="input_type='csv'"):
        ScorePool(pool, model_dir, input_type="csv")
    with pytest.raises(ValueError, match="min_batch_size=9, max_batch_size=4"):
        LossalModelHandler(model_dir, min_batch_size=9, max_batch_size=4)
    with pytest.raises(FileNotFoundError, match="Version 7 not found"):
        LossalModelHandler(model_dir, version=7)
    every = r"\['learning_loss_clusters', 'learning_loss_badge', 'top_k', 'badge', 'typiclust', 'budget_switch'\]"
    with pytest.raises(ValueError, match=rf"Expected selection in {every}. Received: selection='coreset'"):
        ScorePool(pool, model_dir, selection="coreset")
    with pytest.raises(ValueError, match="candidates_factor=0"):
        ScorePool(pool, model_dir, candidates_factor=0)
    with pytest.raises(ValueError, match="Expected a queue length top_k and no threshold.*threshold=1.0"):
        ScorePool(pool, model_dir, threshold=1.0)
    with pytest.raises(TypeError, match=r"Unknown triage settings \['topk'\]"):
        ScorePool(pool, model_dir, topk=5)


def test_an_export_without_embedding_is_refused_before_any_worker_starts():
    from keras_lossal.beam.pipeline import _check_outputs
    from keras_lossal.serving.queue import QueueRule
    from keras_lossal.serving.scorers import MissingOutputError

    outputs = {"predicted_loss": {}, "probabilities": {}, "class_id": {}}
    config = {"signatures": {"score_image_bytes": {"outputs": outputs}, "score_examples": {"outputs": outputs}}}
    with pytest.raises(MissingOutputError, match=r"return \['embedding'\]"):
        _check_outputs(config, QueueRule(top_k=3))
    _check_outputs(config, QueueRule(top_k=3, selection="top_k"))


def test_queue_ties_keep_the_earlier_item():
    from keras_lossal.beam.pipeline import _ordered_queue_key

    entries = [(("b.tfrecord", 0), {"predicted_loss": 0.5}), (("a.tfrecord", 3), {"predicted_loss": 0.5})]
    entries.append((("a.tfrecord", 9), {"predicted_loss": 0.7}))
    best_first = sorted(entries, key=_ordered_queue_key, reverse=True)
    assert [order for order, _ in best_first] == [("a.tfrecord", 9), ("a.tfrecord", 3), ("b.tfrecord", 0)]


def test_missing_apache_beam_names_the_extra(monkeypatch):
    for name in [name for name in sys.modules if name.startswith("keras_lossal.beam")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "apache_beam", None)
    with pytest.raises(ImportError, match=r"pip install 'keras-lossal\[beam\]'"):
        importlib.import_module("keras_lossal.beam")


def test_cli_reports_a_bad_argument_or_a_missing_beam_in_one_line(model_dir, pool, tmp_path, monkeypatch, capsys):
    argv = ["beam-score", "--model", model_dir, "--input", pool, "--output", str(tmp_path / "out"), "--top-k", "0"]
    assert cli.main(argv) == 2
    assert (
        capsys.readouterr().err
        == "lossal beam-score: Expected top_k to be an integer >= 1 or None. Received: top_k=0\n"
    )
    for name in [name for name in sys.modules if name.startswith("keras_lossal.beam")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "apache_beam", None)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("lossal beam-score: keras_lossal.beam needs Apache Beam")


def run_in_thread(function, timeout, on_hang):
    """Runs `function()`; a call still running after `timeout` seconds calls `on_hang` and fails the test."""
    import threading

    finished = {}
    worker = threading.Thread(target=lambda: finished.setdefault("result", function()), daemon=True)
    worker.start()
    worker.join(timeout=timeout)
    if worker.is_alive():
        on_hang()
        pytest.fail(f"still running after {timeout} s")
    return finished["result"]


def test_fifo_and_directory_named_like_images_fail_like_triage(model_dir, tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for index in range(3):
        (folder / f"good_{index}.png").write_bytes(png(400 + index))
    os.mkfifo(folder / "pipe.png")  # opening it for reading waits for a writer forever
    (folder / "folder.png").mkdir()
    (folder / "folder.png" / "inner.png").write_bytes(png(410))

    def release_the_fifo():  # a reader stuck in open() returns once a writer opens the FIFO
        os.close(os.open(folder / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))

    output = str(tmp_path / "beam")
    summary = run_in_thread(
        lambda: score_pool(str(folder), model_dir, output, top_k=TOP_K, pipeline_options=DIRECT),
        timeout=180,
        on_hang=release_the_fifo,
    )
    beam_output = read_beam_output(output)
    assert_same_as_triage(beam_output, run_triage(str(folder), model_dir, str(tmp_path / "triage")))
    scored, queue, failures = beam_output
    assert (summary["scored"], summary["failed"]) == (len(scored), len(failures)) == (4, 2)
    assert {record["id"] for record in scored} == {"good_0.png", "good_1.png", "good_2.png", "folder.png/inner.png"}
    reasons = {record["id"]: record["reason"] for record in failures}
    assert reasons["pipe.png"] == "unreadable: not a regular file (a FIFO); only regular files are read"
    assert reasons["folder.png"] == f"not a regular file (a directory): {str(folder / 'folder.png')!r}"
    assert len(queue) == 4


def test_non_finite_predicted_losses_are_failures_like_triage(model_dir, pool, tmp_path, monkeypatch):
    poisoned_ids = {"b/00.png": np.nan, "a/05.png": np.inf, "b/10.png": -np.inf}
    poisoned = {open(os.path.join(pool, item_id), "rb").read(): loss for item_id, loss in poisoned_ids.items()}
    score = InProcessScorer.score

    def score_with_non_finite_losses(self, kind, payloads):
        outputs = score(self, kind, payloads)
        losses = np.array(outputs["predicted_loss"], dtype=np.float32)
        for row, payload in enumerate(payloads):
            losses[row] = poisoned.get(payload, losses[row])
        return {**outputs, "predicted_loss": losses}

    # FnApiRunner runs the workers in this process, so the Beam model handler scores through the patch too.
    monkeypatch.setattr(InProcessScorer, "score", score_with_non_finite_losses)
    output = str(tmp_path / "beam")
    summary = score_pool(pool, model_dir, output, top_k=TOP_K, pipeline_options=DIRECT, max_batch_size=5)
    beam_output = read_beam_output(output)
    assert_same_as_triage(beam_output, run_triage(pool, model_dir, str(tmp_path / "triage")))
    scored, queue, failures = beam_output
    assert (summary["scored"], summary["failed"]) == (len(scored), len(failures)) == (21, 5)
    reasons = {record["id"]: record["reason"] for record in failures}
    for item_id, loss in poisoned_ids.items():
        assert (
            reasons[item_id]
            == f"non-finite predicted loss {float(loss)!r} (the model returned NaN/inf for this item; not queued)"
        )
    assert not {record["id"] for record in scored + queue} & set(poisoned_ids)
    assert len(queue) == TOP_K and all(np.isfinite(record["predicted_loss"]) for record in queue)


# --------------------------------------------------------------------------- several processes (slow)
MULTI_PROCESS = ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def run_driver(model_dir, pool, output, pids, *arguments, timeout=240):
    """`tests/beam_driver.py` in a process of its own; `(its CompletedProcess, the pids of the scoring workers)`."""
    import subprocess

    tests = os.path.dirname(os.path.abspath(__file__))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(tests), *sys.path]))
    # Beam starts loopback worker processes as `python` from PATH: this interpreter's.
    environment["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environment.get("PATH", "")])
    os.makedirs(pids, exist_ok=True)
    command = [sys.executable, os.path.join(tests, "beam_driver.py"), model_dir, pool, output, "--pids", pids]
    completed = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=timeout, env=environment)
    return completed, {int(name) for name in os.listdir(pids)}


def driver_pid(completed) -> int:
    """The pid of the driver process, from the summary line it prints when the pipeline is done."""
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])["pid"]


def assert_nothing_duplicated(beam_output):
    scored, queue, failures = beam_output
    ids = [record["id"] for record in scored] + [record["id"] for record in failures]
    assert len(ids) == len(set(ids)) == 26 and len(queue) == TOP_K


@pytest.mark.slow
def test_two_worker_processes_and_a_worker_killed_mid_bundle_queue_what_triage_queues(model_dir, pool, tmp_path):
    """Beam's multi-process mode with the recommended queue rule, a worker SIGKILLed mid-bundle, then a rerun.

    FnApiRunner (what DirectRunner runs on offline) does not retry a bundle whose worker died: the data
    channel closes and the run fails ("Channel closed prematurely"), with no scored or queue file
    written (only Beam's `beam-temp-*` folders). Rerunning the same command gives triage's result.
    """
    triage_output = run_triage(pool, model_dir, str(tmp_path / "triage"), candidates_factor=2)
    output, marker = str(tmp_path / "beam"), str(tmp_path / "died")
    arguments = ["--die-on", "b/10.png", "--marker", marker, *MULTI_PROCESS]
    failed, _ = run_driver(model_dir, pool, output, str(tmp_path / "pids_killed"), *arguments)
    assert failed.returncode != 0 and os.path.exists(marker), failed.stderr[-3000:]
    assert "RuntimeError: Channel closed prematurely" in failed.stderr
    assert not glob.glob(os.path.join(output, "*.jsonl")) and not glob.glob(os.path.join(output, "*.csv"))
    rerun, pids = run_driver(model_dir, pool, output, str(tmp_path / "pids"), *arguments)
    assert len(pids) == 2 and driver_pid(rerun) not in pids  # scored in two worker processes, not the driver
    beam_output = read_beam_output(output)
    assert_same_as_triage(beam_output, triage_output)
    assert_nothing_duplicated(beam_output)


@pytest.mark.slow
def test_a_portable_runner_queues_what_triage_queues(model_dir, pool, tmp_path):
    """PortableRunner through the Job API to the Python SDK's local job service, workers in their own process."""
    triage_output = run_triage(pool, model_dir, str(tmp_path / "triage"), candidates_factor=2)
    output = str(tmp_path / "beam")
    portable = ["--portable", "--environment_type=LOOPBACK", "--experiments=use_loopback_process_worker"]
    completed, pids = run_driver(model_dir, pool, output, str(tmp_path / "pids"), *portable)
    assert len(pids) == 1 and driver_pid(completed) not in pids  # the SDK harness is a process of its own
    beam_output = read_beam_output(output)
    assert_same_as_triage(beam_output, triage_output)
    assert_nothing_duplicated(beam_output)
