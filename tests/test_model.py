import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_lossal as kl
from keras_lossal import losses
from keras_lossal.backbones import resnet18_cifar


def small_cnn(input_shape=(8, 8, 1), num_classes=3, batch_norm=True, name="small_cnn"):
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def classification_data(n=64, seed=0, shape=(8, 8, 1), num_classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    x = rng.normal(size=(n, *shape)).astype("float32") * 0.3
    x[..., 0] += y[:, None, None] - 1.0
    return x, y


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ------------------------------------------------------------------ taps
def test_automatic_taps_resnet_stages():
    assert kl.LossLearningModel(resnet18_cifar(width=4)).feature_layers == ["stage1", "stage2", "stage3", "stage4"]


def test_automatic_taps_skip_padding_and_outputs():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(4, 3, name="a")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="b")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="c")(x)
    heatmap = keras.layers.Conv2DTranspose(1, 2, strides=2, name="heatmap")(x)
    model = kl.LossLearningModel(keras.Model(inputs, heatmap))
    assert model.feature_layers == ["a", "c"]


def test_automatic_taps_dense_backbone():
    inputs = keras.Input((5,))
    x = inputs
    for i in range(4):
        x = keras.layers.Dense(8, activation="relu", name=f"hidden{i}")(x)
    x = keras.layers.Dropout(0.1)(x)
    outputs = keras.layers.Dense(2, name="out")(x)
    assert kl.LossLearningModel(keras.Model(inputs, outputs)).feature_layers == ["hidden1", "hidden2", "hidden3"]


def test_unknown_feature_layer_lists_available():
    with pytest.raises(ValueError, match=r"not found: \['nope'\]; available: \['image', 'conv1'"):
        kl.LossLearningModel(small_cnn(), feature_layers=["conv1", "nope"])


def test_subclassed_backbone_is_rejected_with_fix():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="functional API"):
        kl.LossLearningModel(Net())


def test_sequential_backbone_with_input():
    backbone = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu", name="h1"), keras.layers.Dense(2, name="o")]
    )
    model = kl.LossLearningModel(backbone)
    assert model.feature_layers == ["h1"]
    model.compile("adam", sparse_ce())
    history = model.fit(np.random.rand(16, 6), np.random.randint(0, 2, 16), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="objective"):
        kl.LossLearningModel(small_cnn(), objective="hinge")
    with pytest.raises(ValueError, match="loss_weight"):
        kl.LossLearningModel(small_cnn(), loss_weight=-1)
    model = kl.LossLearningModel(small_cnn())
    with pytest.raises(ValueError, match="needs a task loss"):
        model.compile("adam")


# ------------------------------------------------------------------ steps
def test_logged_losses_match_reference():
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn(), loss_weight=0.5, margin=1.0, recipe="paper")
    model.compile("sgd", sparse_ce(), metrics=["accuracy"])
    logs = model.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    predictions = model.predict(x, verbose=0)
    logits = predictions["output"]
    per_sample = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    ranking = losses.loss_prediction_loss(predictions["predicted_loss"], per_sample).numpy()
    accuracy = (logits.argmax(1) == y).mean()
    assert logs["task_loss"] == pytest.approx(per_sample.mean(), rel=1e-5)
    assert logs["loss_prediction_loss"] == pytest.approx(ranking, rel=1e-5)
    assert logs["loss"] == pytest.approx(per_sample.mean() + 0.5 * ranking, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(accuracy)
    assert set(logs) == {"loss", "task_loss", "loss_prediction_loss", "ranking_accuracy", "accuracy"}


def test_sample_weight_and_class_weight_weight_the_task_term():
    x, y = classification_data(16)
    weights = np.linspace(0, 2, 16).astype("float32")
    model = kl.LossLearningModel(small_cnn())
    model.compile("sgd", sparse_ce())
    logs = model.evaluate(x, y, sample_weight=weights, batch_size=16, return_dict=True, verbose=0)
    logits = model.predict(x, verbose=0)["output"]
    per_sample = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    assert logs["task_loss"] == pytest.approx((per_sample * weights).sum() / 16, rel=1e-5)
    history = model.fit(x, y, class_weight={0: 0.0, 1: 0.0, 2: 0.0}, batch_size=16, epochs=1, verbose=0)
    assert history.history["task_loss"][0] == 0.0
    assert history.history["loss_prediction_loss"][0] > 0.0


def test_per_output_sample_weights():
    x, y = classification_data(8)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    backbone = keras.Model(inputs, {"a": keras.layers.Dense(3, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)})
    model = kl.LossLearningModel(backbone)
    model.compile("sgd", loss={"a": sparse_ce(), "b": "mse"}, loss_weights={"a": 1.0, "b": 2.0})
    targets = {"a": y, "b": np.ones((8, 1), "float32")}
    weights = {"a": np.linspace(0, 1, 8).astype("float32"), "b": np.full(8, 3.0, "float32")}
    logs = model.evaluate(x, targets, sample_weight=weights, batch_size=8, return_dict=True, verbose=0)
    out = model.predict(x, verbose=0)["output"]
    ce = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, out["a"], from_logits=True))
    mse = ((out["b"] - 1.0) ** 2).ravel()
    expected = (ce * weights["a"] + 2.0 * mse * weights["b"]).mean()
    assert logs["task_loss"] == pytest.approx(expected, rel=1e-5)


def test_predict_and_predict_loss():
    x, _ = classification_data(10)
    model = kl.LossLearningModel(small_cnn())
    out = model.predict(x, batch_size=4, verbose=0)
    assert set(out) == {"output", "predicted_loss"}
    assert out["output"].shape == (10, 3) and out["predicted_loss"].shape == (10,)
    np.testing.assert_allclose(model.predict_loss(x, batch_size=3), out["predicted_loss"], rtol=1e-5)


def test_batch_of_one_is_finite():
    x, y = classification_data(5)
    model = kl.LossLearningModel(small_cnn())
    model.compile("sgd", sparse_ce())
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # last batch has one sample
    assert all(np.isfinite(v[0]) for v in history.history.values())


# ------------------------------------------------------------------ detach
def test_detach_stops_head_gradients_into_backbone_only():
    x, _ = classification_data(8)
    target = np.arange(8, dtype="float32")
    model = kl.LossLearningModel(small_cnn(batch_norm=False), recipe="paper")
    for gate, expect_zero in ((0.0, False), (1.0, True)):
        model.head_detached.assign(gate)
        with tf.GradientTape(persistent=True) as tape:
            value = losses.loss_prediction_loss(model(x, training=True)["predicted_loss"], target)
        backbone = tape.gradient(value, model.backbone.trainable_weights)
        head = tape.gradient(value, model.head.trainable_weights)
        backbone_norm = sum(float(tf.reduce_sum(tf.abs(g))) for g in backbone if g is not None)
        assert (backbone_norm == 0.0) is expect_zero, (gate, backbone_norm)
        assert sum(float(tf.reduce_sum(tf.abs(g))) for g in head) > 0
    # The forward value does not depend on the gate.
    model.head_detached.assign(0.0)
    attached = model.predict_loss(x)
    model.head_detached.assign(1.0)
    np.testing.assert_allclose(model.predict_loss(x), attached, rtol=1e-6)


class CountingModel(kl.LossLearningModel):
    traces = 0

    def train_step(self, data):
        type(self).traces += 1  # runs once per trace, not per step
        return super().train_step(data)


class RecordGate(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.gates = {}

    def on_epoch_end(self, epoch, logs=None):
        self.gates[epoch] = float(self.model.head_detached.numpy())


def test_detach_schedule_takes_effect_without_retrace_and_survives_initial_epoch():
    x, y = classification_data(32)
    model = CountingModel(small_cnn(batch_norm=False), detach_after_epoch=2)
    model.compile(keras.optimizers.SGD(0.05), sparse_ce())
    record = RecordGate()
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[record])
    assert record.gates == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0}
    traces = CountingModel.traces
    assert traces >= 1
    # Resume in a new fit call from epoch 3: still detached, same compiled step.
    model.head_detached.assign(0.0)
    record = RecordGate()
    model.fit(x, y, batch_size=16, initial_epoch=3, epochs=5, verbose=0, callbacks=[record])
    assert record.gates == {3: 1.0, 4: 1.0}
    assert CountingModel.traces == traces


def test_detached_backbone_update_equals_task_only_update():
    # With the head detached, the backbone sees only the task loss gradient.
    x, y = classification_data(16)
    weights = small_cnn(batch_norm=False).get_weights()

    def backbone_after_step(loss_weight):
        backbone = small_cnn(batch_norm=False)
        backbone.set_weights(weights)
        model = kl.LossLearningModel(backbone, loss_weight=loss_weight, detach_after_epoch=0)
        model.compile(keras.optimizers.SGD(0.1), sparse_ce())
        model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        return backbone.get_weights()

    for a, b in zip(backbone_after_step(0.0), backbone_after_step(100.0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ learning
def test_head_learns_which_samples_are_hard():
    # Half of the samples carry a flag feature and random labels: their loss stays high,
    # so a working head ranks flagged samples above clean ones.
    rng = np.random.default_rng(0)
    n = 1200
    x = rng.normal(size=(n, 8)).astype("float32")
    noisy = rng.random(n) < 0.5
    y = (x[:, 0] > 0).astype("int32")
    y[noisy] = rng.integers(0, 2, noisy.sum())
    x[:, 1] = noisy * 2.0
    inputs = keras.Input((8,))
    h = keras.layers.Dense(32, activation="relu", name="h1")(inputs)
    h = keras.layers.Dense(32, activation="relu", name="h2")(h)
    backbone = keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))
    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=16))
    model.compile(keras.optimizers.Adam(3e-3), sparse_ce(), metrics=["accuracy"])
    history = model.fit(x[:1000], y[:1000], validation_data=(x[1000:], y[1000:]), epochs=15, batch_size=64, verbose=0)
    assert history.history["val_ranking_accuracy"][-1] > 0.65
    scores = model.predict_loss(x[1000:])
    assert scores[noisy[1000:]].mean() > scores[~noisy[1000:]].mean()


def test_dense_regression_and_two_output_models_train():
    rng = np.random.default_rng(1)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    heatmaps = np.roll(x, 1, axis=1)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c2")(h)
    up = keras.layers.UpSampling2D(name="up")(h)
    heatmap = keras.layers.Conv2D(1, 3, padding="same", name="heatmap")(up)
    count = keras.layers.Dense(1, name="count")(keras.layers.GlobalAveragePooling2D(name="gap")(h))
    backbone = keras.Model(inputs, {"heatmap": heatmap, "count": count})
    model = kl.LossLearningModel(backbone, loss_weight=1e-2)
    model.compile(
        keras.optimizers.Adam(1e-2),
        loss={"heatmap": "mse", "count": "mae"},
        loss_weights={"heatmap": 1.0, "count": 0.5},
    )
    targets = {"heatmap": heatmaps, "count": x.mean(axis=(1, 2, 3))[:, None]}
    history = model.fit(x, targets, batch_size=16, epochs=8, verbose=0)
    assert history.history["task_loss"][-1] < 0.5 * history.history["task_loss"][0]
    out = model.predict(x[:3], verbose=0)
    assert out["output"]["heatmap"].shape == (3, 8, 8, 1) and out["predicted_loss"].shape == (3,)


def test_classification_trains():
    x, y = classification_data(128)
    model = kl.LossLearningModel(small_cnn())
    model.compile(keras.optimizers.Adam(1e-2), sparse_ce(), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=10, verbose=0)
    assert history.history["accuracy"][-1] > 0.8
    assert history.history["task_loss"][-1] < history.history["task_loss"][0]


# ------------------------------------------------------------------ precision / XLA
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn())
    model.compile(keras.optimizers.Adam(1e-2), sparse_ce())
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    assert model.backbone.get_layer("conv1").compute_dtype == policy.split("_")[1]
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["task_loss"][-1] < history.history["task_loss"][0]
    out = model.predict(x, verbose=0)
    assert out["output"].dtype == np.float32 and out["predicted_loss"].dtype == np.float32


def test_jit_compile_matches_graph_step():
    x, y = classification_data(32)
    initial = small_cnn(batch_norm=False).get_weights()
    results = []
    for jit in (False, True):
        backbone = small_cnn(batch_norm=False)
        backbone.set_weights(initial)
        model = kl.LossLearningModel(backbone)
        model.head.set_weights([np.full_like(w, 0.01) for w in model.head.get_weights()])
        model.compile(keras.optimizers.SGD(0.05), sparse_ce(), jit_compile=jit)
        results.append(model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history["loss"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, keras_lossal as kl
    from keras_lossal import losses
    sys.path.insert(0, sys.argv[1])
    from test_model import small_cnn, classification_data

    x, y = classification_data(16)
    initial = small_cnn(batch_norm=False).get_weights()

    def build():
        backbone = small_cnn(batch_norm=False)
        backbone.set_weights(initial)
        model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=4), recipe="paper")
        model.head.set_weights([np.linspace(-0.3, 0.3, w.size).reshape(w.shape) for w in model.head.get_weights()])
        return model

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)

    # Reference on one device: each replica takes 8 consecutive samples and pairs within them;
    # the update is the gradient of the mean over replicas of their joint losses.
    reference = build()
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    with tf.GradientTape() as tape:
        total = 0.0
        for half in (slice(0, 8), slice(8, 16)):
            out = reference(x[half], training=True)
            per_sample = ce(y[half], out["output"])
            total += tf.reduce_mean(per_sample) + losses.loss_prediction_loss(out["predicted_loss"], per_sample)
        total /= 2
    grads = tape.gradient(total, reference.trainable_weights)
    expected = [w.numpy() - 0.1 * g.numpy() for w, g in zip(reference.trainable_weights, grads)]
    got = [w.numpy() for w in model.trainable_weights]
    # 3 items split 2 + 1 over the replicas: Keras' own build from their mean fails on such a batch.
    odd = model.evaluate(x[:3], y[:3], verbose=0, return_dict=True)
    print(json.dumps({"difference": max(float(np.abs(a - b).max()) for a, b in zip(expected, got)), "odd": odd}))
    """
)


def test_mirrored_strategy_matches_single_replica_update(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    result = subprocess.run([sys.executable, str(script), tests_dir], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["difference"] < 1e-5
    assert all(np.isfinite(value) for value in printed["odd"].values()) and "task_loss" in printed["odd"]


# ------------------------------------------------------------------ saving
def test_joint_loss_names_each_term_and_metrics_are_listed_once():
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn(), loss_weight=0.5, margin=1.0, recipe="paper")
    model.compile("sgd", sparse_ce(), metrics=["accuracy"])
    joint = model.joint_loss(y, model(x, training=False))
    assert isinstance(joint, kl.model.JointLoss)
    assert float(joint.total) == pytest.approx(float(joint.task_loss) + 0.5 * float(joint.prediction_loss), rel=1e-6)
    assert float(joint.batch_size) == 32 and 0.0 <= float(np.mean(joint.ranking_accuracy)) <= 1.0
    values = model.evaluate(x, y, batch_size=32, verbose=0)
    names = model.metrics_names
    assert len(names) == len(set(names)) == len(values)
    logs = dict(zip(names, values))
    assert logs["loss"] == pytest.approx(float(joint.total), rel=1e-5)
    assert logs["task_loss"] == pytest.approx(float(joint.task_loss), rel=1e-5)


def test_compile_config_carries_the_task_loss_and_weights(tmp_path):
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn(), recipe="paper")
    model.compile("sgd", sparse_ce(), loss_weights=[2.0], metrics=["accuracy"])
    before = model.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    after = loaded.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    assert after["task_loss"] == pytest.approx(before["task_loss"], rel=1e-6)
    loaded.compile("sgd", sparse_ce())
    unweighted = loaded.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    assert before["task_loss"] == pytest.approx(2.0 * unweighted["task_loss"], rel=1e-5)  # the weight survived


def test_save_load_round_trip(tmp_path):
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn(), loss_weight=0.3, margin=0.5, detach_after_epoch=4)
    model.compile(keras.optimizers.Adam(1e-2), sparse_ce(), metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kl.LossLearningModel)
    assert (loaded.loss_weight, loaded.margin, loaded.detach_after_epoch) == (0.3, 0.5, 4)
    assert loaded.feature_layers == model.feature_layers
    expected, got = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    np.testing.assert_allclose(got["output"], expected["output"], rtol=1e-6)
    np.testing.assert_allclose(got["predicted_loss"], expected["predicted_loss"], rtol=1e-6)
    logs = loaded.fit(x, y, batch_size=16, epochs=1, verbose=0).history  # compiled on load
    assert {"task_loss", "accuracy", "ranking_accuracy"} <= set(logs)
    head = kl.LossPredictionHead.from_config(model.head.get_config())
    assert head.units == 128


# ------------------------------------------------------------------ recipes and head options
def _fit_backbone(model, x, y, epochs=3):
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), sparse_ce(), metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)


def test_recommended_recipe_trains_the_backbone_exactly_like_bare_training():
    # The no-harm guarantee: the default head never changes what the backbone learns.
    x, y = classification_data(96)
    initial = small_cnn().get_weights()
    bare = small_cnn()
    bare.set_weights(initial)
    _fit_backbone(bare, x, y)
    backbone = small_cnn()
    backbone.set_weights(initial)
    model = kl.LossLearningModel(backbone, loss_weight=10.0)
    _fit_backbone(model, x, y)
    for expected, got in zip(bare.get_weights(), backbone.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # ... whereas the paper's joint training moves it.
    joint_backbone = small_cnn()
    joint_backbone.set_weights(initial)
    _fit_backbone(kl.LossLearningModel(joint_backbone, loss_weight=10.0, recipe="paper"), x, y)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(bare.get_weights(), joint_backbone.get_weights()))
    assert moved > 1e-3


def test_recipes_and_explicit_overrides():
    paper = kl.LossLearningModel(small_cnn(), recipe="paper")
    assert (paper.pairs, paper.backbone_gradient_scale, paper.detach_after_fraction) == ("disjoint", 1.0, 0.6)
    assert not paper.head.normalize
    default = kl.LossLearningModel(small_cnn())
    assert default.recipe == "recommended"
    assert (default.pairs, default.backbone_gradient_scale, default.detach_after_fraction) == ("all", 0.0, None)
    assert not default.head.normalize
    light = kl.LossLearningModel(small_cnn(), recipe="light_joint")
    assert (light.pairs, light.backbone_gradient_scale, light.detach_after_fraction) == ("disjoint", 0.1, 0.6)
    assert kl.model.RECIPES["light_joint"] == {**kl.model.RECIPES["paper"], "backbone_gradient_scale": 0.1}
    assert kl.LossLearningModel(small_cnn(), normalize_head_inputs=True).head.normalize
    custom = kl.LossLearningModel(small_cnn(), recipe="paper", detach_after_epoch=3, pairs="all", margin=0.5)
    assert (custom.detach_after_epoch, custom.detach_after_fraction, custom.pairs, custom.margin) == (
        3,
        None,
        "all",
        0.5,
    )
    with pytest.raises(ValueError, match="recipe in"):
        kl.LossLearningModel(small_cnn(), recipe="fast")
    with pytest.raises(ValueError, match="at most one of detach_after_epoch and detach_after_fraction"):
        kl.LossLearningModel(small_cnn(), detach_after_epoch=2, detach_after_fraction=0.5)
    with pytest.raises(ValueError, match=r"backbone_gradient_scale in \[0, 1\]. Received: backbone_gradient_scale=2"):
        kl.LossLearningModel(small_cnn(), backbone_gradient_scale=2)
    with pytest.raises(ValueError, match="pairs in"):
        kl.LossLearningModel(small_cnn(), pairs="random")
    with pytest.raises(ValueError, match="loss_weight_warmup_epochs >= 0"):
        kl.LossLearningModel(small_cnn(), loss_weight_warmup_epochs=-1)


def test_backbone_gradient_scale_scales_the_ranking_gradient():
    x, _ = classification_data(8)
    target = np.arange(8, dtype="float32")
    weights = small_cnn(batch_norm=False).get_weights()

    def backbone_gradient(scale):
        backbone = small_cnn(batch_norm=False)
        backbone.set_weights(weights)
        model = kl.LossLearningModel(
            backbone, head=kl.LossPredictionHead(units=4), backbone_gradient_scale=scale, recipe="paper"
        )
        model.head.set_weights([np.linspace(-0.3, 0.3, w.size).reshape(w.shape) for w in model.head.get_weights()])
        with tf.GradientTape() as tape:
            value = losses.loss_prediction_loss(model(x, training=True)["predicted_loss"], target)
        return [g.numpy() for g in tape.gradient(value, backbone.trainable_weights) if g is not None]

    full, quarter, none = backbone_gradient(1.0), backbone_gradient(0.25), backbone_gradient(0.0)
    assert sum(float(np.abs(g).sum()) for g in full) > 0
    for a, b in zip(full, quarter):
        np.testing.assert_allclose(b, 0.25 * a, rtol=1e-4, atol=1e-7)
    assert none == [] or all(float(np.abs(g).sum()) == 0 for g in none)


class RecordSchedule(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.gates, self.scales = {}, {}

    def on_epoch_end(self, epoch, logs=None):
        self.gates[epoch] = float(self.model.head_detached.numpy())
        self.scales[epoch] = float(self.model.loss_weight_scale.numpy())


def test_detach_after_fraction_of_each_fit_and_loss_weight_warmup():
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn(), recipe="paper", loss_weight_warmup_epochs=4)
    model.compile(keras.optimizers.SGD(0.05), sparse_ce())
    record = RecordSchedule()
    model.fit(x, y, batch_size=16, epochs=5, verbose=0, callbacks=[record])
    assert record.gates == {0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}  # round(0.6 * 5) = 3
    assert record.scales == {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0}
    record = RecordSchedule()
    model.fit(x, y, batch_size=16, epochs=10, verbose=0, callbacks=[record])  # a new fit: its own 60 %
    assert [epoch for epoch, gate in record.gates.items() if gate] == [6, 7, 8, 9]


def test_warmup_weights_the_ranking_term_in_the_logged_loss():
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn(), loss_weight=2.0, loss_weight_warmup_epochs=4)
    model.compile(keras.optimizers.SGD(0.0), sparse_ce())  # no update: the epoch-0 losses are reproducible
    logs = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    expected = logs["task_loss"][0] + 2.0 * 0.25 * logs["loss_prediction_loss"][0]
    assert logs["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_normalized_head_is_invariant_to_feature_scale():
    head = kl.LossPredictionHead(units=8, normalize=True)
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(6, 4, 4, 5)).astype("float32"), rng.normal(size=(6, 3)).astype("float32")]
    # LayerNormalization's epsilon (1e-3) only matters for tiny variances: compare two large scales.
    base = head([100.0 * features[0], 30.0 * features[1]]).numpy()
    scaled = head([1000.0 * features[0], 300.0 * features[1]]).numpy()
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-4)
    plain = kl.LossPredictionHead(units=8, normalize=False)
    assert not np.allclose(plain([100.0 * features[0], features[1]]).numpy(), plain(features).numpy(), atol=1e-3)
    assert kl.LossPredictionHead.from_config(head.get_config()).normalize


def test_new_options_survive_save_and_a_config_without_a_recipe_gets_the_default(tmp_path):
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn(), recipe="paper", pairs="all", backbone_gradient_scale=0.5)
    model.compile(keras.optimizers.Adam(1e-2), sparse_ce())
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert (loaded.recipe, loaded.pairs, loaded.backbone_gradient_scale, loaded.detach_after_fraction) == (
        "paper",
        "all",
        0.5,
        0.6,
    )
    np.testing.assert_allclose(loaded.predict_loss(x), model.predict_loss(x), rtol=1e-6)
    config = model.get_config()
    for key in ("recipe", "pairs", "backbone_gradient_scale", "detach_after_fraction", "loss_weight_warmup_epochs"):
        config.pop(key)
    config["normalize_head_inputs"] = None
    old = kl.LossLearningModel.from_config(config)  # no pre-recipe mapping to "paper" any more (CHANGELOG.md)
    assert (old.recipe, old.pairs, old.backbone_gradient_scale, old.detach_after_fraction) == (
        "recommended",
        "all",
        0.0,
        None,
    )


# ------------------------------------------------------------------ reliability
class BatchSizeRecorder(kl.LossLearningModel):
    def train_step(self, data):
        size = tf.cast(tf.shape(keras.utils.unpack_x_y_sample_weight(data)[0])[0], "float32")
        self.smallest.assign(tf.minimum(self.smallest, size))
        self.seen.assign_add(size)
        return super().train_step(data)


@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_on_arrays_never_trains_on_a_batch_of_one(shuffle):
    x, y = classification_data(33)
    weights = np.random.default_rng(0).random(33).astype("float32")
    model = BatchSizeRecorder(small_cnn())
    model.smallest = tf.Variable(1e9, trainable=False)
    model.seen = tf.Variable(0.0, trainable=False)
    model.compile("sgd", sparse_ce())
    history = model.fit(x, y, sample_weight=weights, batch_size=16, epochs=2, shuffle=shuffle, verbose=0)
    assert float(model.smallest.numpy()) == 16.0  # 33 = 16 + 17, not 16 + 16 + 1
    assert float(model.seen.numpy()) == 66.0  # every item once per epoch
    assert all(np.isfinite(values).all() for values in history.history.values())


def test_fit_of_a_resnet_on_129_items_with_batch_128_does_not_crash(tmp_path):
    # The outside trial's crash: oneDNN's conv backprop aborted the process on a one-item batch.
    script = tmp_path / "crash.py"
    script.write_text(
        textwrap.dedent(
            """
            import os
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
            import numpy as np, keras, keras_lossal as kl
            x = np.random.default_rng(0).random((129, 28, 28, 1)).astype("float32")
            model = kl.LossLearningModel(kl.backbones.resnet18_cifar((28, 28, 1), width=4))
            model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = model.fit(x, np.arange(129) % 10, batch_size=128, epochs=1, verbose=0)
            print(history.history["loss"][0])
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.isfinite(float(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("where", ["inputs", "targets"])
def test_training_on_non_finite_data_stops_with_a_clear_error(where):
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn())
    model.compile("sgd", sparse_ce())
    before = [w.copy() for w in model.get_weights()]
    if where == "inputs":
        x[5, 2, 3, 0] = np.nan
    else:
        model = kl.LossLearningModel(small_cnn(num_classes=1))
        model.compile("sgd", "mse")
        before = [w.copy() for w in model.get_weights()]
        y = y.astype("float32")
        y[7] = np.inf
    with pytest.raises(ValueError, match="Expected finite training data"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_out_of_range_labels_are_a_clear_error_before_any_weight_changes():
    x, y = classification_data(32)
    model = kl.LossLearningModel(small_cnn())
    model.compile("sgd", sparse_ce())
    before = [w.copy() for w in model.get_weights()]
    y = y.copy()
    y[[4, 9]] = [5, -1]
    num_classes = model.backbone.outputs[0].shape[-1]
    y[4] = num_classes + 2
    with pytest.raises(
        ValueError, match=rf"Expected class labels in \[0, {num_classes}\).*values \[-1, {num_classes + 2}\]"
    ):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # A tf.data pipeline is checked by the loss itself, in the batch that holds the label: one line, not a graph error.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(ValueError, match=rf"Expected class labels in \[0, {num_classes}\)\. Received: a label"):
        model.fit(dataset, epochs=1, verbose=0)
