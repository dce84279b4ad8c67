"""Scoring throughput against the floor: a bare compiled forward loop over the same model.

For each model, in one run and side by side, every method scores the same
in-memory pool and picks the top k by predicted loss:

- `floor`: a `tf.function` forward of the same `LossLearningModel` called on
  `--batch-size`-item slices of the NumPy pool, the outputs kept, and one host
  `argpartition` at the end. Nothing can score faster than this without
  changing the model.
- `select`: `acquisition.get("learning_loss").select(model, pool, k, batch_size)`.
- `select (tf.data pool)`: the same on `tf.data.Dataset.from_tensor_slices(pool)`.
- `LossLearningModel.predict` + argpartition: Keras' own loop, for reference.

A round runs every method once over the whole pool, in a rotating order so
drifting background load hits all alike; after a warm-up (tracing), the
headline per method is the median over rounds of floor time / method time
(a throughput ratio: 1.0 is the floor's speed). Process CPU time is reported
beside wall time. The picks of every method are checked against the floor's.

Models (issue 13): a small CNN on 16x16x1 images, 30,000 items; and
`resnet18_cifar` width 8 on 28x28x1, 10,000 items. Target: select >= 0.9x.

Run: `python benchmarks/scoring.py` (about 5 minutes on 2 cores), on a quiet machine.
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_lossal as kl  # noqa: E402
from keras_lossal import acquisition  # noqa: E402


def small_cnn(input_shape=(16, 16, 1)):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="small_cnn")


MODELS = {
    "small_cnn": (lambda: small_cnn((16, 16, 1)), (16, 16, 1), 30_000),
    "resnet18_cifar_w8": (
        lambda: kl.backbones.resnet18_cifar(input_shape=(28, 28, 1), num_classes=10, width=8),
        (28, 28, 1),
        10_000,
    ),
}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-scores, k - 1)[:k]


def runners(model, batch_size: int, k: int) -> dict:
    forward = tf.function(lambda x: model(x, training=False)["predicted_loss"])
    strategy = acquisition.get("learning_loss")

    def floor(pool):
        parts = [forward(pool[start : start + batch_size]) for start in range(0, len(pool), batch_size)]
        return top_k(np.concatenate([part.numpy().reshape(-1) for part in parts]), k)

    def predict(pool):
        return top_k(model.predict(pool, batch_size=batch_size, verbose=0)["predicted_loss"].reshape(-1), k)

    return {
        "floor": floor,
        "select": lambda pool: strategy.select(model, pool, k=k, batch_size=batch_size).indices,
        "select (tf.data pool)": lambda pool: (
            strategy.select(model, tf.data.Dataset.from_tensor_slices(pool), k=k, batch_size=batch_size).indices
        ),
        "LossLearningModel.predict": predict,
    }


def measure(name: str, args) -> dict:
    build, input_shape, items = MODELS[name]
    keras.utils.set_random_seed(0)
    model = kl.LossLearningModel(build())
    pool = np.random.default_rng(0).random((items, *input_shape), dtype=np.float32)
    methods = runners(model, args.batch_size, args.k)
    names = list(methods)
    picks = {}
    for method in names:  # warm-up: tracing (the floor's last partial slice traces a second shape)
        picks[method] = set(methods[method](pool).tolist())
    for method in names[1:]:
        overlap = len(picks[method] & picks["floor"]) / args.k
        assert overlap >= 0.999, f"{method} picks differ from the floor's: overlap {overlap:.4f}"
    wall = {method: [] for method in names}
    cpu = {method: [] for method in names}
    for round_number in range(args.rounds):
        shift = round_number % len(names)
        for method in names[shift:] + names[:shift]:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            methods[method](pool)
            wall[method].append(time.perf_counter() - wall_start)
            cpu[method].append(time.process_time() - cpu_start)
    return {"items": items, "input_shape": input_shape, "wall": wall, "cpu": cpu}


def report(name: str, result: dict, rounds: int) -> None:
    wall, cpu, items = result["wall"], result["cpu"], result["items"]
    print(f"{name}: {items} items of {result['input_shape']}, median of {rounds} interleaved rounds")
    for method in wall:
        ratios = [floor / mine for floor, mine in zip(wall["floor"], wall[method])]
        cpu_ratio = statistics.median(f / m for f, m in zip(cpu["floor"], cpu[method]))
        median = statistics.median(wall[method])
        print(
            f"    {method:27s} {items / median:8.0f} items/s  x floor {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f})  CPU-time x floor {cpu_ratio:.3f}"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, tensorflow {tf.__version__}, "
        f"keras {keras.__version__}; batch_size={args.batch_size} k={args.k}"
    )
    for name in args.models.split(","):
        report(name, measure(name, args), args.rounds)
    print("target: select >= 0.9x floor")


if __name__ == "__main__":
    main()
