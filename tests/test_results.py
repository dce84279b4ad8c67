"""keras_lossal.results: AUC and aggregation against NumPy, experiment loading, report and plot files."""

import csv
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_lossal import results
from keras_lossal.loop import write_json_atomic


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(1, 500), min_size=1, max_size=12, unique=True),
    st.data(),
)
def test_area_under_curve_matches_numpy_trapezoid(steps, draw):
    x = np.cumsum(sorted(steps)).astype(float)
    y = np.array(draw.draw(st.lists(st.floats(0, 1), min_size=len(x), max_size=len(x))))
    expected = y[0] if len(x) == 1 else np.trapezoid(y, x) / (x[-1] - x[0])
    assert results.area_under_curve(x, y) == pytest.approx(expected, abs=1e-12)


def test_area_under_curve_rejects_unsorted_sizes():
    with pytest.raises(ValueError, match="increasing"):
        results.area_under_curve([2, 1], [0.1, 0.2])


def test_aggregate_curves_matches_numpy():
    rng = np.random.default_rng(0)
    curves = [rng.random(5) for _ in range(4)]
    mean, std, count = results.aggregate_curves(curves)
    np.testing.assert_allclose(mean, np.mean(curves, axis=0))
    np.testing.assert_allclose(std, np.std(curves, axis=0, ddof=1))
    assert count.tolist() == [4] * 5
    mean, std, count = results.aggregate_curves([curves[0], curves[1][:2]])
    assert count.tolist() == [2, 2, 1, 1, 1] and std[-1] == 0 and mean[-1] == curves[0][-1]


def _fake_experiment(root, accuracies):
    """accuracies: {strategy: {seed: [accuracy per cycle]}} written as loop states."""
    write_json_atomic(str(root / "experiment.json"), {"strategies": list(accuracies)})
    for strategy, runs in accuracies.items():
        for seed, curve in runs.items():
            directory = root / strategy / f"seed_{seed}"
            directory.mkdir(parents=True)
            cycles = [{"cycle": t, "num_labeled": 100 * (t + 1), "accuracy": value} for t, value in enumerate(curve)]
            write_json_atomic(str(directory / "state.json"), {"cycles": cycles, "labeled_indices": [], "config": {}})


def test_summary_report_files_and_plot(tmp_path):
    _fake_experiment(tmp_path, {"random": {0: [0.5, 0.6, 0.7], 1: [0.4, 0.6, 0.8]}, "learning_loss": {0: [0.5, 0.7]}})
    summary = results.summarise(results.load_experiment(str(tmp_path)))
    assert list(summary["strategies"]) == ["random", "learning_loss"]
    assert summary["auc_cycles"] == 2  # the unfinished run limits the common label range
    random_entry = summary["strategies"]["random"]
    np.testing.assert_allclose(random_entry["mean"], [0.45, 0.6, 0.75])
    np.testing.assert_allclose(random_entry["std"], np.std([[0.5, 0.6, 0.7], [0.4, 0.6, 0.8]], axis=0, ddof=1))
    assert random_entry["auc_per_seed"] == pytest.approx([0.55, 0.5])

    paths = results.write_report(summary, str(tmp_path))
    assert json.load(open(paths["json"]))["strategies"]["learning_loss"]["num_labeled"] == [100, 200]
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 5 and rows[0]["strategy"] == "random" and float(rows[2]["accuracy_mean"]) == 0.75
    table = open(paths["md"]).read()
    assert "| random | 0.450 ± 0.071 | 0.600 ± 0.000 | 0.750 ± 0.071 | 0.525 ± 0.035 |" in table
    assert "| learning_loss | 0.500 ± 0.000 | 0.700 ± 0.000 | – |" in table

    png = results.plot_summary(summary, str(tmp_path / "plots" / "curves.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_per_seed_differences_pair_by_seed(tmp_path):
    _fake_experiment(
        tmp_path, {"random": {0: [0.5, 0.6], 1: [0.4, 0.6], 2: [0.5, 0.5]}, "badge": {0: [0.5, 0.7], 1: [0.4, 0.4]}}
    )
    loaded = results.load_experiment(str(tmp_path))
    assert results.values_at_cycle(loaded, 1) == {"random": {0: 0.6, 1: 0.6, 2: 0.5}, "badge": {0: 0.7, 1: 0.4}}
    aucs = results.auc_by_seed(results.summarise(loaded))
    assert aucs["badge"] == pytest.approx({0: 0.6, 1: 0.4}) and aucs["random"] == pytest.approx(
        {0: 0.55, 1: 0.5, 2: 0.5}
    )
    table = results.format_per_seed_differences(aucs, ["badge", "missing", "random"], "random", digits=3)
    # Seed 2 has no badge run, so it is not a column; absent arms and the reference itself are not rows.
    assert table.splitlines()[0].count("seed ") == 2 and len(table.splitlines()) == 3
    assert table.splitlines()[2] == "| badge | random | 0.500 | 0.525 | +0.050 | -0.100 | -0.025 | 1 / 2 |"


def test_load_experiment_without_runs_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="No runs"):
        results.load_experiment(str(tmp_path))
