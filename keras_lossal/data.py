"""Datasets for active-learning experiments and their `tf.data` input pipelines.

Images stay raw (uint8, channels last) in memory so the loop can index any
labeled subset cheaply; `ImagePreprocessing` turns them into model input inside
the pipelines, the same object that export records for serving.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from typing import Any

import numpy as np
import tensorflow as tf

from keras_lossal.preprocessing import ImagePreprocessing, infer_preprocessing

__all__ = [
    "ArrayDataset",
    "DEFAULT_FASHION_MNIST_DIR",
    "as_images",
    "as_labels",
    "augment_flip_and_crop",
    "batch_without_singletons",
    "evaluation_pipeline",
    "from_arrays",
    "load",
    "load_fashion_mnist",
    "load_tfds",
    "read_idx",
    "training_pipeline",
]

# Where Debian's package `dataset-fashion-mnist` installs the IDX files (`dpkg -L dataset-fashion-mnist`).
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Per-channel statistics of the training sets, on pixels scaled to [0, 1].
NORMALISATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclasses.dataclass
class ArrayDataset:
    """Raw train/test images and integer labels, with the preprocessing that fits them.

    Args:
        x_train: raw training images `(N, H, W, C)`, usually uint8.
        y_train: integer labels `(N,)`.
        x_test: raw test images.
        y_test: integer test labels.
        preprocessing: how raw images become model input.
        num_classes: number of classes.
        name: a label for logs and results.
        preprocessing_inferred: whether `preprocessing` was inferred from the images' dtype
            (the summary then says what it does).

    Example:

    >>> import numpy as np
    >>> data = from_arrays(np.zeros((4, 8, 8, 1), np.uint8), np.arange(4) % 2,
    ...                    np.zeros((2, 8, 8, 1), np.uint8), np.array([0, 1]))
    >>> data.num_classes, data.preprocessing.input_shape
    (2, (8, 8, 1))
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    preprocessing: ImagePreprocessing
    num_classes: int
    name: str = "arrays"
    preprocessing_inferred: bool = False

    def summary(self) -> str:
        text = (
            f"{self.name}: {len(self.x_train)} train, {len(self.x_test)} test, "
            f"input {self.preprocessing.input_shape}, {self.num_classes} classes"
        )
        if self.preprocessing_inferred:
            text += f"; preprocessing inferred from {self.x_train.dtype} images: {self.preprocessing.describe()}"
        return text


def as_images(x: Any, name: str) -> np.ndarray:
    """`x` as an `(N, H, W, C)` array; grayscale `(N, H, W)` gains a channel axis."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"Expected `{name}` of shape (N, H, W) or (N, H, W, C). Received shape {x.shape}")
    return x


def as_labels(y: Any, count: int, name: str, num_classes: int | None = None) -> np.ndarray:
    """`y` as int64 class labels `(count,)`, each in `[0, num_classes)`; float labels are refused, never truncated.

    Example:

    >>> as_labels([0, 2, 1], 3, "y_train", num_classes=3).tolist()
    [0, 2, 1]
    """
    y = np.asarray(y).reshape(-1)
    if len(y) != count:
        raise ValueError(f"Expected `{name}` to have {count} labels (one per image). Received {len(y)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"Expected integer class labels in `{name}`. Received dtype {y.dtype}")
    y = y.astype(np.int64)
    upper = np.inf if num_classes is None else num_classes
    outside = np.flatnonzero((y < 0) | (y >= upper))
    if len(outside):
        bound = "num_classes" if num_classes is None else num_classes
        raise ValueError(
            f"Expected class labels in [0, {bound}) in `{name}`. Received: label {y[outside[0]]} at index "
            f"{outside[0]} ({len(outside)} label(s) outside)"
        )
    return y


def from_arrays(
    x_train,
    y_train,
    x_test,
    y_test,
    preprocessing: ImagePreprocessing | None = None,
    num_classes: int | None = None,
    name: str = "arrays",
) -> ArrayDataset:
    """Wraps NumPy images and labels as an `ArrayDataset`.

    Args:
        x_train: training images `(N, H, W[, C])`.
        y_train: integer labels `(N,)`.
        x_test: test images.
        y_test: integer test labels.
        preprocessing: defaults to `infer_preprocessing(x_train)`: uint8 pixels
            divided by 255, float inputs unchanged; the summary says which.
        num_classes: defaults to `max(label) + 1`; labels must lie in `[0, num_classes)`.
        name: a label for logs and results.

    Example:

    >>> import numpy as np
    >>> from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1, 2], np.zeros((1, 4, 4), np.uint8), [1]).x_train.shape
    (3, 4, 4, 1)
    """
    x_train, x_test = as_images(x_train, "x_train"), as_images(x_test, "x_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"Expected train and test images of one shape. Received {x_train.shape[1:]} and {x_test.shape[1:]}"
        )
    y_train = as_labels(y_train, len(x_train), "y_train")
    y_test = as_labels(y_test, len(x_test), "y_test")
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    as_labels(y_train, len(x_train), "y_train", num_classes)
    as_labels(y_test, len(x_test), "y_test", num_classes)
    inferred = preprocessing is None
    if inferred:
        if x_test.dtype != x_train.dtype:
            raise ValueError(
                "Expected train and test images of one dtype to infer their preprocessing (or pass preprocessing=). "
                f"Received {x_train.dtype} and {x_test.dtype}"
            )
        preprocessing = infer_preprocessing(x_train, "x_train")
    return ArrayDataset(x_train, y_train, x_test, y_test, preprocessing, int(num_classes), name, inferred)


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or not, into a NumPy array.

    Example:

    >>> import tempfile, os, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> _ = open(path, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(path).tolist()
    [7, 8, 9]
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"Expected an unsigned-byte IDX file (magic 0x0000080N). Received {path!r}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"IDX file {path!r} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def _find_idx(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    return None


def load_fashion_mnist(data_dir: str | None = None) -> ArrayDataset:
    """Fashion-MNIST (60k train, 10k test, 28x28x1) from local IDX files.

    Args:
        data_dir: directory holding `train-images-idx3-ubyte[.gz]` and the other
            three files; defaults to `$LOSSAL_FASHION_MNIST_DIR` or
            `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`).

    Example:

    >>> dataset = load_fashion_mnist()  # doctest: +SKIP
    >>> dataset.x_train.shape, dataset.preprocessing.mean  # doctest: +SKIP
    ((60000, 28, 28, 1), (0.286,))
    """
    directory = data_dir or os.environ.get("LOSSAL_FASHION_MNIST_DIR") or DEFAULT_FASHION_MNIST_DIR
    paths = {key: _find_idx(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[key] + ".gz" for key, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found in {directory!r} (missing: {', '.join(missing)}). "
            "Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files go to "
            f"{DEFAULT_FASHION_MNIST_DIR}), or download the four .gz files from "
            "https://github.com/zalandoresearch/fashion-mnist (data/fashion) and pass --data-dir DIR "
            "(or set LOSSAL_FASHION_MNIST_DIR)."
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    mean, std = NORMALISATION["fashion_mnist"]
    return from_arrays(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        preprocessing=ImagePreprocessing(28, 28, 1, mean=mean, std=std),
        num_classes=10,
        name="fashion_mnist",
    )


def load_tfds(
    name: str,
    data_dir: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    image_key: str = "image",
    label_key: str = "label",
) -> ArrayDataset:
    """Loads an image-classification dataset from TensorFlow Datasets into memory.

    Args:
        name: TFDS name, e.g. `"cifar10"`.
        data_dir: TFDS data directory (default: TFDS' own).
        train_split: split used as the pool to label.
        test_split: split used for evaluation.
        image_key: feature holding the image.
        label_key: feature holding the integer label.

    Example:

    >>> dataset = load_tfds("cifar10")  # doctest: +SKIP
    >>> dataset.x_train.shape  # doctest: +SKIP
    (50000, 32, 32, 3)
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("Loading TFDS datasets needs `pip install tensorflow-datasets`.") from error
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
        train, test = (
            _tfds_arrays(builder.as_dataset(split=split), (image_key, label_key)) for split in (train_split, test_split)
        )
    except Exception as error:
        raise RuntimeError(
            f"Could not load TFDS dataset {name!r} (splits {train_split!r}/{test_split!r}): {error}. "
            "TFDS downloads on first use, which needs internet; offline, prepare it elsewhere and pass "
            "--data-dir, or use `fashion_mnist` from local IDX files."
        ) from error
    info = builder.info
    num_classes = info.features[label_key].num_classes if label_key in info.features else None
    preprocessing = None
    x_train = as_images(train[image_key], "x_train")
    if name in NORMALISATION:
        mean, std = NORMALISATION[name]
        height, width, channels = x_train.shape[1:]
        preprocessing = ImagePreprocessing(int(height), int(width), int(channels), mean=mean, std=std)
    return from_arrays(
        x_train,
        train[label_key],
        test[image_key],
        test[label_key],
        preprocessing=preprocessing,
        num_classes=num_classes,
        name=name,
    )


def _tfds_arrays(dataset: tf.data.Dataset, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    # Chunked, not `batch_size=-1`: that one-shot batch aborts the process on generator-backed datasets.
    chunks: dict[str, list] = {key: [] for key in keys}
    for batch in dataset.batch(4096).as_numpy_iterator():
        for key in keys:
            chunks[key].append(batch[key])
    if not chunks[keys[0]]:
        raise ValueError("Expected a non-empty split.")
    return {key: np.concatenate(values) for key, values in chunks.items()}


def load(name: str, data_dir: str | None = None) -> ArrayDataset:
    """Loads a dataset by name: `fashion_mnist` from local IDX files, anything else through TFDS.

    Args:
        name: `"fashion_mnist"` (local IDX), or a TFDS name such as `"cifar10"`;
            prefix with `tfds:` to force TFDS (`"tfds:fashion_mnist"`).
        data_dir: IDX directory for Fashion-MNIST, TFDS data directory otherwise.

    Example:

    >>> load("fashion_mnist").summary()  # doctest: +SKIP
    'fashion_mnist: 60000 train, 10000 test, input (28, 28, 1), 10 classes'
    """
    if name.startswith("tfds:"):
        return load_tfds(name[len("tfds:") :], data_dir=data_dir)
    if name in ("fashion_mnist", "fashion-mnist"):
        return load_fashion_mnist(data_dir)
    return load_tfds(name, data_dir=data_dir)


def augment_flip_and_crop(image, seed, padding: int = 4):
    """The paper's CIFAR augmentation: random horizontal flip, then a random crop after zero padding.

    Stateless, so a pipeline is reproducible given its seeds.

    Args:
        image: one raw image `(H, W, C)`.
        seed: int tensor of shape `(2,)`.
        padding: pixels of zero padding on each side before cropping back.

    Example:

    >>> import tensorflow as tf
    >>> augment_flip_and_crop(tf.ones((8, 8, 3), tf.uint8), tf.constant([1, 2])).shape
    TensorShape([8, 8, 3])
    """
    seed = tf.cast(seed, tf.int64)
    flip_seed = tf.stack([seed[0], seed[1] * 2])
    crop_seed = tf.stack([seed[0], seed[1] * 2 + 1])
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, shape, crop_seed)


def training_pipeline(
    x,
    y,
    preprocessing: ImagePreprocessing,
    batch_size: int = 128,
    augment: bool = False,
    shuffle: bool = True,
    seed: int | None = None,
) -> tf.data.Dataset:
    """A `tf.data` pipeline of `(model input, label)` batches for `fit`.

    Shuffles with a fixed seed (reshuffled every epoch, reproducibly), applies
    the paper's flip-and-crop augmentation to raw images when `augment`, then
    normalises whole batches with `preprocessing`.

    Args:
        x: raw images `(N, H, W, C)`.
        y: labels `(N,)`.
        preprocessing: the `ImagePreprocessing` of the run.
        batch_size: batch size.
        augment: apply random flip + 4-pixel pad-crop.
        shuffle: shuffle every epoch.
        seed: seed for the shuffle order and the augmentation.

    Example:

    >>> import numpy as np
    >>> from keras_lossal.preprocessing import ImagePreprocessing
    >>> ds = training_pipeline(np.zeros((5, 4, 4, 1), np.uint8), np.arange(5), ImagePreprocessing(4, 4, 1), 2)
    >>> [int(b[0].shape[0]) for b in ds]  # never a batch of one
    [2, 3]
    """
    seed = 0 if seed is None else int(seed)
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x), np.asarray(y)))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augment:
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((dataset, randoms.batch(2)))
        dataset = dataset.map(
            lambda pair, noise: (augment_flip_and_crop(pair[0], noise), pair[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    dataset = batch_without_singletons(dataset, len(x), batch_size)
    dataset = dataset.map(lambda images, labels: (preprocessing(images), labels), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def batch_without_singletons(dataset: tf.data.Dataset, num_items: int, batch_size: int) -> tf.data.Dataset:
    """`dataset.batch(batch_size)`, except that a one-item last batch joins the batch before it.

    A training batch of one has no ranking pair, and on some CPUs a one-item
    conv backprop crashes the process inside oneDNN; so for `num_items % batch_size
    == 1` the last batch holds `batch_size + 1` items. Every item is still seen
    once per epoch, in the dataset's order (one full-size batch is formed per
    epoch to split it, so use it for data that fits in memory).

    Example:

    >>> ds = batch_without_singletons(tf.data.Dataset.range(9), 9, 4)
    >>> [int(batch.shape[0]) for batch in ds]
    [4, 5]
    """
    if num_items <= 1 or num_items % batch_size != 1:
        return dataset.batch(batch_size)
    sizes = np.full(num_items // batch_size, batch_size, np.int64)
    sizes[-1] += 1
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    def split(*tensors):
        def take(start, size):
            parts = tuple(tensor[start : start + size] for tensor in tensors)
            return parts if len(parts) > 1 else parts[0]

        return tf.data.Dataset.from_tensor_slices((starts, sizes)).map(take)

    # flat_map hides the length; state it so Keras knows the steps per epoch.
    return dataset.batch(num_items).flat_map(split).apply(tf.data.experimental.assert_cardinality(len(sizes)))


def evaluation_pipeline(x, y, preprocessing: ImagePreprocessing, batch_size: int = 256) -> tf.data.Dataset:
    """A `tf.data` pipeline of normalised `(model input, label)` batches, in order, no augmentation.

    Example:

    >>> import numpy as np
    >>> from keras_lossal.preprocessing import ImagePreprocessing
    >>> ds = evaluation_pipeline(np.zeros((3, 4, 4, 1), np.uint8), np.arange(3), ImagePreprocessing(4, 4, 1))
    >>> next(iter(ds))[1].numpy().tolist()
    [0, 1, 2]
    """
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(x), np.asarray(y))).batch(batch_size)
    dataset = dataset.map(lambda images, labels: (preprocessing(images), labels), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)
