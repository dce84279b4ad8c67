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
        assert prediction["model_version"].endswith(":version=1")
        assert prediction["result"][0]["value"]["choices"][0] in LABELS
        status, body = label_studio.send("GET", task["data"]["image"])
        assert status == 200 and tf.io.decode_png(body).shape == (8, 8, 3), task["data"]["image"]
