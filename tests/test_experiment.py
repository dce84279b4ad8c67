import dataclasses
import json
import os

import numpy as np
import pytest

from keras_lossal import data, experiment
from keras_lossal.loop import LoopConfig


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
            config=LoopConfig(initial_size=10, query_size=5, cycles=2, epochs=1),
        )
    assert not os.path.exists(out)  # nothing trained, nothing written


def _run(out, strategies, epochs=1, **spec):
    return experiment.run_experiment(
        tiny_dataset(),
        strategies,
        seeds=[0],
        out_dir=out,
        spec=experiment.ModelSpec(backbone="small_cnn", width=4, **spec),
        config=LoopConfig(initial_size=10, query_size=5, cycles=2, epochs=epochs, batch_size=8, verbose=0),
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


@pytest.mark.slow  # end to end, 20-30 s on 2 cores
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
            config=LoopConfig(initial_size=10, query_size=5, subset_size=3, cycles=2, epochs=1),
        )  # fmt: skip
    assert not os.path.exists(out)


def test_every_run_gets_the_experiments_settings_and_its_seed(tmp_path):
    out = str(tmp_path / "run")
    results = experiment.run_experiment(
        tiny_dataset(), ["random"], seeds=[3, 1], out_dir=out, spec=experiment.ModelSpec(backbone="small_cnn", width=4),
        config=LoopConfig(initial_size=10, query_size=5, cycles=2, epochs=1, batch_size=8, verbose=0),
        lr_schedule={1: 0.01},
    )  # fmt: skip
    assert [run.config["seed"] for run in results["random"]] == [3, 1]
    assert {run.config["batch_size"] for run in results["random"]} == {8}
    settings = json.loads(open(os.path.join(out, "experiment.json")).read())
    assert list(settings) == [
        "dataset", "strategies", "seeds", "model", "initial_size", "query_size", "subset_size", "cycles", "epochs",
        "batch_size", "augment", "warm_start", "lr_schedule", "head_for_all", "preprocessing",
    ]  # fmt: skip
    assert settings["seeds"] == [3, 1] and settings["lr_schedule"] == {"1": 0.01} and settings["subset_size"] is None


def tiny_backbone(input_shape, num_classes):
    """A user's backbone factory, imported by `run_experiment` as `test_experiment:tiny_backbone`."""
    import keras

    inputs = keras.Input(input_shape)
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(hidden))


def _own_backbone_run(out, backbone, strategies, epochs=1, seeds=(0,), cycles=2):
    return experiment.run_experiment(
        tiny_dataset(), strategies, seeds=list(seeds), out_dir=out,
        spec=experiment.ModelSpec(backbone=backbone, optimizer="adam", learning_rate=0.01),
        config=LoopConfig(initial_size=10, query_size=5, cycles=cycles, epochs=epochs, batch_size=8, verbose=0),
    )  # fmt: skip


def test_a_keras_file_backbone_is_every_runs_initialisation_and_gets_the_head(tmp_path):
    import keras

    path = str(tmp_path / "backbone.keras")
    keras.utils.set_random_seed(5)
    tiny_backbone((8, 8, 1), 3).save(path)
    stored = keras.saving.load_model(path, compile=False)
    dataset = tiny_dataset()
    expected = np.mean(
        np.argmax(stored.predict(dataset.preprocessing(dataset.x_test).numpy(), verbose=0), axis=1) == dataset.y_test
    )
    # epochs=0: the evaluated model is the initialisation itself, for every strategy and seed.
    results = _own_backbone_run(str(tmp_path / "run"), path, ["random", "learning_loss"], 0, seeds=(0, 1), cycles=1)
    for runs in results.values():
        for run in runs:
            assert [cycle["accuracy"] for cycle in run.cycles] == pytest.approx([expected])
            assert run.config["tags"]["backbone_sha256"] == experiment.backbone_fingerprint(path)
    assert type(results["learning_loss"][0].model).__name__ == "LossLearningModel"
    assert type(results["random"][0].model).__name__ == "Functional"
    # The file changed: its runs are refused, not resumed with other weights.
    tiny_backbone((8, 8, 1), 3).save(path)
    with pytest.raises(ValueError, match="backbone_sha256"):
        _own_backbone_run(str(tmp_path / "run"), path, ["random"], epochs=0, cycles=1)


def test_a_factory_backbone_gives_every_arm_of_a_seed_the_same_start(tmp_path):
    results = _own_backbone_run(str(tmp_path / "run"), "test_experiment:tiny_backbone", ["random", "entropy"])
    # Same seed, same initial set, same fresh initialisation: cycle 0 trains identically in both arms.
    assert results["random"][0].cycles[0]["accuracy"] == results["entropy"][0].cycles[0]["accuracy"]
    assert results["random"][0].cycles[0]["train_loss"] == results["entropy"][0].cycles[0]["train_loss"]
    assert results["random"][0].config["tags"]["model"]["backbone"] == "test_experiment:tiny_backbone"
    assert "backbone_sha256" not in results["random"][0].config["tags"]


@pytest.mark.parametrize(
    "backbone, message",
    [
        ("no_such_module:f", "importable backbone factory"),
        ("test_experiment:missing", "importable backbone factory"),
        ("missing.keras", "no such file"),
        ("test_experiment:wrong_input_backbone", r"input of shape \(8, 8, 1\)"),
    ],
)
def test_a_bad_own_backbone_is_refused_before_anything_is_written(tmp_path, backbone, message):
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        _own_backbone_run(out, backbone, ["random"])
    assert not os.path.exists(os.path.join(out, "random"))


def wrong_input_backbone(input_shape, num_classes):
    return tiny_backbone((4, 4, 1), num_classes)


@pytest.mark.parametrize("field", ["learning_rate", "momentum", "weight_decay"])
def test_model_spec_refuses_non_finite_or_negative_rates(field):
    for value in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ValueError, match=rf"Expected {field} to be a finite number >= 0. Received: {field}="):
            experiment.ModelSpec(**{field: value})
    with pytest.raises(ValueError, match="every rate a finite number >= 0"):
        experiment.parse_lr_schedule("10:nan")


def test_a_refusal_advises_restart_and_restart_discards_only_the_requested_runs(tmp_path):
    out = str(tmp_path / "run")
    _run(out, ["random"])
    other = os.path.join(out, "other", "seed_0")
    os.makedirs(other)
    with open(os.path.join(other, "state.json"), "w") as handle:
        handle.write("{}")
    with pytest.raises(ValueError, match=r"refusing to resume.*Pass restart=True"):
        _run(out, ["random"], epochs=2)
    results = experiment.run_experiment(
        tiny_dataset(), ["random"], seeds=[0], out_dir=out, spec=experiment.ModelSpec(backbone="small_cnn", width=4),
        config=LoopConfig(initial_size=10, query_size=5, cycles=2, epochs=2, batch_size=8, verbose=0), restart=True,
    )  # fmt: skip
    assert results["random"][0].config["epochs"] == 2
    assert json.load(open(os.path.join(out, "random", "seed_0", "state.json")))["config"]["epochs"] == 2
    assert open(os.path.join(other, "state.json")).read() == "{}"  # another run of the directory, left alone


def test_replay_from_retrains_each_arms_recorded_labeled_sets_with_another_training_seed(tmp_path):
    config = LoopConfig(initial_size=10, query_size=5, subset_size=10, cycles=3, epochs=1, verbose=0)
    spec = experiment.ModelSpec(backbone="small_cnn", width=4)
    picks = str(tmp_path / "train0")
    recorded = experiment.run_experiment(tiny_dataset(), ["margin", "random"], [0, 1], picks, spec, config)
    retrain = str(tmp_path / "train1")
    with pytest.raises(ValueError, match=r"Expected a finished run of 3 cycles to replay in .*margin.*seed_2"):
        experiment.run_experiment(
            tiny_dataset(), ["margin"], [2], retrain, spec, config, replay_from=picks
        )  # seed 2 never ran
    replayed = experiment.run_experiment(
        tiny_dataset(), ["margin", "random"], [0, 1], retrain, spec,
        dataclasses.replace(config, training_seed=5), replay_from=picks,
    )  # fmt: skip
    for arm in ("margin", "random"):
        for first, again in zip(recorded[arm], replayed[arm]):
            assert again.labeled_indices == first.labeled_indices
            assert again.config["training_seed"] == 5 and "replay_sha256" in again.config
            assert all("acquisition_seconds" in record for record in again.cycles[:-1])
    with open(os.path.join(retrain, "experiment.json")) as stream:
        assert json.load(stream)["replay_from"] == os.path.join("..", "train0")


def test_an_arms_strategy_options_build_the_strategy_are_recorded_and_checked_on_resume(tmp_path):
    out = str(tmp_path / "run")
    arm = "budget_switch:high=entropy:labels_per_class=2"
    results = _run(out, [arm, "budget_switch", "entropy"])
    variant, default = results[arm][0], results["budget_switch"][0]
    assert variant.config["strategy"] == default.config["strategy"] == "budget_switch"
    assert variant.config["strategy_options"] == {"low": "typiclust", "high": "entropy", "labels_per_class": 2,
                                                  "num_classes": None, "sample_factor": 10.0,
                                                  "min_sample": 10_000}  # fmt: skip
    assert default.config["strategy_options"] is None  # the defaults
    assert os.path.isdir(os.path.join(out, arm, "seed_0"))
    # 10 labels over 3 classes: above 2 per class the variant picks exactly what entropy picks.
    assert variant.labeled_indices == results["entropy"][0].labeled_indices
    state = os.path.join(out, arm, "seed_0", "state.json")
    with open(state) as stream:
        recorded = json.load(stream)
    recorded["config"]["strategy_options"]["high"] = "margin"  # as if an earlier run had used other options
    with open(state, "w") as stream:
        json.dump(recorded, stream)
    with pytest.raises(ValueError, match="different configuration; refusing to resume"):
        _run(out, [arm])


@pytest.mark.parametrize("text", ["badge:high", "badge:=3", "badge:high=", "badge:a=1:a=2"])
def test_malformed_strategy_options_are_refused(text):
    with pytest.raises(ValueError, match="Expected strategy options as ':option=value'"):
        experiment.parse_strategy(text)
    assert experiment.parse_strategy("typiclust:neighbours=20:x=0.5") == ("typiclust", {"neighbours": 20, "x": 0.5})
    with pytest.raises(ValueError, match="Invalid options for strategy 'badge'"):
        experiment.arm_strategy("badge:high=margin@paper")


def test_a_state_from_before_strategy_options_were_recorded_resumes_with_any_options(tmp_path):
    from keras_lossal import acquisition

    out = str(tmp_path / "run")
    _run(out, ["budget_switch"])
    variant = acquisition.get("budget_switch", high="entropy", labels_per_class=2)  # arm name "budget_switch"
    with pytest.raises(ValueError, match="different configuration; refusing to resume"):
        _run(out, [variant])  # the state says: the defaults
    state = os.path.join(out, "budget_switch", "seed_0", "state.json")
    with open(state) as stream:
        recorded = json.load(stream)
    del recorded["config"]["strategy_options"]  # as a state written before the key existed
    with open(state, "w") as stream:
        json.dump(recorded, stream)
    (result,) = _run(out, [variant])["budget_switch"]  # finished: resumed, nothing trained again
    assert len(result.cycles) == 2


def test_options_naming_a_head_strategy_train_the_head_and_bald_inside_a_switch_is_checked_first(tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match="dropout"):
        _run(out, ["budget_switch:low=bald"])
    assert not os.path.exists(out)  # refused before any training
    arm = "budget_switch:high=learning_loss:labels_per_class=2"
    (result,) = _run(out, [arm])[arm]
    assert result.config["tags"]["with_head"] and "ranking_accuracy" in result.cycles[-1]
    assert experiment.parse_strategy("entropy:from_logits=False:x=none") == (
        "entropy",
        {"from_logits": False, "x": None},
    )
