"""Writes the image folders of docs/labeling.md from Fashion-MNIST: labeled images by class, an unlabeled pool.

    python examples/labeling_folders.py --out data                  # coat, pullover, shirt: 8 labeled each, 240 in the pool
    python examples/labeling_folders.py --out data --classes coat,bag,sneaker --labeled-per-class 20 --pool 1000

It writes 28x28 grayscale PNGs named by their index in Fashion-MNIST's training split:

    data/labeled/coat/04420.png ...   the labeled images, one subfolder per class (`lossal manifest from-folders`)
    data/pool/00112.png ...           the unlabeled pool, drawn from the same classes, disjoint from the labeled
    pool_truth.csv                    beside `--out` (not in the document root): each pool image's true class

The truth file is for checking a round (the class a labeler should choose); the library never reads it.
The images come from the local IDX files (`--data-dir`, default Debian's `dataset-fashion-mnist`, which
`make fashion-mnist` installs); nothing is downloaded. The same `--seed` writes the same files.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import numpy as np
import tensorflow as tf

from keras_lossal import data

# The class names as folder names: lower case, '/' and spaces as '_' ("T-shirt/top" -> "t-shirt_top").
FOLDER_NAMES = tuple(name.lower().replace("/", "_").replace(" ", "_") for name in data.FASHION_MNIST_CLASSES)


def class_indices(names: list[str]) -> list[int]:
    """The Fashion-MNIST class index of each folder name; an unknown name is refused, naming the valid ones."""
    unknown = [name for name in names if name not in FOLDER_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"Expected distinct class names from {list(FOLDER_NAMES)}. Received: {names}")
    return [FOLDER_NAMES.index(name) for name in names]


def write_folders(
    out: str, classes: list[str], labeled_per_class: int, pool: int, seed: int = 0, data_dir: str | None = None
) -> dict:
    """Writes `out/labeled/<class>/*.png`, `out/pool/*.png` and `pool_truth.csv` beside `out`; returns the counts."""
    indices = class_indices(classes)
    dataset = data.load_fashion_mnist(data_dir)
    images, labels = dataset.x_train, dataset.y_train
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(np.isin(labels, indices))
    rng.shuffle(chosen)
    labeled = {index: chosen[labels[chosen] == index][:labeled_per_class] for index in indices}
    taken = np.concatenate(list(labeled.values()))
    if any(len(items) < labeled_per_class for items in labeled.values()):
        raise ValueError(f"Expected at most {min(map(len, labeled.values()))} labeled images per class")
    rest = chosen[~np.isin(chosen, taken)]
    if pool > len(rest):
        raise ValueError(f"Expected pool <= {len(rest)} (the other images of these classes). Received: pool={pool}")
    for index, items in labeled.items():
        for item in items:
            _write_png(os.path.join(out, "labeled", FOLDER_NAMES[index], f"{item:05d}.png"), images[item])
    truth = []
    for item in np.sort(rest[:pool]):
        _write_png(os.path.join(out, "pool", f"{item:05d}.png"), images[item])
        truth.append((f"pool/{item:05d}.png", FOLDER_NAMES[labels[item]]))
    truth_path = os.path.join(os.path.dirname(os.path.abspath(out)), "pool_truth.csv")
    with open(truth_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(truth)
    return {"labeled": {FOLDER_NAMES[index]: len(items) for index, items in labeled.items()}, "pool": len(truth)}


def _write_png(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(tf.io.encode_png(image).numpy())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data", help="the document root to write (default: data)")
    parser.add_argument("--classes", default="coat,pullover,shirt", help=f"comma-separated, from {list(FOLDER_NAMES)}")
    parser.add_argument("--labeled-per-class", type=int, default=8)
    parser.add_argument("--pool", type=int, default=240, help="unlabeled images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST's IDX files (default: Debian's package)")
    args = parser.parse_args(argv)
    try:
        counts = write_folders(
            args.out, args.classes.split(","), args.labeled_per_class, args.pool, args.seed, args.data_dir
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"labeling_folders.py: {error}", file=sys.stderr)
        return 2
    labeled = ", ".join(f"{name}: {count}" for name, count in counts["labeled"].items())
    print(
        f"wrote {args.out}/labeled ({labeled}) and {args.out}/pool ({counts['pool']} images); truth in pool_truth.csv"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
