"""keras_lossal.data: IDX reading, Fashion-MNIST loading, TFDS loading, tf.data pipelines and augmentation."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_lossal import data
from keras_lossal.preprocessing import ImagePreprocessing


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_fashion_mnist(directory, train=40, test=20, seed=0, compress=True):
    """Writes four tiny Fashion-MNIST-format IDX files; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, test, dtype=np.uint8),
    }
    os.makedirs(directory, exist_ok=True)
    for key, stem in data.FASHION_MNIST_FILES.items():
        payload = _idx_bytes(arrays[key])
        if compress:
            with gzip.open(os.path.join(directory, stem + ".gz"), "wb") as handle:
                handle.write(payload)
        else:
            with open(os.path.join(directory, stem), "wb") as handle:
                handle.write(payload)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_load_fashion_mnist_from_idx_files(tmp_path, compress):
    arrays = write_fake_fashion_mnist(str(tmp_path), compress=compress)
    dataset = data.load("fashion_mnist", data_dir=str(tmp_path))
    assert dataset.x_train.shape == (40, 28, 28, 1) and dataset.x_train.dtype == np.uint8
    np.testing.assert_array_equal(dataset.x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(dataset.y_test, arrays["y_test"])
    assert dataset.num_classes == 10
    assert dataset.preprocessing.mean == (0.286,) and dataset.preprocessing.std == (0.353,)


def test_fashion_mnist_validation_split_reads_the_training_files_only(tmp_path):
    write_fake_fashion_mnist(str(tmp_path), train=100)
    labels = np.arange(100) % 10  # balanced: 10 of each class
    images = np.arange(100, dtype=np.uint8)[:, None, None].repeat(28, 1).repeat(28, 2)  # image i is all i
    for key, array in (("x_train", images), ("y_train", labels)):
        with gzip.open(os.path.join(tmp_path, data.FASHION_MNIST_FILES[key] + ".gz"), "wb") as handle:
            handle.write(_idx_bytes(array))
    for key in ("x_test", "y_test"):  # the test files are not needed, so never read
        os.remove(os.path.join(tmp_path, data.FASHION_MNIST_FILES[key] + ".gz"))
    dataset = data.load_fashion_mnist(str(tmp_path), validation_size=20)
    assert dataset.name == "fashion_mnist_validation" and (len(dataset.y_train), len(dataset.y_test)) == (80, 20)
    assert np.bincount(dataset.y_test).tolist() == [2] * 10 and np.bincount(dataset.y_train).tolist() == [8] * 10
    pool, held_out = dataset.x_train[:, 0, 0, 0].tolist(), dataset.x_test[:, 0, 0, 0].tolist()
    assert sorted(pool + held_out) == list(range(100))  # disjoint, and together the training split
    np.testing.assert_array_equal(labels[held_out], dataset.y_test)
    again = data.load_fashion_mnist(str(tmp_path), validation_size=20)
    assert again.x_test[:, 0, 0, 0].tolist() == held_out  # seed 0 by default: the same split every time
    other = data.load_fashion_mnist(str(tmp_path), validation_size=20, validation_seed=1)
    assert other.x_test[:, 0, 0, 0].tolist() != held_out
    assert dataset.preprocessing.mean == (0.286,)
    with pytest.raises(ValueError, match="validation_size=0"):
        data.load_fashion_mnist(str(tmp_path), validation_size=0)
    with pytest.raises(ValueError, match="validation_size < 100"):
        data.load_fashion_mnist(str(tmp_path), validation_size=100)
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        data.load_fashion_mnist(str(tmp_path))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as error:
        data.load_fashion_mnist(str(tmp_path / "nowhere"))
    assert "--data-dir" in str(error.value) and "zalandoresearch" in str(error.value)


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(_idx_bytes(np.zeros((3, 2, 2), np.uint8))[:-1])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(str(path))


@pytest.mark.skipif(
    not os.path.exists(os.path.join(data.DEFAULT_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist():
    dataset = data.load_fashion_mnist()
    assert dataset.x_train.shape == (60000, 28, 28, 1) and dataset.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(dataset.y_train).tolist() == [6000] * 10
    # The recorded normalisation matches the data (mean/std of scaled training pixels).
    pixels = dataset.x_train[:5000].astype(np.float64) / 255
    assert abs(pixels.mean() - dataset.preprocessing.mean[0]) < 0.01
    assert abs(pixels.std() - dataset.preprocessing.std[0]) < 0.01


def test_tfds_by_name_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        dataset = data.load("cifar10")
    assert dataset.x_train.shape == (12, 32, 32, 3) and dataset.x_test.shape == (12, 32, 32, 3)
    assert dataset.num_classes == 10 and dataset.preprocessing.input_shape == (32, 32, 3)
    assert dataset.preprocessing.mean == data.NORMALISATION["cifar10"][0]


def test_from_arrays_validates_shapes():
    with pytest.raises(ValueError, match=r"3 labels \(one per image\)"):
        data.from_arrays(np.zeros((3, 4, 4)), [0, 1], np.zeros((1, 4, 4)), [0])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        data.from_arrays(np.zeros(3), [0, 1, 2], np.zeros(1), [0])
    with pytest.raises(ValueError, match=r"train and test inputs of one shape. Received \(4,\) and \(5,\)"):
        data.from_arrays(np.zeros((3, 4)), [0, 1, 2], np.zeros((1, 5)), [0])


def _epochs(dataset, count):
    return [np.concatenate([labels.numpy() for _, labels in dataset]) for _ in range(count)]


def test_training_pipeline_normalises_shuffles_per_epoch_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 5, 5, 1), dtype=np.uint8)
    y = np.arange(50)
    prep = ImagePreprocessing(5, 5, 1, mean=(0.5,), std=(0.25,))
    pipeline = data.training_pipeline(x, y, prep, batch_size=8, seed=3)
    first, second = _epochs(pipeline, 2)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))  # every item once per epoch
    assert first.tolist() != second.tolist()  # reshuffled
    again = _epochs(data.training_pipeline(x, y, prep, batch_size=8, seed=3), 2)
    assert [e.tolist() for e in again] == [first.tolist(), second.tolist()]
    images, labels = next(iter(pipeline))
    expected = (x[labels.numpy()].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-6)


def test_evaluation_pipeline_keeps_order():
    x = np.arange(30, dtype=np.uint8).reshape(30, 1, 1, 1)
    labels = np.concatenate(
        [b[1].numpy() for b in data.evaluation_pipeline(x, np.arange(30), ImagePreprocessing(1, 1, 1), 7)]
    )
    assert labels.tolist() == list(range(30))


def test_flip_and_crop_is_a_padded_shift_of_the_image():
    image = np.random.default_rng(1).integers(1, 256, (8, 8, 3)).astype(np.uint8)
    padded = {flip: np.pad(image[:, ::-1] if flip else image, ((4, 4), (4, 4), (0, 0))) for flip in (False, True)}
    seen_flips, seen_offsets = set(), set()
    for seed in range(40):
        out = data.augment_flip_and_crop(tf.constant(image), tf.constant([seed, 7])).numpy()
        matches = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(9)
            for dx in range(9)
            if np.array_equal(padded[flip][dy : dy + 8, dx : dx + 8], out)
        ]
        assert len(matches) == 1
        seen_flips.add(matches[0][0])
        seen_offsets.add(matches[0][1:])
    assert seen_flips == {False, True} and len(seen_offsets) > 10


def test_augmented_pipeline_is_reproducible_and_varies_per_epoch():
    x = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    prep = ImagePreprocessing(8, 8, 3)

    def images(pipeline):
        return [np.concatenate([b[0].numpy() for b in pipeline]) for _ in range(2)]

    first = images(data.training_pipeline(x, np.arange(6), prep, 6, augment=True, shuffle=False, seed=5))
    again = images(data.training_pipeline(x, np.arange(6), prep, 6, augment=True, shuffle=False, seed=5))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], first[1])


def test_preprocessing_is_inferred_from_the_dtype():
    rng = np.random.default_rng(0)
    standardised = rng.normal(0, 1.5, (6, 4, 4, 1)).astype(np.float32)  # already model input
    dataset = data.from_arrays(standardised[:4], [0, 1, 0, 1], standardised[4:], [0, 1])
    assert dataset.preprocessing.scale == 1.0
    np.testing.assert_allclose(dataset.preprocessing(standardised).numpy(), standardised, atol=1e-6)
    assert dataset.summary().endswith("preprocessing inferred from float32 images: x unchanged, at 4x4x1")
    pixels = rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    dataset = data.from_arrays(pixels[:4], [0, 1, 0, 1], pixels[4:], [0, 1])
    np.testing.assert_allclose(dataset.preprocessing(pixels).numpy(), pixels / 255.0, atol=1e-6)
    assert "inferred from uint8 images: x / 255" in dataset.summary()
    explicit = data.from_arrays(pixels[:4], [0, 1, 0, 1], pixels[4:], [0, 1], preprocessing=ImagePreprocessing(4, 4, 1))
    assert "inferred" not in explicit.summary()
    with pytest.raises(ValueError, match="dtype int64"):
        data.from_arrays(pixels[:4].astype(np.int64), [0, 1, 0, 1], pixels[4:].astype(np.int64), [0, 1])


def test_labels_outside_the_classes_are_refused():
    images = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(
        ValueError, match=r"Expected class labels in \[0, 2\) in `y_train`. Received: label 2 at index 1"
    ):
        data.from_arrays(images, [0, 2, 1], images[:1], [0], num_classes=2)
    with pytest.raises(ValueError, match=r"label -1 at index 0"):
        data.from_arrays(images, [-1, 0, 1], images[:1], [0])
    with pytest.raises(ValueError, match="integer class labels"):
        data.from_arrays(images, [0.0, 1.5, 1.0], images[:1], [0])


def test_your_images_from_a_folder_or_a_manifest(tmp_path):
    from test_training import write_image_folder

    from keras_lossal.labeling import manifest

    folder = write_image_folder(tmp_path / "images", per_class=5)
    images = data.labeled_images(folder)
    assert images.x.shape == (15, 8, 8, 1) and images.x.dtype == np.uint8
    assert images.class_names == ["bright", "dark", "mid"] and np.bincount(images.y).tolist() == [5, 5, 5]
    assert images.x[images.y == 0].mean() > 180 > 60 > images.x[images.y == 1].mean()  # pixels, as written
    resized = data.labeled_images(folder, image_size=(4, 6), channels=3, class_names=["mid", "dark", "bright"])
    assert resized.x.shape == (15, 4, 6, 3) and resized.class_names == ["mid", "dark", "bright"]
    assert (resized.y[images.y == 0] == 2).all()
    path = str(tmp_path / "labeled.csv")
    records = manifest.from_directory(folder)
    manifest.write_manifest(path, [{**record, "path": os.path.join(folder, record["path"])} for record in records])
    from_manifest = data.labeled_images(path)
    np.testing.assert_array_equal(from_manifest.x, images.x)
    assert from_manifest.ids.tolist() == images.ids.tolist()
    # The dataset: a seeded, stratified test split (one of each class's five), the rest the pool.
    dataset = data.load(path, test_fraction=0.2)
    assert (len(dataset.x_train), len(dataset.x_test)) == (12, 3) and sorted(dataset.y_test.tolist()) == [0, 1, 2]
    assert dataset.class_names == ("bright", "dark", "mid") and dataset.preprocessing.scale == pytest.approx(1 / 255)
    assert dataset.summary().startswith("labeled.csv: 12 train, 3 test, input (8, 8, 1), 3 classes")
    with pytest.raises(ValueError, match="Expected class subfolders in"):
        data.labeled_images(folder, class_names=["bright", "dark"])


def test_stratified_split_is_seeded_and_keeps_every_class():
    labels = np.repeat([0, 1, 2], [10, 20, 1])
    kept, held_out = data.stratified_split(labels, 0.3, seed=4)
    assert np.bincount(labels[held_out], minlength=3).tolist() == [3, 6, 0]  # a class of one stays in training
    assert sorted(np.concatenate([kept, held_out]).tolist()) == list(range(31))
    assert data.stratified_split(labels, 0.3, seed=4)[1].tolist() == held_out.tolist()
    assert data.stratified_split(labels, 0.3, seed=5)[1].tolist() != held_out.tolist()
    assert len(data.stratified_split(labels, 0.0)[1]) == 0


def test_non_image_inputs_use_identity_preprocessing():
    features = data.from_arrays(np.ones((4, 3), np.float32), [0, 1, 0, 1], np.ones((2, 3), np.float32), [0, 1])
    assert features.preprocessing == data.IdentityPreprocessing((3,)) and features.preprocessing_inferred
    signals = data.from_arrays(np.ones((4, 16, 2)), [0, 1, 0, 1], np.ones((2, 16, 2)), [0, 1], preprocessing="identity")
    assert signals.x_train.shape == (4, 16, 2) and signals.preprocessing.input_shape == (16, 2)
    batch = next(iter(data.training_pipeline(signals.x_train, signals.y_train, signals.preprocessing, 4)))[0]
    assert batch.dtype == tf.float32 and batch.shape == (4, 16, 2)
    with pytest.raises(ValueError, match="augment=False"):
        data.training_pipeline(signals.x_train, signals.y_train, signals.preprocessing, 4, augment=True)
    with pytest.raises(ValueError, match=r"items of shape \(16, 2\)"):
        data.as_inputs(np.ones((4, 8, 2)), "x", data.IdentityPreprocessing((16, 2)))
    # Images are unchanged: rank 3 is grayscale, the preprocessing inferred from the dtype.
    assert (
        data.from_arrays(np.ones((4, 5, 5), np.uint8), [0, 1, 0, 1], np.ones((1, 5, 5), np.uint8), [0]).x_train.ndim
        == 4
    )


# Unreadable files a labeled folder may hold, and a word of the reason each is skipped with.
BAD_IMAGES = {
    "dark/pipe.png": "a FIFO",
    "dark/loop.png": "Too many levels of symbolic links",
    "mid/empty.png": "corrupt image: Unsupported image format",
    "mid/truncated.png": "corrupt image: Invalid PNG",
    "bright/notes.png": "corrupt image: Unsupported image format",
}


def write_bad_images(root):
    """Adds `BAD_IMAGES` to a folder of class subfolders: a FIFO, a symlink loop, empty, truncated and text files."""
    good = tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy()
    os.mkfifo(os.path.join(root, "dark", "pipe.png"))
    os.symlink("loop.png", os.path.join(root, "dark", "loop.png"))  # a link to itself
    payloads = {"mid/empty.png": b"", "mid/truncated.png": good[:40], "bright/notes.png": b"hello, not a picture"}
    for name, payload in payloads.items():
        with open(os.path.join(root, name), "wb") as handle:
            handle.write(payload)
    return str(root)


@pytest.mark.timeout(120)  # a FIFO read without the guard blocks forever
def test_unreadable_images_are_skipped_and_named_or_refused_when_strict(tmp_path):
    from test_training import write_image_folder

    folder = write_bad_images(write_image_folder(tmp_path / "images", per_class=4))
    images = data.labeled_images(folder)
    assert images.x.shape == (12, 8, 8, 1) and np.bincount(images.y).tolist() == [4, 4, 4]
    reasons = {reject["id"]: reject["reason"] for reject in images.rejects}
    assert sorted(reasons) == sorted(BAD_IMAGES)
    for name, word in BAD_IMAGES.items():
        assert word in reasons[name], (name, reasons[name])
    assert {reject["path"] for reject in images.rejects} == {os.path.join(folder, name) for name in BAD_IMAGES}
    with pytest.raises(ValueError, match=r"Unreadable image '.*(pipe|loop|empty|truncated|notes)\.png'") as info:
        data.labeled_images(folder, strict=True)
    assert "\n" not in str(info.value)
    # Through `load` (lossal run): the dataset says how many were skipped and keeps the list.
    dataset = data.load(folder, test_fraction=0.25)
    assert len(dataset.x_train) + len(dataset.x_test) == 12 and len(dataset.rejects) == len(BAD_IMAGES)
    assert dataset.summary().endswith(f"; {len(BAD_IMAGES)} unreadable image(s) skipped")


@pytest.mark.timeout(120)
def test_a_fifo_in_a_manifest_or_as_the_manifest_never_blocks(tmp_path):
    from test_training import write_image_folder

    from keras_lossal.labeling import manifest

    folder = write_image_folder(tmp_path / "images", per_class=3)
    os.mkfifo(tmp_path / "pipe.png")
    records = [{**record, "path": os.path.join(folder, record["path"])} for record in manifest.from_directory(folder)]
    path = str(tmp_path / "labeled.jsonl")
    manifest.write_manifest(path, [*records, {"id": "pipe", "path": str(tmp_path / "pipe.png"), "label": "dark"}])
    images = data.labeled_images(path)
    assert len(images.y) == 9 and [(reject["id"], "a FIFO" in reject["reason"]) for reject in images.rejects] == [
        ("pipe", True)
    ]
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(OSError, match=r"fifo.jsonl'?: not a regular file \(a FIFO\)"):
        data.labeled_images(str(tmp_path / "fifo.jsonl"))


def test_only_unreadable_images_are_refused_naming_the_first(tmp_path):
    os.makedirs(tmp_path / "cat")
    (tmp_path / "cat" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"Expected readable images in .* 1 rejected, the first '.*a\.png': corrupt"):
        data.labeled_images(str(tmp_path))


def test_unknown_datasets_and_paths_are_one_line_naming_what_exists(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown dataset 'fashon_mnist'.*Did you mean 'fashion_mnist'") as info:
        data.load("fashon_mnist")
    assert "\n" not in str(info.value) and "cifar10" in str(info.value) and len(str(info.value)) < 600
    # `name/config` is TFDS' syntax too, so a missing relative folder reads as an unknown dataset, in one line.
    with pytest.raises(ValueError, match="no such folder or manifest, and not a TFDS dataset"):
        data.load("nope/dir")
    for path in ("./nope_dir", str(tmp_path / "x.npz")):
        with pytest.raises(FileNotFoundError, match="No such folder or manifest") as info:
            data.load(path)
        assert "\n" not in str(info.value) and "fashion_mnist" in str(info.value)
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="a file of another type"):
        data.load(str(tmp_path / "x.npz"))
    with pytest.raises(FileNotFoundError, match="No such file"):
        data.load(str(tmp_path / "missing.jsonl"))
