"""loop_state: state.json round trip and layout, weights save/load/prune, refusing a changed config; LoopConfig."""

import json
import os

import keras
import numpy as np
import pytest

from keras_lossal.loop import LoopConfig
from keras_lossal.loop_state import STATE_FILE, RunDirectory, jsonable, load_weights, write_json_atomic

CONFIG = {"strategy": "random", "initial_size": 20, "seed": 3, "tags": {"width": 8}}


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])


def test_state_round_trip_keeps_the_layout_older_runs_wrote(tmp_path):
    run = RunDirectory(str(tmp_path / "run"))
    assert run.load(CONFIG) is None
    cycles = [{"cycle": 0, "num_labeled": 20, "accuracy": np.float32(0.5), "selected": np.array([7, 2])}]
    run.save(CONFIG, cycles, [np.int64(4), 1, 9], "weights/cycle_000.weights.npz", finished=False)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    # The keys and values of the state written before loop_state existed (runs on disk must resume).
    assert list(state) == ["version", "config", "finished", "rng", "labeled_indices", "cycles", "weights"]
    assert state["version"] == 1 and state["finished"] is False
    assert state["rng"] == {"seed": 3, "next_cycle": 1, "derivation": "numpy.SeedSequence([seed, cycle, purpose])"}
    assert state["labeled_indices"] == [4, 1, 9]
    assert state["cycles"] == [{"cycle": 0, "num_labeled": 20, "accuracy": 0.5, "selected": [7, 2]}]
    assert run.load(CONFIG) == state
    assert run.weights_path(state["weights"]) == str(tmp_path / "run" / "weights" / "cycle_000.weights.npz")
    assert run.weights_path(None) is None
    assert [name for name in os.listdir(tmp_path / "run") if name.startswith(".")] == []


def test_a_changed_setting_is_refused_with_both_values(tmp_path):
    run = RunDirectory(str(tmp_path))
    run.save(CONFIG, [], [1], None, finished=False)
    with pytest.raises(
        ValueError, match=r"refusing to resume. Differences \(recorded, requested\): \{'seed': \(3, 4\)\}"
    ):
        run.load({**CONFIG, "seed": 4})
    with pytest.raises(ValueError, match=r"'tags': \(\{'width': 8\}, \{'width': 16\}\)"):
        run.load({**CONFIG, "tags": {"width": 16}})
    with pytest.raises(ValueError, match=r"'query_size': \(None, 10\)"):  # a setting the recorded run lacks
        run.load({**CONFIG, "query_size": 10})
    assert run.load({"seed": np.int64(3)})["config"] == CONFIG  # NumPy values compare as their JSON form


def test_weights_save_load_and_prune_keep_only_the_last_cycle(tmp_path):
    run = RunDirectory(str(tmp_path))
    first, second = _model(0), _model(1)
    paths = [run.save_weights(first, 0), run.save_weights(second, 1)]
    assert paths == ["weights/cycle_000.weights.npz", "weights/cycle_001.weights.npz"]
    run.prune_weights(paths[1])
    assert os.listdir(tmp_path / "weights") == ["cycle_001.weights.npz"]
    restored = _model(2)
    load_weights(restored, run.weights_path(paths[1]))
    for got, expected in zip(restored.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(got, expected)
    run.prune_weights(None)  # a cold-start run keeps none
    assert os.listdir(tmp_path / "weights") == []
    RunDirectory(str(tmp_path / "missing")).prune_weights(None)  # nothing to prune is fine


def test_loading_weights_into_another_architecture_names_both_counts(tmp_path):
    path = RunDirectory(str(tmp_path)).save_weights(_model(), 0)
    small = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="holds 4 weight arrays; the model from model_factory has 2"):
        load_weights(small, str(tmp_path / path))


def test_write_json_atomic_leaves_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "settings.json")
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(open(path).read()) == {"a": 1}
    assert os.listdir(tmp_path) == ["settings.json"]
    assert jsonable({1: (np.int32(2), np.array([0.5]))}) == {"1": [2, [0.5]]}


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"initial_size": 0}, r"Expected initial_size to be an integer >= 1. Received: initial_size=0"),
        ({"query_size": 2.5}, r"Expected query_size to be an integer >= 1. Received: query_size=2.5"),
        ({"cycles": "3"}, r"Expected cycles to be an integer >= 1. Received: cycles='3'"),
        ({"epochs": -1}, r"Expected epochs to be an integer >= 0. Received: epochs=-1"),
        ({"batch_size": 0}, r"Expected batch_size to be an integer >= 1. Received: batch_size=0"),
        ({"seed": -2}, r"Expected seed to be an integer >= 0. Received: seed=-2"),
        ({"score_batch_size": 0}, r"Expected score_batch_size to be an integer >= 1. Received: score_batch_size=0"),
        ({"subset_size": 5}, r"Expected subset_size >= query_size \(10\) or None. Received: subset_size=5"),
        ({"subset_size": 10.5}, r"Expected subset_size >= query_size \(10\) or None. Received: subset_size=10.5"),
    ],
)
def test_loop_config_names_the_bad_value(settings, message):
    with pytest.raises(ValueError, match=message):
        LoopConfig(**{"initial_size": 20, "query_size": 10, **settings})


def test_loop_config_stores_integers_and_checks_the_pool():
    config = LoopConfig(initial_size=20.0, query_size=10, subset_size=50.0, cycles=4)
    assert (config.initial_size, config.subset_size, config.final_size) == (20, 50, 50)
    assert isinstance(config.initial_size, int) and isinstance(config.subset_size, int)
    config.check_pool(50)
    with pytest.raises(ValueError, match=r"<= pool size 49 .*initial_size=20, query_size=10, cycles=4 -> 50 labels"):
        config.check_pool(49)


def test_a_refusal_carries_advice_each_layer_can_replace_and_clear_removes_only_the_state(tmp_path):
    from keras_lossal.loop_state import ResumeRefusedError

    run = RunDirectory(str(tmp_path))
    run.save({"seed": 3}, cycles=[], labeled=[], weights=run.save_weights(_model(), 0), finished=False)
    with pytest.raises(ResumeRefusedError) as info:
        run.load({"seed": 4})
    assert str(info.value).endswith("Use another work_dir or delete it.")
    advised = info.value.advising("Re-run with --restart.")
    assert isinstance(advised, ValueError) and str(advised).endswith(
        "refusing to resume. Differences (recorded, requested): {'seed': (3, 4)}. Re-run with --restart."
    )
    (tmp_path / "notes.txt").write_text("mine")
    run.clear()
    assert os.listdir(tmp_path) == ["notes.txt"] and run.load({"seed": 4}) is None
