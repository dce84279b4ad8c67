"""ActiveLearningLoop: labeled-set bookkeeping, atomic state, resume after a crash, strategies by name."""

import json
import os
import shutil
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lossal as kl
from keras_lossal.acquisition import Strategy
from keras_lossal.loop import STATE_FILE, ActiveLearningLoop, LoopConfig, LoopResult, cycle_seed

INPUT_SHAPE = (6, 6, 1)


def _data(count=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, count)
    # Learnable: the class sets the brightness of the image.
    x = np.clip(rng.normal(60 + 60 * y[:, None, None, None], 30, (count, *INPUT_SHAPE)), 0, 255).astype("uint8")
    return x, y


def _classifier():
    inputs = keras.Input(INPUT_SHAPE)
    hidden = keras.layers.Dense(8, activation="relu", name="hidden1")(keras.layers.Flatten()(inputs))
    hidden = keras.layers.Dense(6, activation="relu", name="hidden2")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _loss_learning_model():
    inputs = keras.Input(INPUT_SHAPE)
    hidden = keras.layers.Dense(8, activation="relu", name="hidden1")(keras.layers.Flatten()(inputs))
    hidden = keras.layers.Dense(6, activation="relu", name="hidden2")(hidden)
    backbone = keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden))
    model = kl.LossLearningModel(backbone, feature_layers=["hidden1", "hidden2"], head=kl.LossPredictionHead(units=4))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


class ScoreByModel(Strategy):
    """Top-K of the model's max logit, a deterministic function of the trained weights."""

    name = "max_logit"

    def __init__(self, fail_at_call=None):
        self.calls = 0
        self.fail_at_call = fail_at_call
        self.pool_sizes = []
        self.labeled_sizes = []

    def pick(self, model, pool, request):
        k, batch_size, labeled = request.k, request.batch_size, request.labeled
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        self.pool_sizes.append(len(pool))
        self.labeled_sizes.append(len(labeled))
        scores = model.predict(pool, batch_size=batch_size, verbose=0).max(axis=1)
        order = np.argsort(-scores, kind="stable")[:k]
        return types.SimpleNamespace(indices=order, scores=scores[order])


_LOOP_ARGUMENTS = ("preprocessing", "work_dir", "fit_kwargs", "tags", "label", "replay")


def _new_loop(model_factory, train_data, test_data, strategy, *sizes, **options):
    """`ActiveLearningLoop` with its `LoopConfig` built from `options` (`sizes`: initial_size, query_size)."""
    arguments = {name: options.pop(name) for name in _LOOP_ARGUMENTS if name in options}
    options.update(zip(("initial_size", "query_size"), sizes))
    return ActiveLearningLoop(model_factory, train_data, test_data, strategy, LoopConfig(**options), **arguments)


def _loop(work_dir, strategy, warm_start=True, cycles=4, train=None, model_factory=_classifier, **options):
    x, y = _data()
    defaults = dict(initial_size=20, query_size=10, subset_size=50, epochs=2, batch_size=16, seed=7, verbose=0)
    defaults.update(options)
    return _new_loop(
        model_factory,
        train if train is not None else (x, y),
        (x[:40], y[:40]),
        strategy,
        cycles=cycles,
        warm_start=warm_start,
        work_dir=work_dir,
        **defaults,
    )


def test_cycle_seed_is_a_pure_function():
    assert cycle_seed(3, 2, 1) == cycle_seed(3, 2, 1)
    assert len({cycle_seed(3, cycle, purpose) for cycle in range(5) for purpose in range(4)}) == 20


def test_each_cycle_labels_exactly_k_new_items(tmp_path):
    strategy = ScoreByModel()
    loop = _loop(str(tmp_path), strategy)
    result = loop.run()
    sizes, accuracy = result.learning_curve()
    assert sizes.tolist() == [20, 30, 40, 50]
    assert accuracy.shape == (4,) and np.all((accuracy >= 0) & (accuracy <= 1))
    labeled = result.labeled_indices
    assert len(labeled) == len(set(labeled)) == 50
    assert labeled[:20] == loop.initial_indices().tolist()
    # Selections are disjoint, new and appended in order; nothing is lost.
    seen = set(labeled[:20])
    for record in result.cycles[:-1]:
        assert len(record["selected"]) == 10 and not seen & set(record["selected"])
        seen |= set(record["selected"])
    assert seen == set(labeled) and "selected" not in result.cycles[-1]
    assert all(0 <= index < 120 for index in labeled)
    # The strategy saw a random subset of M = 50 unlabeled items every cycle, and the labeled items so far.
    assert strategy.pool_sizes == [50, 50, 50]
    assert strategy.labeled_sizes == [20, 30, 40]
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["finished"] and state["labeled_indices"] == labeled
    assert state["config"]["preprocessing"]["height"] == 6
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []


@pytest.mark.parametrize("warm_start", [True, False])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, warm_start):
    reference = _loop(str(tmp_path / "reference"), ScoreByModel(), warm_start=warm_start, cycles=3).run()

    crashing = ScoreByModel(fail_at_call=1)  # acquisition of cycle 1 dies, after cycle 0 finished
    with pytest.raises(KeyboardInterrupt):
        _loop(str(tmp_path / "resumed"), crashing, warm_start=warm_start, cycles=3).run()
    partial = LoopResult.load(str(tmp_path / "resumed"))
    assert len(partial.cycles) == 1 and len(partial.labeled_indices) == 30

    resumed = _loop(str(tmp_path / "resumed"), ScoreByModel(), warm_start=warm_start, cycles=3).run()
    assert len(resumed.cycles) == 3
    assert resumed.labeled_indices == reference.labeled_indices
    for got, expected in zip(resumed.cycles, reference.cycles):
        assert got["num_labeled"] == expected["num_labeled"]
        assert got.get("selected") == expected.get("selected")
        np.testing.assert_allclose(got["accuracy"], expected["accuracy"], atol=1e-6)
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-4)


def test_crash_in_a_callback_resumes_from_the_last_saved_cycle(tmp_path):
    class Interrupt:
        def on_cycle_end(self, cycle, record, loop):
            if cycle == 1:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        _loop(str(tmp_path), ScoreByModel(), cycles=3).run(callbacks=[Interrupt()])
    strategy = ScoreByModel()
    result = _loop(str(tmp_path), strategy, cycles=3).run()
    assert strategy.calls == 0  # cycle 1 (the last one to acquire) had already finished
    assert [record["cycle"] for record in result.cycles] == [0, 1, 2]
    assert os.listdir(tmp_path / "weights") == ["cycle_002.weights.npz"]


def test_resume_refuses_a_different_configuration(tmp_path):
    _loop(str(tmp_path), ScoreByModel(), cycles=2, epochs=1, tags={"width": 8}).run()
    with pytest.raises(ValueError, match="query_size"):
        _loop(str(tmp_path), ScoreByModel(), cycles=2, epochs=1, query_size=5, tags={"width": 8}).run()
    with pytest.raises(ValueError, match="tags"):
        _loop(str(tmp_path), ScoreByModel(), cycles=2, epochs=1, tags={"width": 16}).run()


def test_tf_data_training_set_and_named_strategy(tmp_path):
    x, y = _data()
    train = tf.data.Dataset.from_tensor_slices((x, y))
    result = _loop(None, "random", cycles=2, train=train).run()
    assert len(result.labeled_indices) == len(set(result.labeled_indices)) == 30
    assert result.config["strategy"] == "random"


def test_learning_loss_by_name_labels_the_highest_predicted_losses():
    x, y = _data()
    snapshot = {}

    class Capture:
        def on_cycle_end(self, cycle, record, loop):
            if cycle == 0:
                unlabeled = np.setdiff1d(np.arange(len(x)), loop.initial_indices())
                predicted = loop.model.predict_loss(loop.preprocessing(x[unlabeled]).numpy())
                snapshot["top"] = unlabeled[np.argsort(-predicted, kind="stable")[:10]]
                snapshot["selected"] = record["selected"]

    loop = _loop(None, "learning_loss", cycles=2, subset_size=None, model_factory=_loss_learning_model)
    result = loop.run(callbacks=[Capture()])
    assert sorted(snapshot["selected"]) == sorted(snapshot["top"].tolist())
    assert "ranking_accuracy" in result.cycles[0]


def test_invalid_arguments_name_the_value():
    x, y = _data()
    with pytest.raises(ValueError, match="pool size 120"):
        _new_loop(_classifier, (x, y), (x, y), ScoreByModel(), initial_size=100, query_size=10, cycles=4)
    with pytest.raises(ValueError, match="subset_size=5"):
        _new_loop(_classifier, (x, y), (x, y), ScoreByModel(), initial_size=10, query_size=10, subset_size=5)
    with pytest.raises(TypeError, match="Strategy"):
        _new_loop(_classifier, (x, y), (x, y), object(), initial_size=10, query_size=10)


def test_strategy_returning_duplicates_is_rejected():
    class Duplicates(Strategy):
        def pick(self, model, pool, request):
            return types.SimpleNamespace(indices=np.zeros(request.k, dtype=int))

    with pytest.raises(RuntimeError, match="distinct"):
        _loop(None, Duplicates(), cycles=2, epochs=1).run()


def test_every_strategy_gets_the_arguments_of_strategy_select():
    calls = []

    class Recording(Strategy):
        name = "recording"

        def pick(self, model, pool, request):
            calls.append({"k": request.k, "subset_size": request.subset_size, "seed": request.seed})
            calls[-1].update(batch_size=request.batch_size, verbose=request.verbose, pool=pool, labeled=request.labeled)
            return types.SimpleNamespace(indices=np.arange(request.k))

    loop = _loop(None, Recording(), cycles=3, epochs=1, verbose=2, score_batch_size=24)
    result = loop.run()
    assert [call["k"] for call in calls] == [10, 10]
    assert {call["batch_size"] for call in calls} == {24} and {call["verbose"] for call in calls} == {1}
    assert {call["subset_size"] for call in calls} == {None}  # the loop draws the subset itself
    assert [call["seed"] for call in calls] == [cycle_seed(7, cycle, 3) for cycle in (0, 1)]
    x, _ = _data()
    for cycle, call in enumerate(calls):
        labeled_before = sorted(result.labeled_indices[: 20 + 10 * cycle])  # in pool order, preprocessed
        np.testing.assert_allclose(call["labeled"], loop.preprocessing(x[labeled_before]).numpy())
        assert call["pool"].shape == (50, *INPUT_SHAPE)


def test_a_duck_typed_strategy_is_refused_with_a_type_error():
    class OldStyle:
        name = "old_style"

        def select(self, model, pool, k, subset_size=None, seed=None, batch_size=32):
            return types.SimpleNamespace(indices=np.arange(k)[::-1])

    with pytest.raises(TypeError, match=r"Expected a strategy name or a keras_lossal.acquisition.Strategy .*OldStyle"):
        _loop(None, OldStyle(), cycles=2, epochs=1)


def test_a_strategy_overriding_select_is_refused_when_defined():
    with pytest.raises(TypeError, match="overrides Strategy.select; implement pick"):

        class Overriding(Strategy):
            def select(self, model, pool, k, **_):
                return None


def test_the_settings_are_one_loop_config_passed_whole():
    x, y = _data()
    config = LoopConfig(initial_size=20, query_size=10, subset_size=50, cycles=3, epochs=1, seed=4)
    loop = ActiveLearningLoop(_classifier, (x, y), (x, y), ScoreByModel(), config)
    assert loop.loop_config is config and loop.config()["seed"] == 4 and loop.config()["cycles"] == 3
    with pytest.raises(TypeError, match=r"Expected `config` to be a keras_lossal.LoopConfig. Received: config=\{"):
        ActiveLearningLoop(_classifier, (x, y), (x, y), ScoreByModel(), {"initial_size": 20, "query_size": 10})
    with pytest.raises(TypeError, match="initial_size"):
        ActiveLearningLoop(_classifier, (x, y), (x, y), ScoreByModel(), config, initial_size=20)
    with pytest.raises(AttributeError, match="no attribute 'seed'"):
        _ = loop.seed  # the settings live in `loop.loop_config` only


def test_labels_outside_the_models_classes_are_refused_before_training(tmp_path):
    x, y = _data()
    bad = y.copy()
    bad[17] = 5  # the model has 3 classes
    with pytest.raises(ValueError, match=r"Expected class labels in \[0, 3\) .*train_data label 5 at index 17"):
        _loop(str(tmp_path), ScoreByModel(), cycles=2, epochs=1, train=(x, bad)).run()
    assert not os.path.exists(tmp_path / STATE_FILE)  # refused before the first cycle trained
    with pytest.raises(ValueError, match=r"integer class labels in `train_data labels`. Received dtype float64"):
        _loop(None, ScoreByModel(), train=(x, y + 0.5))  # never truncated to integers silently
    negative = y.copy()
    negative[3] = -1
    with pytest.raises(ValueError, match=r"label -1 at index 3"):
        _loop(None, ScoreByModel(), train=(x, negative))


def test_preprocessing_is_inferred_from_the_dtype_and_said(capsys):
    x, y = _data()
    standardised = ((x.astype(np.float32) - 127.5) / 40.0).astype(np.float32)  # about -3..3: already model input
    loop = _new_loop(
        _classifier, (standardised, y), (standardised[:40], y[:40]), ScoreByModel(), initial_size=20, query_size=10,
        cycles=1, epochs=1, verbose=1,
    )  # fmt: skip
    assert loop.preprocessing.scale == 1.0
    np.testing.assert_allclose(loop.preprocessing(standardised[:4]).numpy(), standardised[:4], atol=1e-6)
    loop.run()
    assert "preprocessing inferred from float32 images: x unchanged, at 6x6x1" in capsys.readouterr().out
    pixels = _new_loop(_classifier, (x, y), (x[:40], y[:40]), ScoreByModel(), initial_size=20, query_size=10)
    assert pixels.preprocessing.scale == pytest.approx(1 / 255)
    assert pixels.preprocessing_note == "preprocessing inferred from uint8 images: x / 255, at 6x6x1"
    with pytest.raises(ValueError, match="dtype int64"):
        _new_loop(_classifier, (x.astype(np.int64), y), (x[:40].astype(np.int64), y[:40]), ScoreByModel(), 20, 10)
    with pytest.raises(ValueError, match="one dtype"):
        _new_loop(_classifier, (x, y), (standardised[:40], y[:40]), ScoreByModel(), 20, 10)


def test_cycle_log_shows_task_loss_for_every_model_and_the_runs_label(capsys):
    result = _loop(
        None, "learning_loss", cycles=2, model_factory=_loss_learning_model, verbose=1, label="ll+paper"
    ).run()
    lines = [line for line in capsys.readouterr().out.splitlines() if " cycle " in line]
    assert [line.split(":")[0] for line in lines] == ["[ll+paper seed 7] cycle 0", "[ll+paper seed 7] cycle 1"]
    for line, record in zip(lines, result.cycles):
        assert record["loss"] != pytest.approx(record["task_loss"], abs=1e-3)  # the joint loss differs
        assert f"'task_loss': {round(record['task_loss'], 4)}" in line and "'loss'" not in line
    baseline = _loop(None, ScoreByModel(), cycles=1, verbose=1).run()
    (line,) = [line for line in capsys.readouterr().out.splitlines() if " cycle " in line]
    assert (
        line.startswith("[max_logit seed 7] cycle 0") and f"'task_loss': {round(baseline.cycles[0]['loss'], 4)}" in line
    )


def test_non_finite_pool_items_are_never_labeled_and_non_finite_test_data_is_refused(tmp_path, capsys):
    x, y = _data()
    x = x.astype("float32") / 255.0
    bad = [3, 17, 50, 99]
    x[bad[0], 0, 0, 0] = np.nan
    x[bad[1]] = np.inf
    x[bad[2], 1, 1, 0] = -np.inf
    x[bad[3], 2, 0, 0] = np.nan
    loop = _new_loop(
        _classifier, (x, y), (x[60:100][~np.isin(np.arange(60, 100), bad)], y[60:100][~np.isin(np.arange(60, 100), bad)]),
        "random", initial_size=100, query_size=8, subset_size=None, cycles=3, epochs=1, batch_size=16, seed=0,
    )  # fmt: skip
    result = loop.run()
    assert not set(bad) & set(result.labeled_indices)
    assert len(result.labeled_indices) == 116 == len(x) - len(bad)  # every finite item, and only those
    assert all(np.isfinite(record["accuracy"]) for record in result.cycles)
    assert "4 pool items have NaN/inf values; they are never labeled" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"Expected finite test_data images. Received: 2 of 40"):
        _new_loop(_classifier, (x, y), (x[:40], y[:40]), "random", initial_size=10, query_size=5)
    with pytest.raises(ValueError, match=r"pool size 116 \(finite items\)"):
        _new_loop(_classifier, (x, y), (x[60:64], y[60:64]), "random", initial_size=110, query_size=8, cycles=2)


def test_a_finished_run_whose_weights_were_not_kept_still_loads(tmp_path):
    work_dir = str(tmp_path / "run")
    first = _loop(work_dir, "random", cycles=2).run()
    weights = os.path.join(work_dir, "weights")
    assert any(name.endswith(".npz") for name in os.listdir(weights))
    shutil.rmtree(weights)
    again = _loop(work_dir, "random", cycles=2).run()  # nothing to train: the state says finished
    assert again.cycles == first.cycles and again.labeled_indices == first.labeled_indices
    assert again.model is None


# --------------------------------------------------------------------------- non-image inputs
def _signals(count, seed):
    """A learnable 1-D task: the class sets the frequency of a noisy sine of 32 samples, one channel."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, count)
    time_axis = np.linspace(0, 1, 32)
    phase = rng.uniform(0, 2 * np.pi, (count, 1))
    x = np.sin(2 * np.pi * (2 + 3 * y[:, None]) * time_axis[None] + phase) + rng.normal(0, 0.3, (count, 32))
    return x[..., None].astype(np.float32), y


def _signal_model():
    inputs = keras.Input((32, 1))
    hidden = keras.layers.Conv1D(8, 5, activation="relu", name="conv1")(inputs)
    hidden = keras.layers.MaxPooling1D(name="stage1")(hidden)
    hidden = keras.layers.Conv1D(8, 5, activation="relu", name="conv2")(hidden)
    hidden = keras.layers.GlobalAveragePooling1D(name="pool")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden))
    model.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model


def _tabular(count, seed):
    """A learnable tabular task: 10 features, the class is the sign pattern of two of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (count, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 3] > 0)
    return x, y


def _tabular_model():
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden1")(inputs)
    hidden = keras.layers.Dense(16, activation="relu", name="hidden2")(hidden)
    backbone = keras.Model(inputs, keras.layers.Dense(4, name="logits")(hidden))
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=4))  # automatic taps: the hidden layers
    model.compile(
        keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model


@pytest.mark.parametrize(
    "make_data, model_factory, strategy, preprocessing, chance",
    [
        (_signals, _signal_model, "entropy", "identity", 1 / 3),
        (_tabular, _tabular_model, "learning_loss", None, 1 / 4),
    ],
    ids=["signal_1d", "tabular"],
)
def test_non_image_inputs_run_through_the_loop_unchanged(
    tmp_path, make_data, model_factory, strategy, preprocessing, chance
):
    x, y = make_data(300, seed=0)
    x_test, y_test = make_data(150, seed=1)
    loop = _new_loop(
        model_factory, (x, y), tf.data.Dataset.from_tensor_slices((x_test, y_test)), strategy,
        initial_size=60, query_size=30, subset_size=150, cycles=3, epochs=4, batch_size=32, seed=3,
        preprocessing=preprocessing, work_dir=str(tmp_path), verbose=0,
    )  # fmt: skip
    assert isinstance(loop.preprocessing, kl.data.IdentityPreprocessing)
    assert loop.preprocessing.input_shape == x.shape[1:]
    np.testing.assert_array_equal(loop.preprocessing(x[:3]).numpy(), x[:3])  # identity: the model sees x itself
    result = loop.run()
    sizes, accuracy = result.learning_curve()
    assert sizes.tolist() == [60, 90, 120]
    assert len(set(result.labeled_indices)) == 120
    assert accuracy[-1] > chance + 0.25, accuracy
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["config"]["preprocessing"] == {"kind": "identity", "input_shape": list(x.shape[1:])}
    # A resume of the finished run reads the identity preprocessing back and accepts it.
    again = _new_loop(
        model_factory, (x, y), (x_test, y_test), strategy, initial_size=60, query_size=30, subset_size=150,
        cycles=3, epochs=4, batch_size=32, seed=3, preprocessing=preprocessing, work_dir=str(tmp_path), verbose=0,
    )  # fmt: skip
    assert again.run().labeled_indices == result.labeled_indices


def test_non_image_inputs_refuse_augmentation_and_mismatched_test_shapes():
    x, y = _tabular(40, seed=0)
    with pytest.raises(ValueError, match="augment=False"):
        _new_loop(_tabular_model, (x, y), (x, y), "random", 10, 5, cycles=2, augment=True)
    with pytest.raises(ValueError, match=r"one item shape. Received \(10,\) and \(9,\)"):
        _new_loop(_tabular_model, (x, y), (x[:, :9], y), "random", 10, 5, cycles=2)
    signals, labels = _signals(40, seed=0)
    grayscale = _new_loop(
        _classifier, (signals[..., 0][:, :6, None].repeat(6, 2), labels), (signals[:8, :6, :].repeat(6, 2), labels[:8]),
        "random", initial_size=10, query_size=5, cycles=2,
    )  # fmt: skip
    assert grayscale.x_train.shape == (40, 6, 6, 1)  # without "identity", rank 3 is a grayscale image set, as before


@pytest.mark.parametrize("warm_start", [True, False])
def test_cycles_reset_one_model_to_exactly_the_state_a_fresh_model_would_have(monkeypatch, warm_start):
    class Models:
        def __init__(self):
            self.seen = []

        def on_cycle_end(self, cycle, record, loop):
            self.seen.append(loop.model)

    def run():
        models = Models()
        result = _loop(
            None, "learning_loss", warm_start=warm_start, cycles=3, epochs=1, model_factory=_loss_learning_model
        ).run(callbacks=[models])
        records = [{key: value for key, value in record.items() if "seconds" not in key} for record in result.cycles]
        return records, result.model.get_weights(), models.seen

    reused_records, reused_weights, reused_models = run()
    assert len({id(model) for model in reused_models}) == 1  # one model per run: its functions traced once
    monkeypatch.setattr(kl.loop, "_reset_to", lambda model, fresh, keep_weights: False)  # a new model per cycle
    fresh_records, fresh_weights, fresh_models = run()
    assert len({id(model) for model in fresh_models}) == 3
    assert reused_records == fresh_records
    for reused, fresh in zip(reused_weights, fresh_weights):
        np.testing.assert_array_equal(reused, fresh)


def test_a_non_finite_loss_stops_the_run_before_the_cycle_is_recorded(tmp_path):
    from keras_lossal.callbacks import NonFiniteLossError

    def diverging():
        model = _classifier()
        model.compile(keras.optimizers.SGD(1e30), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    with pytest.raises(NonFiniteLossError, match="Training stopped: the loss became (nan|inf)"):
        _loop(str(tmp_path), "random", model_factory=diverging, cycles=2, epochs=3).run()
    assert not os.path.exists(tmp_path / STATE_FILE)


def _weights(result):
    return np.concatenate([weight.reshape(-1) for weight in result.model.get_weights()])


def _fast_classifier():
    model = _classifier()
    model.compile(
        keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model


def test_a_training_seed_changes_the_training_and_nothing_else():
    runs = {
        training_seed: _loop(
            None, "random", cycles=3, epochs=10, training_seed=training_seed, model_factory=_fast_classifier
        ).run()
        for training_seed in (None, 7, 1, 2)
    }
    # The run's seed is 7: every run labels the same items (initial set, subsets and random's draws come from it).
    labeled = runs[None].labeled_indices
    assert all(result.labeled_indices == labeled for result in runs.values())
    # training_seed=7 trains exactly as the run's own seed does; other training seeds train differently.
    np.testing.assert_array_equal(_weights(runs[7]), _weights(runs[None]))
    for training_seed in (1, 2):
        assert np.abs(_weights(runs[training_seed]) - _weights(runs[None])).max() > 1e-3
    assert np.abs(_weights(runs[1]) - _weights(runs[2])).max() > 1e-3
    # The task is learnable: every training seed ends above chance (3 classes).
    assert all(result.learning_curve()[1][-1] > 0.5 for result in runs.values())


def test_training_seed_is_validated_like_the_other_integers():
    assert LoopConfig(initial_size=10, query_size=5).training_seed is None
    assert LoopConfig(initial_size=10, query_size=5, training_seed=2.0).training_seed == 2
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(
            ValueError, match=rf"Expected training_seed to be an integer >= 0 or None. Received: training_seed={bad!r}"
        ):
            LoopConfig(initial_size=10, query_size=5, training_seed=bad)


def test_a_training_seed_is_recorded_and_checked_on_resume_and_older_states_still_resume(tmp_path):
    reference = _loop(str(tmp_path / "reference"), ScoreByModel(), cycles=3, training_seed=1).run()
    with pytest.raises(KeyboardInterrupt):
        _loop(str(tmp_path / "resumed"), ScoreByModel(fail_at_call=1), cycles=3, training_seed=1).run()
    state = json.loads((tmp_path / "resumed" / STATE_FILE).read_text())
    assert state["config"]["training_seed"] == 1 and state["rng"]["training_seed"] == 1
    for other in (None, 2):  # a recorded training seed is a setting: neither another one nor none resumes it
        with pytest.raises(ValueError, match=rf"'training_seed': \(1, {other}\)"):
            _loop(str(tmp_path / "resumed"), ScoreByModel(), cycles=3, training_seed=other).run()
    resumed = _loop(str(tmp_path / "resumed"), ScoreByModel(), cycles=3, training_seed=1).run()
    assert resumed.labeled_indices == reference.labeled_indices
    np.testing.assert_allclose(_weights(resumed), _weights(reference), atol=1e-4)

    # Without a training seed the state is the one runs wrote before it existed, and it resumes as before.
    with pytest.raises(KeyboardInterrupt):
        _loop(str(tmp_path / "older"), ScoreByModel(fail_at_call=1), cycles=3).run()
    state = json.loads((tmp_path / "older" / STATE_FILE).read_text())
    assert "training_seed" not in state["config"] and "training_seed" not in state["rng"]
    assert list(state["config"]) == [
        "strategy",
        "initial_size",
        "query_size",
        "subset_size",
        "cycles",
        "epochs",
        "batch_size",
        "augment",
        "warm_start",
        "seed",
        "strategy_options",
        "pool_size",
        "test_size",
        "preprocessing",
        "tags",
    ]  # fmt: skip  (strategy_options: null for the defaults; a state without it resumes with any options)
    with pytest.raises(ValueError, match=r"'training_seed': \(None, 0\)"):
        _loop(str(tmp_path / "older"), ScoreByModel(), cycles=3, training_seed=0).run()
    assert len(_loop(str(tmp_path / "older"), ScoreByModel(), cycles=3).run().cycles) == 3


class _NeverCalled(Strategy):
    """A strategy a replay must never ask: it fails the test when scored."""

    name = "never_called"

    def pick(self, model, pool, request):
        raise AssertionError("a replay scored the pool")


def test_a_replay_trains_the_recorded_labeled_sets_again_and_scores_nothing():
    reference = _loop(None, ScoreByModel(), cycles=3, epochs=10, model_factory=_fast_classifier).run()
    labeled = reference.labeled_indices
    assert len(labeled) == 40  # 20 + 2 x 10
    # The same training seed (7, the run's own) reproduces the reference exactly: same items, same weights.
    same = _loop(None, _NeverCalled(), cycles=3, epochs=10, model_factory=_fast_classifier, replay=labeled).run()
    assert same.labeled_indices == labeled
    assert [record["selected"] for record in same.cycles[:-1]] == [labeled[20:30], labeled[30:40]]
    np.testing.assert_array_equal(_weights(same), _weights(reference))
    np.testing.assert_allclose(same.learning_curve()[1], reference.learning_curve()[1])
    # Another training seed: the same labeled items in the same order, another training.
    other = _loop(
        None, _NeverCalled(), cycles=3, epochs=10, model_factory=_fast_classifier, replay=labeled, training_seed=1
    ).run()
    assert other.labeled_indices == labeled
    assert np.abs(_weights(other) - _weights(reference)).max() > 1e-3
    # A longer sequence is cut to the final labeled set; a run of fewer cycles uses its start.
    longer = labeled + [index for index in range(120) if index not in labeled][:5]
    assert _loop(None, _NeverCalled(), cycles=2, epochs=1, replay=longer).run().labeled_indices == labeled[:30]


def test_a_bad_replay_is_refused_naming_what_was_expected():
    x, y = _data()
    x = x.astype(np.float32)
    x[5] = np.nan
    cases = [
        (list(range(39)), r"at least the final labeled set's 40 indices .* Received 39"),
        (list(range(39)) + [0], r"Expected distinct replay indices"),
        (list(range(39)) + [120], r"Expected replay indices in \[0, 120\). Received \[120\]"),
        (list(range(6, 46)) + [0], None),
        ([5] + list(range(6, 45)), r"finite pool items. Received NaN/inf items \[5\]"),
        ([[0, 1]] * 20, r"1-D sequence of integer pool indices"),
        ([0.5] * 40, r"1-D sequence of integer pool indices"),
    ]
    for replay, message in cases:
        if message is None:
            _loop(None, _NeverCalled(), cycles=3, epochs=1, train=(x, y), replay=replay, preprocessing="identity")
            continue
        with pytest.raises(ValueError, match=message):
            _loop(None, _NeverCalled(), cycles=3, epochs=1, train=(x, y), replay=replay, preprocessing="identity")


def test_a_replay_is_recorded_and_resumes_only_with_the_same_sequence(tmp_path):
    labeled = _loop(None, ScoreByModel(), cycles=3).run().labeled_indices
    reference = _loop(None, _NeverCalled(), cycles=3, replay=labeled, training_seed=1).run()

    class Interrupt:
        def on_cycle_end(self, cycle, record, loop):
            if cycle == 0:
                raise KeyboardInterrupt("simulated crash")

    work_dir = str(tmp_path / "replay")
    with pytest.raises(KeyboardInterrupt):
        _loop(work_dir, _NeverCalled(), cycles=3, replay=labeled, training_seed=1).run(callbacks=[Interrupt()])
    state = json.loads((tmp_path / "replay" / STATE_FILE).read_text())
    assert len(state["cycles"]) == 1 and len(state["config"]["replay_sha256"]) == 64
    shuffled = labeled[:20] + labeled[30:40] + labeled[20:30]
    for other in (shuffled, None):
        with pytest.raises(ValueError, match="replay_sha256"):
            _loop(work_dir, _NeverCalled(), cycles=3, replay=other, training_seed=1).run()
    resumed = _loop(work_dir, _NeverCalled(), cycles=3, replay=labeled, training_seed=1).run()
    assert resumed.labeled_indices == labeled
    np.testing.assert_allclose(_weights(resumed), _weights(reference), atol=1e-4)
