"""`benchmarks/label_efficiency.py`: the training-noise arithmetic, and the pilots' path at a toy size."""

import gzip
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import label_efficiency  # noqa: E402
from test_data import _idx_bytes  # noqa: E402

from keras_lossal import data  # noqa: E402


def test_training_noise_against_numpy():
    values = {0: {0: 0.80, 1: 0.79, 2: 0.81, 3: 0.5}, 1: {0: 0.81, 1: 0.77, 2: 0.81}}
    noise = label_efficiency.training_noise(values)
    differences = np.array([0.01, -0.02, 0.0])
    assert noise["seeds"] == [0, 1, 2]  # seed 3 has one training seed only
    np.testing.assert_allclose(noise["differences"], differences, atol=1e-12)
    np.testing.assert_allclose(noise["mean_abs"], 0.01)
    np.testing.assert_allclose(noise["std"], differences.std(ddof=1))
    np.testing.assert_allclose(noise["per_run"], np.sqrt(np.mean(differences**2) / 2))
    np.testing.assert_allclose(noise["means"], [0.805, 0.78, 0.81])
    np.testing.assert_allclose([noise["mean"], noise["mean_std"]], [0.79833333, np.std([0.805, 0.78, 0.81], ddof=1)])
    three = label_efficiency.training_noise({0: {0: 0.1}, 1: {0: 0.2}, 2: {0: 0.6}})
    np.testing.assert_allclose(three["per_run"], np.std([0.1, 0.2, 0.6], ddof=1))  # more trainings: their spread
    with pytest.raises(ValueError, match="at least 2 training seeds"):
        label_efficiency.training_noise({0: {0: 0.8}})


def test_pilots_on_a_validation_split_with_two_training_seeds(tmp_path, monkeypatch):
    # The training files only, balanced: --validation never reads the test split.
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "data")
    images, labels = rng.integers(0, 256, (120, 28, 28), dtype=np.uint8), np.arange(120) % 10
    for key, array in (("x_train", images), ("y_train", labels)):
        with gzip.open(tmp_path / "data" / (data.FASHION_MNIST_FILES[key] + ".gz"), "wb") as handle:
            handle.write(_idx_bytes(array))
    monkeypatch.setattr(label_efficiency, "VALIDATION_SIZE", 30)
    root = tmp_path / "pilots"
    protocol = ["--data-dir", str(tmp_path / "data"), "--strategies", "random", "--seeds", "0", "--validation"]
    protocol += ["--cycles", "2", "--initial-size", "10", "--query-size", "5", "--subset-size", "20", "--width", "2"]
    protocol += ["--epochs", "2", "--batch-size", "8", "--lr-schedule", "1:0.005", "--quiet"]
    for training_seed in (0, 1):
        out = str(root / f"B_train{training_seed}")
        assert label_efficiency.main([*protocol, "--training-seed", str(training_seed), "--out", out]) == 0
    states = [json.load(open(root / f"B_train{t}" / "random" / "seed_0" / "state.json")) for t in (0, 1)]
    assert states[0]["labeled_indices"] == states[1]["labeled_indices"]  # same seed: the same labeled items
    for training_seed, state in enumerate(states):
        config = state["config"]
        assert config["training_seed"] == training_seed and config["tags"]["lr_schedule"] == {"1": 0.005}
        assert config["tags"]["dataset"] == "fashion_mnist_validation"
        assert (config["pool_size"], config["test_size"]) == (90, 30)
    report = label_efficiency.noise_report(str(root))
    assert report.startswith("Protocol B: training seeds [0, 1], seeds [0] (finished runs)")
    aucs = [label_efficiency.results.area_under_curve([10, 15], [c["accuracy"] for c in s["cycles"]]) for s in states]
    assert f"| AUC (10–15) | {aucs[0]:.4f} ± 0.0000 (n=1) |" in report
    assert f"| {aucs[1] - aucs[0]:+.4f} | {abs(aucs[1] - aucs[0]):.4f} |" in report
    assert open(root / "training_noise.md").read() == report + "\n"


def _curves(levels: dict[str, list[float]]) -> dict:
    """{arm: {seed: LoopResult}} with accuracy = level + 0.1 * cycle, the same cycle 0 for every arm."""
    from keras_lossal.loop import LoopResult

    return {
        arm: {
            seed: LoopResult(
                [
                    {"cycle": c, "num_labeled": 10 * (c + 1), "accuracy": 0.5 + (level if c else 0) + 0.1 * c}
                    for c in range(3)
                ],
                [],
                {},
            )  # fmt: skip
            for seed, level in enumerate(per_seed)
        }
        for arm, per_seed in levels.items()
    }


def test_the_recommendation_check_compares_the_challenger_head_to_head_with_rules_a_and_c():
    import label_efficiency_decision as decision

    registration = decision.RECOMMENDATION
    seeds = (0, 1, 2)
    better = _curves({"budget_switch": [0.05, 0.04, 0.01], "learning_loss_clusters": [0.0, 0.02, 0.02],
                      "random": [0.0, 0.0, 0.0]})  # fmt: skip
    text, passed, _ = decision.recommendation_section("Task", better, registration, seeds)
    assert passed and "(a) 3 / 3 seeds ≥ random" in text
    assert "budget_switch − learning_loss_clusters: +0.0" in text
    worse = _curves({"budget_switch": [0.0, 0.0, 0.01], "learning_loss_clusters": [0.03, 0.02, 0.02],
                     "random": [0.0, 0.0, 0.0]})  # fmt: skip
    assert decision.recommendation_section("Task", worse, registration, seeds)[1] is False
    below_random = _curves({"budget_switch": [0.05, 0.05, -0.01], "learning_loss_clusters": [0.0, 0.0, -0.02],
                            "random": [0.0, 0.0, 0.0]})  # fmt: skip  # (a) fails on seed 2
    assert decision.recommendation_section("Task", below_random, registration, seeds)[1] is False
    missing = {arm: dict(list(runs.items())[:2]) for arm, runs in better.items()}
    text, passed, _ = decision.recommendation_section("Task", missing, registration, seeds)
    assert passed is None and "2 of 3 seeds complete" in text


def test_the_second_recommendation_check_passes_a_tie_within_its_margin_only():
    import label_efficiency_decision as decision

    registration = decision.RECOMMENDATION_2
    assert (registration.margin, registration.seeds) == (0.005, (20, 21, 22, 23, 24))
    seeds = (0, 1, 2)

    def check(challenger, current):
        runs = _curves({"budget_switch": challenger, "learning_loss_clusters": current, "random": [0.0, 0.0, 0.0]})
        return decision.recommendation_section("Task", runs, registration, seeds)

    # AUC over 10-30 labels: a level shift L from cycle 1 on moves the AUC by 0.75 L.
    text, passed, _ = check([0.010, 0.010, 0.010], [0.014, 0.014, 0.014])  # -0.003: inside the margin
    assert passed and "budget_switch − learning_loss_clusters: -0.0030" in text and "(passes at ≥ -0.0050)" in text
    assert check([0.010, 0.010, 0.010], [0.018, 0.018, 0.018])[1] is False  # -0.006: outside
    assert (
        decision.recommendation_section(
            "Task",
            _curves({"budget_switch": [0.010] * 3, "learning_loss_clusters": [0.014] * 3, "random": [0.0] * 3}),
            decision.RECOMMENDATION,
            seeds,
        )[1]
        is False
    )  # the first check had no margin


def test_a_recommendation_check_is_decided_once_one_task_fails(tmp_path, monkeypatch):
    import label_efficiency_decision as decision

    answers = {"Fashion-MNIST": None, "Digits (64 tabular features)": False}
    monkeypatch.setattr(decision, "fashion_runs", lambda registration: {})
    monkeypatch.setattr(decision, "task_runs", lambda path, registration: {})
    monkeypatch.setattr(decision, "recommendation_section", lambda name, *args: (f"## {name}\n", answers[name], True))
    registration = decision.dataclasses.replace(decision.RECOMMENDATION_2, name=str(tmp_path / "check"))
    monkeypatch.setattr(type(registration), "out", property(lambda self: str(tmp_path / "check.md")))
    assert "**Decision:** learning_loss_clusters stays the recommendation" in decision.recommendation_check(
        registration
    )
    answers["Digits (64 tabular features)"] = True
    assert "**Decision:** not decided: a task is not complete" in decision.recommendation_check(registration)
    answers["Fashion-MNIST"] = True
    assert "budget_switch replaces learning_loss_clusters" in decision.recommendation_check(registration)


def test_the_third_recommendation_check_compares_rule_a_with_the_recommendations_and_needs_a_win_somewhere(
    tmp_path, monkeypatch
):
    import label_efficiency_decision as decision

    registration = decision.RECOMMENDATION_3
    assert (registration.margin, registration.seeds, registration.symmetric) == (0.005, (25, 26, 27, 28, 29), True)
    seeds = (0, 1, 2)

    def check(challenger, current, registration=registration):
        runs = _curves({"budget_switch": challenger, "learning_loss_clusters": current, "random": [0.0, 0.0, 0.0]})
        return decision.recommendation_section("Task", runs, registration, seeds)

    # Both below random on seed 2: the challenger has 2 / 3, the recommendation 1 / 3, so (a) passes here...
    text, passed, above = check([0.05, 0.04, -0.01], [0.01, -0.005, -0.05])
    assert passed and above and "(a) 2 / 3 seeds ≥ random, learning_loss_clusters 1 / 3" in text
    # ...but not under the second check's rule, which asked the challenger for every seed.
    assert check([0.05, 0.04, -0.01], [0.01, -0.005, -0.05], decision.RECOMMENDATION_2)[1] is False
    # Fewer seeds ≥ random than the recommendation: fails, however large the mean.
    assert check([0.09, 0.09, -0.01], [0.0, 0.0, 0.0])[1] is False
    # A tie inside the margin passes the task, without an interval above 0.
    assert check([0.010, 0.011, 0.012], [0.011, 0.011, 0.011])[1:] == (True, False)

    answers = {"Fashion-MNIST": (True, False), "Digits (64 tabular features)": (True, False)}
    monkeypatch.setattr(decision, "fashion_runs", lambda registration: {})
    monkeypatch.setattr(decision, "task_runs", lambda path, registration: {})
    monkeypatch.setattr(decision, "recommendation_section", lambda name, *args: (f"## {name}\n", *answers[name]))
    monkeypatch.setattr(type(registration), "out", property(lambda self: str(tmp_path / "check.md")))
    assert (
        "learning_loss_clusters stays the recommendation: budget_switch is ahead with an interval above 0 on no task"
        in (decision.recommendation_check(registration))
    )
    answers["Digits (64 tabular features)"] = (True, True)
    assert "budget_switch replaces learning_loss_clusters" in decision.recommendation_check(registration)
    answers["Fashion-MNIST"] = (False, False)
    assert "**Decision:** learning_loss_clusters stays the recommendation\n" in decision.recommendation_check(
        registration
    )


def test_the_must_show_check_holds_the_recommendation_to_every_bare_baseline_and_changes_nothing():
    import label_efficiency_decision as decision

    registration = decision.MUST_SHOW_3
    assert registration.finalists == ("budget_switch",) and registration.report_only
    assert dict(registration.trainings)["badge"] == 2 and registration.seeds == (25, 26, 27, 28, 29)
    seeds = (0, 1, 2)
    levels = {"budget_switch": [0.02, 0.02, 0.02], "learning_loss_clusters": [0.0] * 3, "random": [0.0] * 3,
              "entropy": [0.0] * 3, "margin": [0.01] * 3, "coreset": [0.015] * 3, "badge": [0.02] * 3}  # fmt: skip
    text, verdict = decision.task_section("Task", _curves(levels), registration, seeds)
    assert verdict["budget_switch"] and "| budget_switch | 3 | 3 / 3 | +0.0000 (badge) |" in text
    assert decision.decide([verdict, verdict], registration).startswith("budget_switch meets the issue's target")
    levels["badge"] = [0.021, 0.021, 0.021]  # BADGE ahead on the mean by 0.00075: (b) fails
    _, behind = decision.task_section("Task", _curves(levels), registration, seeds)
    assert not behind["budget_switch"]
    assert decision.decide([verdict, behind], registration).startswith("budget_switch does not meet")
    del levels["coreset"]  # a baseline missing: no seed is complete, nothing is read
    text, missing = decision.task_section("Task", _curves(levels), registration, seeds)
    assert "no seed complete yet" in text and not missing["budget_switch"]
