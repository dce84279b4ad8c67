"""Your own labeled images and your own model: `lossal train`, then an active-learning experiment.

Most teams start from a folder of images somebody already sorted into one subfolder per class (the
layout `keras.utils.image_dataset_from_directory` reads). This example writes such a folder itself,
from Fashion-MNIST when Debian's `dataset-fashion-mnist` is installed and from synthetic stripes
otherwise, so it runs offline, then:

1. trains a model with a loss-prediction head on the folder (`keras_lossal.training.train`, what
   `lossal train --data FOLDER --out OUT` runs) with a backbone of our own, given as a factory;
2. looks at what it wrote: the `model.keras` that `lossal export` publishes, the preprocessing and
   the class names;
3. asks whether learning loss would pick better images than random on this data
   (`run_experiment`, what `PYTHONPATH=examples lossal run --dataset FOLDER --backbone
   own_data:my_backbone` runs), from the same initialisation for both arms. One seed on a few
   hundred images is a smoke test, not an answer: use five seeds or more and read the paired
   differences of `lossal report`.

Run: `python examples/own_data.py [--out own_data_out] [--per-class 60] [--epochs 8]` (a few
minutes on a laptop CPU with the defaults).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_lossal import data, experiment, results, training  # noqa: E402
from keras_lossal.loop import LoopConfig  # noqa: E402


# A backbone of your own is any functional Keras model that outputs logits. `train` and
# `run_experiment` call it with the data's input shape and the number of classes, once per run
# (and per cycle), after seeding Keras, so every arm of a seed starts from the same weights.
def my_backbone(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="block1")(inputs)
    x = keras.layers.MaxPooling2D(name="stage1")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="block2")(x)
    x = keras.layers.MaxPooling2D(name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="my_backbone")


# The folder: one subfolder per class, PNG files inside. Your own data would already look like this.
def write_image_folder(root: str, per_class: int, seed: int = 0) -> str:
    images, labels, names = _source_images(per_class, seed)
    for name in names:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        path = os.path.join(root, names[label], f"{index:05d}.png")
        tf.io.write_file(path, tf.io.encode_png(image))
    return root


def _source_images(per_class: int, seed: int):
    try:
        fashion = data.load_fashion_mnist()
    except FileNotFoundError:
        return _stripes(per_class, seed)
    rng = np.random.default_rng(seed)
    picks = np.concatenate(
        [rng.choice(np.flatnonzero(fashion.y_train == label), per_class, replace=False) for label in range(10)]
    )
    names = [name.replace("/", "-").replace(" ", "_") for name in data.FASHION_MNIST_CLASSES]  # folder names
    return fashion.x_train[picks], fashion.y_train[picks], names


def _stripes(per_class: int, seed: int):
    """28x28 grayscale stripes at one of four angles, with noise: a stand-in when Fashion-MNIST is absent."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), per_class)
    yy, xx = np.mgrid[0:28, 0:28] / 28
    angles = labels[:, None, None] * np.pi / 4
    waves = np.sin(12 * (np.cos(angles) * xx + np.sin(angles) * yy) + rng.uniform(0, 6, (len(labels), 1, 1)))
    pixels = np.clip(127 + 80 * waves + rng.normal(0, 40, waves.shape), 0, 255).astype(np.uint8)
    return pixels[..., None], labels, ["stripes_0", "stripes_45", "stripes_90", "stripes_135"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Train on your own folder of images, then compare acquisitions.")
    parser.add_argument("--out", default="own_data_out")
    parser.add_argument("--per-class", type=int, default=60, help="images written per class")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--no-experiment", action="store_true", help="only train")
    args = parser.parse_args(argv)
    folder = write_image_folder(os.path.join(args.out, "images"), args.per_class)

    # 1. Train. The spec names the backbone as "module:function"; a .keras file works too (its
    # weights are then the starting point). A tenth of every class is held out for validation.
    spec = experiment.ModelSpec(backbone="own_data:my_backbone", optimizer="adam", learning_rate=0.01)
    result = training.train(folder, os.path.join(args.out, "model"), spec, epochs=args.epochs, batch_size=32)
    print(f"validation accuracy {result.validation['accuracy']:.3f}, head's ranking accuracy "
          f"{result.validation['ranking_accuracy']:.3f}")  # fmt: skip

    # 2. What `lossal export` reads: the model, the preprocessing (uint8 pixels / 255) and the classes.
    for name in (training.MODEL_FILE, training.PREPROCESSING_FILE, training.CLASSES_FILE):
        print(f"  {result.path(name)}")
    print(f"  classes: {json.load(open(result.path(training.CLASSES_FILE)))}")
    outcome = {"training": result}

    # 3. Would learning loss pick better images than random here? The same folder becomes an active-
    # learning pool (a fifth of every class held out as the test set), both arms from one seed.
    if not args.no_experiment:
        dataset = data.load(folder, test_fraction=0.2)
        print(dataset.summary())
        pool = len(dataset.x_train)
        outcome["experiment"] = experiment.run_experiment(
            dataset, ["learning_loss", "random"], seeds=[0], out_dir=os.path.join(args.out, "experiment"),
            spec=spec,
            config=LoopConfig(initial_size=pool // 4, query_size=pool // 8, cycles=3, epochs=args.epochs, batch_size=32),
        )  # fmt: skip
        summary = results.summarise(results.load_experiment(os.path.join(args.out, "experiment")))
        print(results.format_table(summary))
    return outcome


if __name__ == "__main__":
    main()
