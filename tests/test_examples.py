import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.mark.slow  # end to end, 20-30 s on 2 cores
def test_dense_regression_example_learns_difficulty():
    import dense_regression

    history, correlation = dense_regression.main(["--train-size", "900", "--epochs", "6"])
    assert history.history["val_ranking_accuracy"][-1] > 0.6
    assert correlation > 0.4


@pytest.mark.slow
def test_custom_backbone_example_runs():
    import custom_backbone

    histories = custom_backbone.main(["--train-size", "600", "--epochs", "2"])
    assert set(histories) == {"my_cnn", "mobilenetv2_1.00_32"}
    assert histories["my_cnn"].history["val_ranking_accuracy"][-1] > 0.5


@pytest.mark.slow  # end to end, 20-30 s on 2 cores
def test_production_round_example_runs_two_rounds(tmp_path, capsys):
    import production_round

    from keras_lossal import data
    from keras_lossal.labeling import manifest

    try:
        data.load_fashion_mnist()
    except FileNotFoundError:
        pytest.skip("needs Fashion-MNIST (Debian's dataset-fashion-mnist)")
    argv = ["--out", str(tmp_path / "out"), "--seed-size", "60", "--pool-size", "120", "--top-k", "40", "--epochs", "1"]
    rounds = production_round.main(argv)["rounds"]
    printed = capsys.readouterr().out
    space = production_round.Workspace(str(tmp_path / "out"))

    # Every round ingests the queue minus the annotator's planted cases: one skipped task (ignored), one
    # label outside the class list and two ties (rejected); the manifest grows by exactly that.
    assert [record["labeled"] for record in rounds] == [60, 96]
    assert [record["added"] for record in rounds] == [36, 36]
    assert len(manifest.read_manifest(space.manifest)) == 60 + 36 + 36
    assert sorted(os.listdir(space.models)) == ["1", "2"]
    for number in range(2):
        with open(os.path.join(space.round_dir(number), "rejects.jsonl")) as stream:
            reasons = [json.loads(line)["reason"] for line in stream]
        assert sorted(reason.split(":")[0] for reason in reasons) == [
            "label not in the class list",
            "tie between annotators",
            "tie between annotators",
        ]
        assert f"label not in the class list: {production_round.BAD_LABEL}" in reasons
    accuracies = [float(value) for value in re.findall(r"test accuracy (\d\.\d{4})", printed)]
    assert len(accuracies) == 2 and all(0 <= value <= 1 for value in accuracies)
    assert accuracies == pytest.approx([record["accuracy"] for record in rounds], abs=1e-4)

    # A re-run does nothing again: no third version, the manifest byte for byte as it was.
    before = open(space.manifest, "rb").read()
    again = production_round.main(argv)["rounds"]
    assert [record["added"] for record in again] == [36, 36]
    assert sorted(os.listdir(space.models)) == ["1", "2"]
    assert open(space.manifest, "rb").read() == before


def test_labeling_folders_writes_the_docs_layout_with_true_classes(tmp_path):
    import csv

    import labeling_folders
    import numpy as np
    from test_data import write_fake_fashion_mnist

    from keras_lossal.labeling import manifest

    arrays = write_fake_fashion_mnist(str(tmp_path / "idx"), train=300)
    out = str(tmp_path / "work" / "data")
    args = ["--out", out, "--classes", "coat,shirt", "--labeled-per-class", "3", "--pool", "20"]
    assert labeling_folders.main([*args, "--data-dir", str(tmp_path / "idx")]) == 0
    truth = list(csv.DictReader(open(tmp_path / "work" / "pool_truth.csv")))
    assert len(truth) == 20 and len(os.listdir(os.path.join(out, "pool"))) == 20
    pool_indices = {int(row["path"][5:10]) for row in truth}
    for row in truth:  # each file holds that training image, of the class the truth names
        index = int(row["path"][5:10])
        assert row["label"] == labeling_folders.FOLDER_NAMES[arrays["y_train"][index]] in ("coat", "shirt")
    for name, class_index in (("coat", 4), ("shirt", 6)):
        files = sorted(os.listdir(os.path.join(out, "labeled", name)))
        assert len(files) == 3 and not {int(f[:5]) for f in files} & pool_indices
        assert all(arrays["y_train"][int(f[:5])] == class_index for f in files)
    import tensorflow as tf

    first = truth[0]["path"]
    decoded = tf.io.decode_png(open(os.path.join(out, first), "rb").read()).numpy()[..., 0]
    np.testing.assert_array_equal(decoded, arrays["x_train"][int(first[5:10])])
    records = manifest.from_folders(os.path.join(out, "labeled"), str(tmp_path / "labeled.jsonl"))
    assert sorted({record["label"] for record in records}) == ["coat", "shirt"] and len(records) == 6
    assert labeling_folders.main([*args, "--classes", "coat,jacket", "--data-dir", str(tmp_path / "idx")]) == 2
