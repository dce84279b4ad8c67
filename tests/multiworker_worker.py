"""One process of `tests/test_multiworker.py`, which starts it: trains under `tf.distribute`, writes what it got.

    python multiworker_worker.py worker OUT     # TF_CONFIG names the cluster and this worker's index
    python multiworker_worker.py reference OUT  # one process over two logical CPUs

A worker is one replica of a two-worker `MultiWorkerMirroredStrategy`. It trains
a `LossLearningModel` of each recipe with `fit` for one epoch (two steps of a
global batch of 16), then runs the `train` and active-learning-loop recipes of
`docs/scaling.md` for several workers. The reference does the same under a
`MirroredStrategy` with two replicas in one process (the recipes for one host),
and computes the `fit` update by hand on one device. Each process writes
`OUT/<name>.npz` (weights) and `OUT/<name>.json` (logs).
"""

import contextlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lossal as kl  # noqa: E402
from keras_lossal import acquisition, experiment, training  # noqa: E402
from keras_lossal import data as data_lib  # noqa: E402

RECIPES = ("paper", "recommended")
REPLICAS = 2
NUM_ITEMS, GLOBAL_BATCH, LEARNING_RATE, SEED = 32, 16, 0.1, 0
SMALL_SPEC = experiment.ModelSpec(backbone="small_cnn", width=4, learning_rate=0.05)


def images(num_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose first row's brightness follows the class, so the task is learnable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, num_items)
    x = rng.integers(0, 160, (num_items, 8, 8, 1))
    x[:, 0] += 40 * y[:, None, None]
    return x.astype("uint8"), y


def pipeline(x, y):
    """The batches of the loop and `train` without their shuffle (Keras' build under a strategy takes one pass)."""
    preprocessing = data_lib.input_preprocessing(x)[0]
    return data_lib.training_pipeline(x, y, preprocessing, batch_size=GLOBAL_BATCH, shuffle=False)


def build(recipe: str) -> kl.LossLearningModel:
    keras.utils.set_random_seed(SEED)
    backbone = experiment.small_cnn((8, 8, 1), 3, width=4)  # BatchNormalization included, as in the built-ins
    model = kl.LossLearningModel(backbone, head=kl.LossPredictionHead(units=4), recipe=recipe)
    model.compile(
        keras.optimizers.SGD(LEARNING_RATE),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def named(prefix: str, values) -> dict[str, np.ndarray]:
    return {f"{prefix}.{i}": np.asarray(value) for i, value in enumerate(values)}


def replica_items(strategy) -> list[list[list[int]]]:
    """Per step, the item numbers each local replica gets from a dataset batched by the global batch."""
    numbers = tf.data.Dataset.range(NUM_ITEMS).batch(GLOBAL_BATCH)
    return [
        [np.asarray(part).tolist() for part in strategy.experimental_local_results(batch)]
        for batch in strategy.experimental_distribute_dataset(numbers)
    ]


def fit_recipes(strategy) -> tuple[dict, dict]:
    """Each recipe's model trained one epoch with `fit` under `strategy`: its weights and logs (and `replica_items`)."""
    x, y = images(NUM_ITEMS)
    arrays, logs = {}, {"replica_items": replica_items(strategy)}
    for recipe in RECIPES:
        with strategy.scope():
            model = build(recipe)
        arrays.update(named(f"{recipe}.initial", model.trainable_weights))
        logs[recipe] = model.fit(pipeline(x, y), epochs=1, shuffle=False, verbose=0).history
        arrays.update(named(f"{recipe}.trainable", model.trainable_weights))
        for replica in range(len(strategy.extended.worker_devices)):
            copies = [
                strategy.experimental_local_results(weight.value)[replica] for weight in model.non_trainable_weights
            ]
            arrays.update(named(f"{recipe}.non_trainable.{replica}", copies))
    return arrays, logs


def train_recipe(strategy, out: str, name: str) -> tuple[dict, dict]:
    """`keras_lossal.training.train` (what `lossal train` runs) under `strategy`, into a directory of this process."""
    x, y = images(NUM_ITEMS, seed=1)
    source, out_dir = os.path.join(out, f"data_{name}.npz"), os.path.join(out, f"train_{name}")
    np.savez(source, x=x, y=y)
    with strategy.scope():
        result = training.train(source, out_dir, SMALL_SPEC, epochs=1, batch_size=8, verbose=0)
    saved = keras.saving.load_model(result.path(training.MODEL_FILE))
    logs = {"history": result.history, "validation": result.validation}
    return named("train.trainable", saved.trainable_weights), logs


def loop_recipe(strategy, out: str, name: str, run_in_scope: bool) -> tuple[dict, dict]:
    """Two cycles of `ActiveLearningLoop` whose models are built in the scope, with synchronized BatchNormalization.

    On several workers the loop runs outside the scope (each worker scores the
    whole subset on its own); on one host it may run inside (scoring is split
    over the local replicas).
    """
    build_model = experiment.make_model_factory(SMALL_SPEC, (8, 8, 1), 3, with_head=True)

    def factory():
        with strategy.scope():
            model = build_model()
        for layer in model.backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True  # one set of statistics for all replicas, so every worker scores alike
        return model

    loop = kl.ActiveLearningLoop(
        factory, images(96, seed=2), images(24, seed=3), "learning_loss",
        kl.LoopConfig(initial_size=16, query_size=8, cycles=2, epochs=1, batch_size=8, verbose=0),
        work_dir=os.path.join(out, f"loop_{name}"),
    )  # fmt: skip
    with strategy.scope() if run_in_scope else contextlib.nullcontext():
        result = loop.run()
    return named("loop.weights", result.model.get_weights()), {"labeled": result.labeled_indices}


def select_in_scope(strategy) -> dict:
    """`learning_loss` and `coreset` picks from a model built and scored inside the strategy's scope."""
    with strategy.scope():
        model = build("recommended")
        pool = images(40, seed=4)[0].astype("float32") / 255.0
        picks = {}
        for name in ("learning_loss", "coreset"):
            selection = acquisition.get(name).select(model, pool, k=5, seed=0, batch_size=8)
            picks[name] = {"num_scored": selection.num_scored, "indices": selection.indices.tolist()}
    return picks


def run_recipes(strategy, out: str, name: str, run_in_scope: bool) -> tuple[dict, dict]:
    train_arrays, train_logs = train_recipe(strategy, out, name)
    loop_arrays, loop_logs = loop_recipe(strategy, out, name, run_in_scope)
    return {**train_arrays, **loop_arrays}, {"train_recipe": train_logs, "loop_recipe": loop_logs}


def run_worker(out: str) -> str:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    name = f"worker_{json.loads(os.environ['TF_CONFIG'])['task']['index']}"
    arrays, logs = fit_recipes(strategy)
    recipe_arrays, recipe_logs = run_recipes(strategy, out, name, run_in_scope=False)
    logs["select_in_scope"] = select_in_scope(strategy)
    return write(out, name, {**arrays, **recipe_arrays}, {**logs, **recipe_logs})


def update_by_hand(recipe: str, pair_across_replicas: bool = False) -> list[np.ndarray]:
    """The trainable weights after the epoch of `fit_recipes`, by SGD on one device, replicas played by halves.

    Each global batch is split into two consecutive halves, one per replica; each
    half goes through the model on its own (BatchNormalization uses the half's
    statistics) and has its own joint loss, the ranking loss pairing items within
    the half; the step follows the mean of the two. With `pair_across_replicas`
    the ranking loss pairs the whole global batch instead.
    """
    x, y = images(NUM_ITEMS)
    model = build(recipe)
    halves = [slice(0, GLOBAL_BATCH // REPLICAS), slice(GLOBAL_BATCH // REPLICAS, None)]
    for inputs, labels in pipeline(x, y):
        with tf.GradientTape() as tape:
            outputs = [model(inputs[half], training=True) for half in halves]
            if pair_across_replicas:
                merged = {key: tf.concat([output[key] for output in outputs], axis=0) for key in outputs[0]}
                loss = model.joint_loss(labels, merged).total
            else:
                losses = [model.joint_loss(labels[half], output).total for half, output in zip(halves, outputs)]
                loss = tf.add_n(losses) / REPLICAS
        gradients = tape.gradient(loss, model.trainable_weights)
        for weight, gradient in zip(model.trainable_weights, gradients):
            weight.assign(weight - LEARNING_RATE * gradient)
    return [np.asarray(weight) for weight in model.trainable_weights]


def run_reference(out: str) -> str:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{replica}" for replica in range(REPLICAS)])
    arrays, logs = fit_recipes(strategy)
    for recipe in RECIPES:
        arrays.update(named(f"{recipe}.by_hand", update_by_hand(recipe)))
        arrays.update(named(f"{recipe}.paired_across_replicas", update_by_hand(recipe, pair_across_replicas=True)))
    recipe_arrays, recipe_logs = run_recipes(strategy, out, "reference", run_in_scope=True)
    logs["select_in_scope"] = select_in_scope(strategy)
    return write(out, "reference", {**arrays, **recipe_arrays}, {**logs, **recipe_logs})


def write(out: str, name: str, arrays: dict, logs: dict) -> str:
    np.savez(os.path.join(out, f"{name}.npz"), **arrays)
    with open(os.path.join(out, f"{name}.json"), "w") as stream:
        json.dump(logs, stream, default=lambda value: value.item())  # NumPy scalars
    return name


if __name__ == "__main__":
    mode, out_dir = sys.argv[1:3]
    print({"worker": run_worker, "reference": run_reference}[mode](out_dir), "done", flush=True)
