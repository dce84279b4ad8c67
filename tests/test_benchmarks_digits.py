"""`benchmarks/label_efficiency_digits.py` at a toy size: one seed, two cycles, one epoch, two cheap arms."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import label_efficiency_digits  # noqa: E402


def test_digits_split_is_stratified_and_the_validation_split_comes_from_the_pool():
    dataset = label_efficiency_digits.load_digits_dataset()
    assert (len(dataset.x_train), len(dataset.x_test), dataset.preprocessing.input_shape) == (1297, 500, (64,))
    assert dataset.x_train.min() == 0.0 and dataset.x_train.max() == 1.0
    assert np.bincount(dataset.y_test).min() >= 48 and np.bincount(dataset.y_test).max() <= 51
    validation = label_efficiency_digits.load_digits_dataset(validation=True)
    assert (len(validation.x_train), len(validation.x_test)) == (897, 400)
    pool_rows = {row.tobytes() for row in dataset.x_train}
    assert all(row.tobytes() in pool_rows for row in np.concatenate([validation.x_train, validation.x_test]))


def test_main_writes_reports_with_accuracies_in_range(tmp_path):
    out = str(tmp_path / "digits")
    arguments = ["--out", out, "--seeds", "0", "--cycles", "2", "--epochs", "1", "--strategies", "random,entropy"]
    assert label_efficiency_digits.main([*arguments, "--quiet"]) == 0
    for name in ("report.json", "report.csv", "report.md", "paired.md", "learning_curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    summary = json.load(open(os.path.join(out, "report.json")))
    assert set(summary["strategies"]) == {"random", "entropy"}
    for entry in summary["strategies"].values():
        assert entry["num_labeled"] == [20, 40]
        assert all(0.0 <= value <= 1.0 for value in entry["mean"] + entry["auc_per_seed"])
    # Finished runs keep their state only; the warm-start weights are deleted.
    assert not os.path.exists(os.path.join(out, "random", "seed_0", "weights"))
    assert "| entropy | random |" in open(os.path.join(out, "paired.md")).read()


def test_mean_over_trainings_retrains_the_picks_and_averages_them_cycle_by_cycle(tmp_path):
    out = str(tmp_path / "v5")
    arguments = ["--out", out, "--seeds", "3", "--cycles", "3", "--epochs", "2", "--strategies", "random,margin"]
    arguments += ["--trainings", "3", "--retrain", "random", "--quiet"]
    assert label_efficiency_digits.main(arguments) == 0
    assert sorted(os.listdir(os.path.join(out, "train2"))) == ["experiment.json", "random"]  # margin: train0 only
    states = [json.load(open(os.path.join(out, f"train{t}", "random", "seed_3", "state.json"))) for t in range(3)]
    assert [state["config"].get("training_seed") for state in states] == [None, 1003, 2003]
    assert all(state["labeled_indices"] == states[0]["labeled_indices"] for state in states)
    accuracies = np.array([[cycle["accuracy"] for cycle in state["cycles"]] for state in states])
    assert np.ptp(accuracies, axis=0).max() > 0  # the trainings differ
    averaged = label_efficiency_digits.averaged_runs(out, {"random": 3})
    np.testing.assert_allclose([c["accuracy"] for c in averaged["random"][3].cycles], accuracies.mean(axis=0))
    summary = json.load(open(os.path.join(out, "report.json")))
    np.testing.assert_allclose(summary["strategies"]["random"]["mean"], accuracies.mean(axis=0))
    margin = json.load(open(os.path.join(out, "train0", "margin", "seed_3", "state.json")))
    np.testing.assert_allclose(summary["strategies"]["margin"]["mean"], [c["accuracy"] for c in margin["cycles"]])
    # A partial retraining never enters: asking for 4 trainings leaves random out.
    assert "random" not in label_efficiency_digits.averaged_runs(out, {"random": 4})
