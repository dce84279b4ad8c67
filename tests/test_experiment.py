import json
import os

import numpy as np
import pytest

from keras_lossal import data, experiment


def tiny_dataset():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8)
    return data.from_arrays(images[:30], np.arange(30) % 3, images[30:], np.arange(10) % 3, name="tiny")


@pytest.mark.parametrize(
    "strategy, message",
    [("entrpy", "entrpy"), ("bald", "dropout")],
)
def test_unusable_strategies_fail_before_any_training(tmp_path, strategy, message):
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        experiment.run_experiment(
            tiny_dataset(),
            ["random", strategy],
            seeds=[0],
            out_dir=out,
            spec=experiment.ModelSpec(backbone="small_cnn", width=4),
            initial_size=10,
            query_size=5,
            subset_size=None,
            cycles=2,
            epochs=1,
        )
    assert not os.path.exists(out)  # nothing trained, nothing written


def _run(out, strategies, epochs=1, **spec):
    return experiment.run_experiment(
        tiny_dataset(),
        strategies,
        seeds=[0],
        out_dir=out,
        spec=experiment.ModelSpec(backbone="small_cnn", width=4, **spec),
        initial_size=10,
        query_size=5,
        subset_size=None,
        cycles=2,
        epochs=epochs,
        batch_size=8,
        verbose=0,
    )


def test_a_changed_setting_is_refused_before_anything_is_written(tmp_path):
    out = str(tmp_path / "run")
    _run(out, ["random"])
    settings = open(os.path.join(out, "experiment.json")).read()
    state = open(os.path.join(out, "random", "seed_0", "state.json")).read()
    with pytest.raises(ValueError, match="different configuration; refusing to resume"):
        _run(out, ["random"], epochs=2)
    assert open(os.path.join(out, "experiment.json")).read() == settings
    assert open(os.path.join(out, "random", "seed_0", "state.json")).read() == state


def test_cli_refusal_is_one_line(tmp_path, capsys):
    from keras_lossal import cli

    out = str(tmp_path / "run")
    _run(out, ["random"])
    settings = open(os.path.join(out, "experiment.json")).read()
    code = cli.main(
        ["run", "--dataset", "fashion_mnist", "--pool-size", "300", "--test-size", "50", "--strategies", "random",
         "--cycles", "2", "--initial-size", "10", "--query-size", "5", "--epochs", "1", "--backbone", "small_cnn",
         "--width", "4", "--out", out, "--quiet"]
    )  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("lossal run: ")
    assert "refusing to resume" in error[0] and "Traceback" not in error[0]
    assert open(os.path.join(out, "experiment.json")).read() == settings


def test_arms_train_the_head_with_their_recipe_and_the_control_picks_at_random(tmp_path):
    out = str(tmp_path / "run")
    results = _run(out, ["random", "random@recommended", "learning_loss@paper", "learning_loss"])
    assert set(results) == {"random", "random@recommended", "learning_loss@paper", "learning_loss"}
    tags = {name: runs[0].config["tags"] for name, runs in results.items()}
    assert not tags["random"]["with_head"] and tags["random@recommended"]["with_head"]
    assert tags["learning_loss@paper"]["model"]["recipe"] == "paper"
    assert tags["learning_loss"]["model"]["recipe"] == "recommended"
    # The control picks exactly what random picks (same seed), and with the recommended recipe the head
    # leaves the backbone's training untouched, so its accuracy equals random's.
    assert results["random@recommended"][0].labeled_indices == results["random"][0].labeled_indices
    for bare, control in zip(results["random"][0].cycles, results["random@recommended"][0].cycles):
        assert control["accuracy"] == pytest.approx(bare["accuracy"], abs=1e-6)
    assert "ranking_accuracy" in results["random@recommended"][0].cycles[0]
    with pytest.raises(ValueError, match="recipe in"):
        experiment.parse_arm("random@fast")


def test_a_bad_loop_setting_is_refused_before_anything_is_written(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"Expected subset_size >= query_size \(5\) or None. Received: subset_size=3"):
        experiment.run_experiment(
            tiny_dataset(), ["random"], seeds=[0], out_dir=out, spec=experiment.ModelSpec(backbone="small_cnn"),
            initial_size=10, query_size=5, subset_size=3, cycles=2, epochs=1,
        )  # fmt: skip
    assert not os.path.exists(out)


def test_every_run_gets_the_experiments_settings_and_its_seed(tmp_path):
    out = str(tmp_path / "run")
    results = experiment.run_experiment(
        tiny_dataset(), ["random"], seeds=[3, 1], out_dir=out, spec=experiment.ModelSpec(backbone="small_cnn", width=4),
        initial_size=10, query_size=5, subset_size=None, cycles=2, epochs=1, batch_size=8, lr_schedule={1: 0.01},
        verbose=0,
    )  # fmt: skip
    assert [run.config["seed"] for run in results["random"]] == [3, 1]
    assert {run.config["batch_size"] for run in results["random"]} == {8}
    settings = json.loads(open(os.path.join(out, "experiment.json")).read())
    assert list(settings) == [
        "dataset", "strategies", "seeds", "model", "initial_size", "query_size", "subset_size", "cycles", "epochs",
        "batch_size", "augment", "warm_start", "lr_schedule", "head_for_all", "preprocessing",
    ]  # fmt: skip
    assert settings["seeds"] == [3, 1] and settings["lr_schedule"] == {"1": 0.01} and settings["subset_size"] is None
