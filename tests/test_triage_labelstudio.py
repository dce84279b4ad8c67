"""Triage's Label Studio files in a real Label Studio 1.23.2: the tasks import, carry scores, and their images load."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_lossal.serving import InProcessScorer, read_items, triage
from keras_lossal.serving.labeling import LabelStudioOptions

sys.path.insert(0, os.path.dirname(__file__))
from labelstudio_server import label_studio  # noqa: E402, F401 - pytest fixture
from serving_fixtures import LABELS, lossal_export  # noqa: E402, F401 - pytest fixture

NAMES = ["a.png", "b b.png", "été.png", "d.png", "e.png"]


@pytest.mark.slow  # starts a real Label Studio (1-2 min cold)
@pytest.mark.labelstudio
def test_triage_tasks_and_label_config_import_into_label_studio(label_studio, lossal_export, tmp_path):  # noqa: F811
    root = label_studio.document_root
    pixels = np.random.default_rng(5).integers(0, 256, size=(len(NAMES) + 3, 8, 8, 3), dtype=np.uint8)
    pool = os.path.join(root, "triage_pool")
    os.makedirs(pool)
    for name, image in zip(NAMES, pixels):
        with open(os.path.join(pool, name), "wb") as handle:
            handle.write(tf.io.encode_png(image).numpy())
    # A TFRecord's items are no image files: triage writes the queued ones out under the output directory.
    records = os.path.join(str(tmp_path), "pool.tfrecord")
    with tf.io.TFRecordWriter(records) as writer:
        for index, image in enumerate(pixels[len(NAMES) :]):
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(image).numpy()])),
                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"record {index}".encode()])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    options = LabelStudioOptions(document_root=root)
    scorer = InProcessScorer(lossal_export["base"])
    folder_out, records_out = os.path.join(root, "triage_folder"), os.path.join(root, "triage_records")
    triage(read_items(pool), scorer, folder_out, top_k=len(NAMES), label_studio=options)
    triage(read_items(records), scorer, records_out, top_k=2, label_studio=options)
    tasks = []
    for out in (folder_out, records_out):
        with open(os.path.join(out, "label_studio_tasks.json")) as handle:
            tasks += json.load(handle)
    with open(os.path.join(folder_out, "label_config.xml")) as handle:
        project = label_studio.create_project("triage queue", handle.read())
    label_studio.connect_local_storage(project, pool)
    label_studio.connect_local_storage(project, os.path.join(records_out, "label_studio_images"))
    task_ids = label_studio.import_tasks(project, tasks)
    assert len(task_ids) == len(tasks) == len(NAMES) + 2
    images = {task["data"]["item_id"]: task["data"]["image"] for task in tasks}
    assert images["b b.png"] == "/data/local-files/?d=triage_pool/b%20b.png"  # URL-quoted, relative to the root
    assert images["été.png"] == "/data/local-files/?d=triage_pool/%C3%A9t%C3%A9.png"
    for task in tasks:
        stored = label_studio.call("GET", f"/api/tasks/{task_ids[task['data']['item_id']]}")
        assert stored["data"]["predicted_loss"] == pytest.approx(task["data"]["predicted_loss"])
        (prediction,) = stored["predictions"]
        assert prediction["score"] == pytest.approx(task["data"]["predicted_loss"])
        assert prediction["model_version"] == "lossal/1" and stored["data"]["sha256"] == task["data"]["sha256"]
        assert prediction["result"][0]["value"]["choices"][0] in LABELS
        status, body = label_studio.send("GET", task["data"]["image"])
        assert status == 200 and tf.io.decode_png(body).shape == (8, 8, 3), task["data"]["image"]


@pytest.mark.slow  # starts a real Label Studio (1-2 min cold)
@pytest.mark.labelstudio
def test_one_round_triage_label_studio_ingest(label_studio, lossal_export, tmp_path, monkeypatch):  # noqa: F811
    """The round as a user runs it: triage a pool manifest, label its queue in Label Studio, ingest the exports."""
    from keras_lossal import cli

    root = label_studio.document_root
    pool = os.path.join(root, "round_pool")
    os.makedirs(pool)
    pixels = np.random.default_rng(9).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    for index, image in enumerate(pixels):
        with open(os.path.join(pool, f"p{index}.png"), "wb") as handle:
            handle.write(tf.io.encode_png(image).numpy())
    manifest = os.path.join(root, "round_pool.jsonl")  # entries relative to the manifest's folder
    with open(manifest, "w") as handle:
        handle.writelines(json.dumps({"id": f"p{i}", "path": f"round_pool/p{i}.png"}) + "\n" for i in range(4))
    monkeypatch.chdir(tmp_path)  # outside the document root: paths must not depend on the working directory
    out = str(tmp_path / "triage_out")
    argv = ["triage", manifest, "--model", lossal_export["base"], "--output", out, "--top-k", "3"]
    assert cli.main([*argv, "--label-studio-document-root", root]) == 0

    with open(os.path.join(out, "label_config.xml")) as handle:
        project = label_studio.create_project("one round", handle.read())
    label_studio.connect_local_storage(project, pool)
    with open(os.path.join(out, "label_studio_tasks.json")) as handle:
        tasks = json.load(handle)
    task_ids = label_studio.import_tasks(project, tasks)
    queued = [task["data"]["item_id"] for task in tasks]  # highest predicted loss first
    assert len(queued) == 3 and set(task_ids) == set(queued)
    status, body = label_studio.send("GET", tasks[0]["data"]["image"])
    assert status == 200 and body == open(os.path.join(pool, f"{queued[0]}.png"), "rb").read()
    user = label_studio.current_user()
    for item, label in zip(queued, ["cat", "NotAClass", "bird"]):  # Label Studio accepts the bad label
        label_studio.annotate(task_ids[item], user, [label])

    for export_type, name in (("JSON", "export.json"), ("JSON_MIN", "export_min.json")):
        export = tmp_path / name
        export.write_bytes(label_studio.export(project, export_type))
        labeled = tmp_path / f"labeled_{export_type}.jsonl"
        argv = ["ingest", str(export), "--manifest", str(labeled), "--known-items", out]
        argv += ["--label-config", os.path.join(out, "label_config.xml")]
        assert cli.main(argv) == 3, export_type  # completed with rejects (NotAClass)
        with open(labeled) as handle:
            records = [json.loads(line) for line in handle]
        assert sorted((r["id"], os.path.realpath(r["path"]), r["label"]) for r in records) == sorted(
            [
                (queued[0], os.path.realpath(os.path.join(pool, f"{queued[0]}.png")), "cat"),
                (queued[2], os.path.realpath(os.path.join(pool, f"{queued[2]}.png")), "bird"),
            ]
        ), export_type
        hashes = {task["data"]["item_id"]: task["data"]["sha256"] for task in tasks}  # back through Label Studio
        assert {r["id"]: r["sha256"] for r in records} == {item: hashes[item] for item in (queued[0], queued[2])}
        with open(tmp_path / f"{name}.rejects.jsonl") as handle:
            rejects = [json.loads(line) for line in handle]
        assert [(r["id"], r["reason"]) for r in rejects] == [(queued[1], "label not in the class list: NotAClass")]
        before = labeled.read_bytes()
        assert cli.main(argv) == 3
        assert labeled.read_bytes() == before, f"{export_type}: a repeated ingest changed the labeled set"
