"""Datasets for active-learning experiments and their `tf.data` input pipelines.

Inputs stay raw in memory so the loop can index any labeled subset cheaply; a
preprocessing object turns them into model input inside the pipelines. Images
(`(N, H, W, C)` uint8, channels last) get an `ImagePreprocessing`, the same
object that export records for serving; any other input (tabular features
`(N, F)`, 1-D signals `(N, T, C)`) gets `IdentityPreprocessing`: used as it
is, cast to float32. Which one applies:

- `preprocessing` given: that one (`"identity"` is `IdentityPreprocessing` of
  the inputs' item shape);
- otherwise rank 4 (or grayscale rank 3, which gains a channel axis) is images,
  their preprocessing inferred from the dtype, and rank 2 is features, used
  unchanged. A rank-3 signal needs `preprocessing="identity"`: a `(N, H, W)`
  array is a grayscale image set, as it always was.

Labeled images of your own: a folder of class subfolders or a labeled-set
manifest (`keras_lossal.labeling.manifest`), read by `labeled_images` / `load` with
triage's guards (`keras_lossal.files.read_file`, `keras_lossal.images.checked_image_size`):
an unreadable file (a FIFO, a symlink loop, a truncated or non-image file, one
over the size or pixel limits) is skipped and reported by name, or refused
with `strict=True`.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import os
import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from keras_lossal.contracts import REJECTS_FILE, check_integer
from keras_lossal.files import check_regular_file, read_file
from keras_lossal.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, checked_image_size
from keras_lossal.preprocessing import (  # IDENTITY, IdentityPreprocessing and preprocessing_from_config: public here too
    IDENTITY,
    IdentityPreprocessing,
    ImagePreprocessing,
    infer_preprocessing,
    preprocessing_from_config,
)

__all__ = [
    "ArrayDataset",
    "DEFAULT_FASHION_MNIST_DIR",
    "IDENTITY",
    "IdentityPreprocessing",
    "LOCAL_DATASETS",
    "LabeledImages",
    "REJECTS_FILE",
    "as_images",
    "as_inputs",
    "as_labels",
    "augment_flip_and_crop",
    "batch_without_singletons",
    "evaluation_pipeline",
    "from_arrays",
    "from_labeled_images",
    "input_preprocessing",
    "is_own_data",
    "labeled_images",
    "load",
    "load_fashion_mnist",
    "load_tfds",
    "preprocessing_from_config",
    "read_idx",
    "stratified_split",
    "training_pipeline",
]

# Manifest files `load` and `labeled_images` recognise by their name (`keras_lossal.labeling.manifest` reads both).
MANIFEST_SUFFIXES = (".jsonl", ".csv")
# Datasets `load` reads from local files by name (anything else by name comes from TFDS).
LOCAL_DATASETS = ("fashion_mnist",)

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
    """Raw train/test inputs and integer labels, with the preprocessing that fits them.

    Args:
        x_train: raw training inputs: images `(N, H, W, C)` (usually uint8) or
            any other array `(N, ...)` with `IdentityPreprocessing`.
        y_train: integer labels `(N,)`.
        x_test: raw test inputs.
        y_test: integer test labels.
        preprocessing: how raw inputs become model input (`ImagePreprocessing`
            or `IdentityPreprocessing`).
        num_classes: number of classes.
        name: a label for logs and results.
        preprocessing_inferred: whether `preprocessing` was inferred from the inputs
            (the summary then says what it does).
        class_names: the classes' names in label order, when known.
        rejects: the images of your own that could not be read and were skipped,
            `{"id", "path", "reason"}` each (see `labeled_images`).

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
    preprocessing: ImagePreprocessing | IdentityPreprocessing
    num_classes: int
    name: str = "arrays"
    preprocessing_inferred: bool = False
    class_names: tuple[str, ...] | None = None
    rejects: list[dict] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.name}: {len(self.x_train)} train, {len(self.x_test)} test, "
            f"input {self.preprocessing.input_shape}, {self.num_classes} classes"
        )
        if self.preprocessing_inferred:
            kind = "images" if isinstance(self.preprocessing, ImagePreprocessing) else "inputs"
            text += f"; preprocessing inferred from {self.x_train.dtype} {kind}: {self.preprocessing.describe()}"
        if self.rejects:
            text += f"; {len(self.rejects)} unreadable image(s) skipped"
        return text


def as_images(x: Any, name: str) -> np.ndarray:
    """`x` as an `(N, H, W, C)` array; grayscale `(N, H, W)` gains a channel axis."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"Expected `{name}` of shape (N, H, W) or (N, H, W, C). Received shape {x.shape}")
    return x


def as_inputs(x: Any, name: str, preprocessing: Any = None) -> np.ndarray:
    """`x` as the array the pipelines index: images `(N, H, W, C)`, or any `(N, ...)` for identity preprocessing.

    Args:
        x: the raw inputs.
        name: what to call them in an error.
        preprocessing: `None` (rank 2 is features, rank 3-4 images), `"identity"`,
            an `IdentityPreprocessing` (any rank >= 2, checked against its
            `input_shape`) or an `ImagePreprocessing` (images).

    Example:

    >>> import numpy as np
    >>> as_inputs(np.zeros((5, 3)), "x").shape, as_inputs(np.zeros((5, 4, 4)), "x").shape
    ((5, 3), (5, 4, 4, 1))
    >>> as_inputs(np.zeros((5, 16, 2)), "x", "identity").shape
    (5, 16, 2)
    """
    x = np.asarray(x)
    identity = preprocessing == IDENTITY or isinstance(preprocessing, IdentityPreprocessing)
    if not identity and not (preprocessing is None and x.ndim == 2):
        return as_images(x, name)
    if x.ndim < 2:
        raise ValueError(
            f"Expected `{name}` of shape (N, ...) with at least one feature axis. Received shape {x.shape}"
        )
    if isinstance(preprocessing, IdentityPreprocessing) and x.shape[1:] != preprocessing.input_shape:
        raise ValueError(
            f"Expected `{name}` items of shape {preprocessing.input_shape} (the preprocessing's input_shape). "
            f"Received shape {x.shape}"
        )
    return x


def input_preprocessing(x: np.ndarray, preprocessing: Any = None, name: str = "x") -> tuple[Any, bool]:
    """The preprocessing of inputs `x` (as `as_inputs` returns them) and whether it was inferred.

    `"identity"` or `None` with non-image `x` gives `IdentityPreprocessing(x.shape[1:])`;
    `None` with images `infer_preprocessing(x)` (uint8 / 255, float unchanged).

    Example:

    >>> import numpy as np
    >>> input_preprocessing(np.zeros((4, 7)))
    (IdentityPreprocessing(input_shape=(7,)), True)
    """
    if preprocessing == IDENTITY:
        return IdentityPreprocessing(x.shape[1:]), False
    if preprocessing is not None:
        return preprocessing, False
    if x.ndim != 4:
        return IdentityPreprocessing(x.shape[1:]), True
    return infer_preprocessing(x, name), True


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
    preprocessing: ImagePreprocessing | IdentityPreprocessing | str | None = None,
    num_classes: int | None = None,
    name: str = "arrays",
    class_names: Sequence[str] | None = None,
) -> ArrayDataset:
    """Wraps NumPy inputs and labels as an `ArrayDataset`.

    Args:
        x_train: training images `(N, H, W[, C])`, features `(N, F)`, or any
            `(N, ...)` with `preprocessing="identity"` (e.g. signals `(N, T, C)`).
        y_train: integer labels `(N,)`.
        x_test: test inputs, of the training inputs' item shape.
        y_test: integer test labels.
        preprocessing: defaults to `infer_preprocessing(x_train)` for images
            (uint8 pixels divided by 255, float inputs unchanged) and to
            `IdentityPreprocessing` for features; the summary says which.
        num_classes: defaults to `max(label) + 1` (or `len(class_names)`); labels must lie in `[0, num_classes)`.
        name: a label for logs and results.
        class_names: the classes' names in label order.

    Example:

    >>> import numpy as np
    >>> from_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1, 2], np.zeros((1, 4, 4), np.uint8), [1]).x_train.shape
    (3, 4, 4, 1)
    >>> from_arrays(np.zeros((3, 5)), [0, 1, 1], np.zeros((2, 5)), [1, 0]).summary()
    'arrays: 3 train, 2 test, input (5,), 2 classes; preprocessing inferred from float64 inputs: x unchanged, input (5,)'
    """
    x_train, x_test = as_inputs(x_train, "x_train", preprocessing), as_inputs(x_test, "x_test", preprocessing)
    if x_train.shape[1:] != x_test.shape[1:]:
        kind = "images" if x_train.ndim == 4 else "inputs"
        raise ValueError(
            f"Expected train and test {kind} of one shape. Received {x_train.shape[1:]} and {x_test.shape[1:]}"
        )
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    y_train = as_labels(y_train, len(x_train), "y_train")
    y_test = as_labels(y_test, len(x_test), "y_test")
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    as_labels(y_train, len(x_train), "y_train", num_classes)
    as_labels(y_test, len(x_test), "y_test", num_classes)
    if preprocessing is None and x_train.ndim == 4 and x_test.dtype != x_train.dtype:
        raise ValueError(
            "Expected train and test images of one dtype to infer their preprocessing (or pass preprocessing=). "
            f"Received {x_train.dtype} and {x_test.dtype}"
        )
    preprocessing, inferred = input_preprocessing(x_train, preprocessing, "x_train")
    names = None if class_names is None else tuple(str(name) for name in class_names)
    return ArrayDataset(x_train, y_train, x_test, y_test, preprocessing, int(num_classes), name, inferred, names)


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or not, into a NumPy array.

    Example:

    >>> import tempfile, os, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> _ = open(path, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(path).tolist()
    [7, 8, 9]
    """
    check_regular_file(path)
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


def load_fashion_mnist(
    data_dir: str | None = None, validation_size: int | None = None, validation_seed: int = 0
) -> ArrayDataset:
    """Fashion-MNIST (60k train, 10k test, 28x28x1) from local IDX files.

    Args:
        data_dir: directory holding `train-images-idx3-ubyte[.gz]` and the other
            three files; defaults to `$LOSSAL_FASHION_MNIST_DIR` or
            `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`).
        validation_size: for choosing settings without the test set: hold out
            this many training images, stratified (`stratified_split`: every class
            its share, rounded; exactly this many on Fashion-MNIST's 6,000 per
            class), as the evaluation split in the test split's place; the pool is
            the rest and the test files are not read at all. `None`: the test split.
        validation_seed: the seed of that split.

    Example:

    >>> dataset = load_fashion_mnist()  # doctest: +SKIP
    >>> dataset.x_train.shape, dataset.preprocessing.mean  # doctest: +SKIP
    ((60000, 28, 28, 1), (0.286,))
    >>> load_fashion_mnist(validation_size=5000).summary()  # doctest: +SKIP
    'fashion_mnist_validation: 55000 train, 5000 test, input (28, 28, 1), 10 classes'
    """
    validation_size = check_integer("validation_size", validation_size, 1, optional=True)
    directory = data_dir or os.environ.get("LOSSAL_FASHION_MNIST_DIR") or DEFAULT_FASHION_MNIST_DIR
    keys = list(FASHION_MNIST_FILES) if validation_size is None else ["x_train", "y_train"]
    paths = {key: _find_idx(directory, FASHION_MNIST_FILES[key]) for key in keys}
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
    name = "fashion_mnist"
    if validation_size is not None:
        name = "fashion_mnist_validation"
        arrays = _validation_arrays(arrays["x_train"], arrays["y_train"], validation_size, validation_seed)
    mean, std = NORMALISATION["fashion_mnist"]
    return from_arrays(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        preprocessing=ImagePreprocessing(28, 28, 1, mean=mean, std=std),
        num_classes=10,
        name=name,
    )


def _validation_arrays(x: np.ndarray, y: np.ndarray, size: int, seed: int) -> dict[str, np.ndarray]:
    """A stratified, seeded split of one split's `(x, y)` into a pool and about `size` held-out items, as the four arrays."""
    if size >= len(y):
        raise ValueError(f"Expected validation_size < {len(y)} training items. Received: validation_size={size}")
    pool, held_out = stratified_split(y, size / len(y), seed)
    return {"x_train": x[pool], "y_train": y[pool], "x_test": x[held_out], "y_test": y[held_out]}


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
    _check_tfds_name(name, tfds.list_builders(with_community_datasets=False))
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        builder.download_and_prepare()
        train, test = (
            _tfds_arrays(builder.as_dataset(split=split), (image_key, label_key)) for split in (train_split, test_split)
        )
    except Exception as error:
        # TFDS' own messages run to hundreds of lines; the first one says what went wrong.
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise OSError(
            f"Could not load TFDS dataset {name!r} (splits {train_split!r}/{test_split!r}): "
            f"{type(error).__name__}: {first_line}. TFDS downloads on first use, which needs internet; offline, "
            "prepare it elsewhere and pass --data-dir, or use `fashion_mnist` from local IDX files."
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


def _check_tfds_name(name: str, known: Sequence[str]) -> None:
    """Refuses a name TFDS does not know, in one line naming what exists (TFDS' own error lists all of it)."""
    # A TFDS name is `dataset[/config][:version]`; the dataset part is a Python identifier.
    dataset = re.split(r"[/:]", name, maxsplit=1)[0]
    if dataset in known:
        return
    close = difflib.get_close_matches(dataset, list(dict.fromkeys([*LOCAL_DATASETS, *known])), n=3)
    hint = f"Did you mean {' or '.join(repr(match) for match in close)}? " if close else ""
    raise ValueError(
        f"Unknown dataset {name!r}: no such folder or manifest, and not a TFDS dataset. {hint}Known: "
        f"{', '.join(LOCAL_DATASETS)} (local IDX files), the {len(known)} TFDS datasets (e.g. mnist, cifar10, "
        "cifar100; `tfds.list_builders()`), a folder of class subfolders or a .jsonl/.csv labeled-set manifest"
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


@dataclasses.dataclass
class LabeledImages:
    """Your own labeled images in memory: raw uint8 pixels, integer labels and the class names.

    Args:
        x: images `(N, H, W, C)` uint8, resized to one size.
        y: int64 labels `(N,)`, indices into `class_names`.
        class_names: the classes in label order (sorted names unless given).
        ids: the items' ids (manifest ids; for a folder, paths relative to it).
        rejects: the items that could not be read and were skipped, each
            `{"id", "path", "reason"}` (empty with `strict=True`, which refuses them).
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    ids: np.ndarray
    rejects: list[dict] = dataclasses.field(default_factory=list)


def is_own_data(source: str) -> bool:
    """Whether `source` names your own labeled images: a folder of class subfolders or a manifest file."""
    return os.path.isdir(source) or source.lower().endswith(MANIFEST_SUFFIXES)


def labeled_images(
    source: str,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    class_names: Sequence[str] | None = None,
    strict: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> LabeledImages:
    """Reads labeled images from a folder of class subfolders or a labeled-set manifest (JSONL/CSV).

    A folder follows `keras.utils.image_dataset_from_directory`: each subfolder
    is a class, every PNG/JPEG/BMP below it an item (`keras_lossal.labeling.manifest.from_directory`).
    A manifest has `id, path, label` records (`keras_lossal.labeling.manifest.load_labeled_set`).
    Every file is read as triage reads it: regular files only, at most
    `max_image_bytes`, the header's size checked against `max_image_pixels`
    before anything is decoded. A file that fails (a FIFO, a symlink loop, a
    truncated, empty or non-image file) is skipped and listed in `rejects`
    with the reason, or refused with `strict=True`.

    Args:
        source: the folder or the manifest's path.
        image_size: `(height, width)` every image is resized to; default: the first readable image's size.
        channels: 1 (grayscale) or 3 (RGB); default: the first readable image's (alpha dropped).
        class_names: the class order (e.g. an earlier model's); default: the labels, sorted.
        strict: raise `ValueError` naming the first unreadable file instead of skipping it.
        max_image_pixels: the decompression-bomb guard's limit on the header's height x width.
        max_image_bytes: the largest file read.

    Example:

    >>> import os, tempfile, tensorflow as tf
    >>> root = tempfile.mkdtemp()
    >>> for name in ("cat/1.png", "dog/2.png", "dog/3.png"):
    ...     os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
    ...     tf.io.write_file(os.path.join(root, name), tf.io.encode_png(tf.zeros((6, 4, 1), tf.uint8)))
    >>> _ = open(os.path.join(root, "dog", "4.png"), "wb").write(b"not a png")
    >>> images = labeled_images(root)
    >>> images.x.shape, images.y.tolist(), images.class_names
    ((3, 6, 4, 1), [0, 1, 1], ['cat', 'dog'])
    >>> [(reject["id"], reject["reason"][:22]) for reject in images.rejects]
    [('dog/4.png', 'corrupt image: Unsuppo')]
    """
    labeled = _labeled_set(source, class_names)
    reader = _ImageReader(image_size, channels, max_image_pixels, max_image_bytes)
    kept, images, rejects = [], [], []
    for position, (item_id, path) in enumerate(zip(labeled.ids, labeled.paths)):
        try:
            images.append(reader.read(str(path)))
        except ValueError as error:
            if strict:
                raise ValueError(f"Unreadable image {str(path)!r} (id {str(item_id)!r}): {error}") from None
            rejects.append({"id": str(item_id), "path": str(path), "reason": str(error)})
            continue
        kept.append(position)
    if not kept:
        first = rejects[0]
        raise ValueError(
            f"Expected readable images in {source!r}. Received none: {len(rejects)} rejected, the first "
            f"{first['path']!r}: {first['reason']}"
        )
    kept = np.asarray(kept, dtype=np.int64)
    return LabeledImages(np.stack(images), labeled.labels[kept], list(labeled.class_names), labeled.ids[kept], rejects)


def _labeled_set(source: str, class_names: Sequence[str] | None):
    """The `keras_lossal.labeling.manifest.LabeledSet` (ids, paths, labels, class names) of a folder or a manifest."""
    from keras_lossal.labeling import manifest

    if not os.path.isdir(source):
        check_regular_file(source)  # a FIFO named like a manifest would block `open`
        labeled = manifest.load_labeled_set(source, class_names)
        if not len(labeled.paths):
            raise ValueError(f"Expected labeled records in {source!r}. Received none")
        return labeled
    records = manifest.from_directory(source)
    if not records:
        raise ValueError(
            f"Expected images ({', '.join(manifest.IMAGE_EXTENSIONS)}) in the class subfolders of {source!r}"
        )
    names = sorted({record["label"] for record in records}) if class_names is None else list(class_names)
    outside = [record for record in records if record["label"] not in names]
    if outside:
        raise ValueError(f"Expected class subfolders in {names}. Received: {outside[0]['label']!r} in {source!r}")
    return manifest.LabeledSet(
        np.array([record["id"] for record in records], dtype=object),
        np.array([os.path.join(source, record["path"]) for record in records], dtype=object),
        np.array([names.index(record["label"]) for record in records], dtype=np.int64),
        names,
    )


class _ImageReader:
    """Reads one image file with triage's guards into uint8 `(H, W, channels)`; the first one read fixes the size.

    Args:
        image_size: `(height, width)`, or `None` for the first image's.
        channels: 1 or 3, or `None` for the first image's.
        max_image_pixels: the header guard's limit.
        max_image_bytes: the largest file read.
    """

    def __init__(self, image_size, channels, max_image_pixels: int, max_image_bytes: int):
        self.image_size = None if image_size is None else tuple(int(size) for size in image_size)
        self.channels = None if channels is None else int(channels)
        self.max_image_pixels, self.max_image_bytes = int(max_image_pixels), int(max_image_bytes)
        self._decode = None

    def read(self, path: str) -> np.ndarray:
        """The decoded, resized image, or `ValueError(reason)` in triage's words (the caller names the file)."""
        try:
            encoded = read_file(path, self.max_image_bytes)
        except FileNotFoundError as error:
            raise ValueError(f"not found: {error}") from None
        except OSError as error:  # a FIFO, a directory, a symlink loop, a file over the size limit
            raise ValueError(f"unreadable: {error}") from None
        height, width = checked_image_size(encoded, self.max_image_pixels)
        try:
            if self._decode is None:
                self._decode = self._decoder(encoded, (height, width))
            return self._decode(tf.constant(encoded)).numpy()
        except tf.errors.OpError as error:
            raise ValueError(f"corrupt image: {_op_message(error)}") from None

    def _decoder(self, first: bytes, first_size: tuple[int, int]):
        """One traced `keras_lossal.labeling.manifest.decode_image` for every file, at the size the first image fixes."""
        from keras_lossal.labeling.manifest import decode_image

        if self.channels is None:
            decoded_channels = int(tf.io.decode_image(first, expand_animations=False).shape[-1])
            self.channels = 1 if decoded_channels <= 2 else 3
        self.image_size = self.image_size or first_size
        size, channels, max_pixels = self.image_size, self.channels, self.max_image_pixels
        return tf.function(
            lambda data: decode_image(data, size, channels, max_pixels), input_signature=[tf.TensorSpec([], tf.string)]
        )


def _op_message(error: tf.errors.OpError) -> str:
    """A TensorFlow op error's message without its `{{function_node ...}}` prefix and `[Op:...]` suffix."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\]\s*$", "", message).strip()


def stratified_split(labels, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of item positions into `(kept, held_out)`, about `fraction` of every class held out.

    Each class with at least two items gives `round(fraction * count)` items
    (at least one, never all) to the held-out part; both parts are sorted.

    Example:

    >>> kept, held_out = stratified_split([0, 0, 0, 0, 1, 1, 1, 1, 1, 1], 0.5, seed=0)
    >>> len(kept), len(held_out), sorted(np.asarray([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])[held_out].tolist())
    (5, 5, [0, 0, 1, 1, 1])
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"Expected a held-out fraction in [0, 1). Received: {fraction}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if fraction == 0 or len(members) < 2:
            continue
        count = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        held_out.append(rng.choice(members, size=count, replace=False))
    held_out = np.sort(np.concatenate(held_out)) if held_out else np.zeros(0, np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out


def from_labeled_images(
    source: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    strict: bool = False,
) -> ArrayDataset:
    """Your labeled images as an `ArrayDataset`: a seeded stratified test split, the rest the pool.

    Args:
        source: a folder of class subfolders or a labeled-set manifest (see `labeled_images`).
        test_fraction: share of every class held out for evaluation.
        seed: seed of the split.
        image_size: `(height, width)`; default: the first image's.
        channels: 1 or 3; default: the first image's.
        strict: refuse an unreadable image instead of skipping it (the dataset's `rejects` lists skipped ones).
    """
    images = labeled_images(source, image_size, channels, strict=strict)
    pool, test = stratified_split(images.y, test_fraction, seed)
    if not len(test):
        raise ValueError(f"Expected a test split: test_fraction={test_fraction} of {len(images.y)} items holds none")
    name = os.path.basename(os.path.normpath(source))
    dataset = from_arrays(
        images.x[pool],
        images.y[pool],
        images.x[test],
        images.y[test],
        num_classes=len(images.class_names),
        name=name,
        class_names=images.class_names,
    )
    dataset.rejects = images.rejects
    return dataset


def load(
    name: str, data_dir: str | None = None, test_fraction: float = 0.2, seed: int = 0, strict: bool = False
) -> ArrayDataset:
    """Loads a dataset by name: `fashion_mnist` from local IDX files, your own images, anything else through TFDS.

    A name that is neither raises in one line: `FileNotFoundError` for a path
    (`./nope_dir`, `x.npz`), `ValueError` naming the known datasets for a name.

    Args:
        name: `"fashion_mnist"` (local IDX), a folder of class subfolders or a
            labeled-set manifest (`.jsonl`/`.csv`; see `from_labeled_images`),
            or a TFDS name such as `"cifar10"`; prefix with `tfds:` to force
            TFDS (`"tfds:fashion_mnist"`).
        data_dir: IDX directory for Fashion-MNIST, TFDS data directory otherwise.
        test_fraction: for your own images, the share of every class held out as the test set.
        seed: for your own images, the seed of that split.
        strict: for your own images, refuse an unreadable one instead of skipping it.

    Example:

    >>> load("fashion_mnist").summary()  # doctest: +SKIP
    'fashion_mnist: 60000 train, 10000 test, input (28, 28, 1), 10 classes'
    >>> load("./nope_dir")
    Traceback (most recent call last):
    ...
    FileNotFoundError: No such folder or manifest: './nope_dir'. Expected fashion_mnist (local IDX files), a TFDS name such as cifar10, a folder of class subfolders or a .jsonl/.csv labeled-set manifest
    """
    if name.startswith("tfds:"):
        return load_tfds(name[len("tfds:") :], data_dir=data_dir)
    if name in ("fashion_mnist", "fashion-mnist"):
        return load_fashion_mnist(data_dir)
    if is_own_data(name):
        return from_labeled_images(name, test_fraction=test_fraction, seed=seed, strict=strict)
    if _is_path(name):
        expected = (
            f"Expected {', '.join(LOCAL_DATASETS)} (local IDX files), a TFDS name such as cifar10, a folder of "
            "class subfolders or a .jsonl/.csv labeled-set manifest"
        )
        if os.path.exists(name):
            raise ValueError(f"{expected}. Received: {name!r}, a file of another type")
        raise FileNotFoundError(f"No such folder or manifest: {name!r}. {expected}")
    return load_tfds(name, data_dir=data_dir)


def _is_path(name: str) -> bool:
    """Whether `name` can only be a path: TFDS names are `dataset[/config][:version]`, the dataset an identifier."""
    return not re.match(r"^[A-Za-z_]\w*(/[\w.-]+)?(:[\w.*]+)?$", name)


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
    preprocessing: ImagePreprocessing | IdentityPreprocessing,
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
        x: raw inputs: images `(N, H, W, C)`, or any `(N, ...)` with `IdentityPreprocessing`.
        y: labels `(N,)`.
        preprocessing: the run's `ImagePreprocessing` or `IdentityPreprocessing`.
        batch_size: batch size.
        augment: apply random flip + 4-pixel pad-crop (images only).
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
    if augment and np.ndim(x) != 4:
        raise ValueError(
            f"Expected images (N, H, W, C) to augment (flip and crop). Received inputs of shape {np.shape(x)}; "
            "pass augment=False"
        )
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


def evaluation_pipeline(
    x, y, preprocessing: ImagePreprocessing | IdentityPreprocessing, batch_size: int = 256
) -> tf.data.Dataset:
    """A `tf.data` pipeline of preprocessed `(model input, label)` batches, in order, no augmentation.

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
