"""`train`: fit a `LossLearningModel` on your labeled data and write what export and triage need.

The production round's training step (`lossal train`): labeled data (a
labeled-set manifest, a folder of class subfolders, or arrays in an `.npz`)
→ a seeded, stratified validation split → `fit` with the recommended recipe,
progress bars and a checkpoint after every epoch → an output directory:

- `model.keras` (`MODEL_FILE`): the trained `LossLearningModel` (backbone + head),
  what `lossal export` publishes for TF Serving;
- `preprocessing.json` (`PREPROCESSING_FILE`): raw input → model input, the
  format `examples/demo.py` writes and `ImagePreprocessing.from_config` reads
  (non-image data: `{"kind": "identity", "input_shape": [...]}`, read by
  `keras_lossal.preprocessing.preprocessing_from_config`);
- `classes.json` (`CLASSES_FILE`): the class names, a JSON list in label order
  (index i is the model's output i);
- `training.json` (`TRAINING_FILE`): the settings, the data's fingerprint, the
  per-epoch history and the final validation metrics; `finished` once the files
  above are written.

- `rejects.jsonl` (`REJECTS_FILE`, written by `lossal train`):
  the images that could not be read and were skipped (`TrainingResult.rejects`).

A killed run re-run with the same arguments continues after the last finished
epoch (Keras' `BackupAndRestore`, in `backup/` until training ends; the model
weights, the optimizer state and the epoch). A finished directory is not
trained again; other settings or other data are refused (one directory per
model: train the next round into a new one, or `restart=True`). A loss that
becomes NaN or infinite stops training with `NonFiniteLossError`, and nothing
is marked finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any

import keras
import numpy as np

from keras_lossal import model_factory
from keras_lossal.contracts import (
    CLASSES_FILE,
    MODEL_FILE,
    PREPROCESSING_FILE,
    REJECTS_FILE,
    TRAINING_FILE,
    ModelSpec,
    check_integer,
)

__all__ = [
    "BACKUP_DIR",
    "CLASSES_FILE",
    "MODEL_FILE",
    "PREPROCESSING_FILE",
    "TRAINING_FILE",
    "TrainingData",
    "TrainingResult",
    "load_training_data",
    "train",
]

BACKUP_DIR = "backup"
# The model is saved under this name, then renamed to MODEL_FILE.
PARTIAL_MODEL_FILE = ".model.partial.keras"
NPZ_SUFFIX = ".npz"
# The `.npz` layout `load_training_data` reads: inputs, integer labels, optionally the class names.
NPZ_INPUTS, NPZ_LABELS, NPZ_CLASS_NAMES = "x", "y", "class_names"


@dataclasses.dataclass
class TrainingData:
    """Labeled data for `train`: raw inputs, integer labels, class names and the preprocessing.

    Args:
        x: raw inputs (images `(N, H, W, C)` or any `(N, ...)`).
        y: int64 labels `(N,)`, indices into `class_names`.
        class_names: the classes in label order.
        preprocessing: an `ImagePreprocessing` or `IdentityPreprocessing`.
        rejects: images that could not be read and were skipped, `{"id", "path", "reason"}` each.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    preprocessing: Any
    rejects: list[dict] = dataclasses.field(default_factory=list)

    def fingerprint(self) -> str:
        """SHA-256 of the inputs, labels and class names: tells a re-run on other data from a resume."""
        digest = hashlib.sha256()
        for array in (np.ascontiguousarray(self.x), np.ascontiguousarray(self.y)):
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(array.tobytes())
        digest.update(json.dumps(self.class_names).encode())
        return digest.hexdigest()


@dataclasses.dataclass
class TrainingResult:
    """What `train` produced.

    Args:
        out_dir: the output directory.
        model: the trained `LossLearningModel` (`None` when the directory was already finished).
        history: per-epoch logs, `{"loss": [...], "val_accuracy": [...], ...}` over all epochs, resumes included.
        validation: the final model's validation metrics (empty without a validation split).
        resumed_from_epoch: epochs already done when this call started (0 for a fresh run).
        rejects: images that could not be read and were skipped, `{"id", "path", "reason"}` each.
    """

    out_dir: str
    model: Any
    history: dict[str, list[float]]
    validation: dict[str, float]
    resumed_from_epoch: int = 0
    rejects: list[dict] = dataclasses.field(default_factory=list)

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)


def load_training_data(
    source: str,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    preprocessing: Any = None,
    strict: bool = False,
) -> TrainingData:
    """Reads labeled data from a manifest (`.jsonl`/`.csv`), a folder of class subfolders, or an `.npz`.

    An `.npz` holds `x` (raw inputs), `y` (integer labels) and optionally
    `class_names`, one per label index; without them the labels must be
    0..C-1, every one present (labels {0, 1, 2, 5} are refused rather than
    becoming six classes, two of them empty). Its preprocessing is inferred
    like `keras_lossal.data.from_arrays` (uint8 images / 255, float images and
    `(N, F)` features unchanged) unless given (`"identity"` for signals `(N, T, C)`).
    Images from a folder or a manifest are uint8, divided by 255; an unreadable
    one is skipped and listed in `rejects` (see `keras_lossal.data.labeled_images`).

    Args:
        source: the data's path.
        image_size: `(height, width)` images are resized to (folder or manifest); default: the first image's.
        channels: 1 or 3 (folder or manifest); default: the first image's.
        preprocessing: for an `.npz`: an `ImagePreprocessing`, `"identity"` or `None` (inferred).
        strict: refuse an unreadable image (folder or manifest) instead of skipping it.

    Example:

    >>> import tempfile, os, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "data.npz")
    >>> np.savez(path, x=np.zeros((4, 6), np.float32), y=np.array([0, 1, 1, 0]), class_names=["no", "yes"])
    >>> data = load_training_data(path)
    >>> data.class_names, data.preprocessing.describe()
    (['no', 'yes'], 'x unchanged, input (6,)')
    """
    from keras_lossal import data as data_lib

    if source.lower().endswith(NPZ_SUFFIX):
        return _load_npz(source, preprocessing)
    if not data_lib.is_own_data(source):
        missing = "" if os.path.exists(source) else " (no such file or folder)"
        raise ValueError(
            "Expected labeled data as a manifest (.jsonl/.csv), a folder of class subfolders or an .npz. "
            f"Received: {source!r}{missing}"
        )
    images = data_lib.labeled_images(source, image_size, channels, strict=strict)
    preprocessing = data_lib.input_preprocessing(images.x)[0]
    return TrainingData(images.x, images.y, images.class_names, preprocessing, images.rejects)


def _load_npz(source: str, preprocessing: Any) -> TrainingData:
    from keras_lossal import data as data_lib
    from keras_lossal.files import check_regular_file

    check_regular_file(source)  # a FIFO named like an .npz would block `np.load`
    with np.load(source, allow_pickle=False) as stored:
        missing = [key for key in (NPZ_INPUTS, NPZ_LABELS) if key not in stored.files]
        if missing:
            raise ValueError(f"Expected arrays {missing} in {source!r}. Received: {sorted(stored.files)}")
        x = data_lib.as_inputs(stored[NPZ_INPUTS], f"{source}:{NPZ_INPUTS}", preprocessing)
        y = np.asarray(stored[NPZ_LABELS])
        names = [str(name) for name in stored[NPZ_CLASS_NAMES]] if NPZ_CLASS_NAMES in stored.files else None
    if names is None:
        names = _label_names(data_lib.as_labels(y, len(x), f"{source}:{NPZ_LABELS}"), source)
    y = data_lib.as_labels(y, len(x), f"{source}:{NPZ_LABELS}", num_classes=len(names))
    resolved, _ = data_lib.input_preprocessing(x, preprocessing, f"{source}:{NPZ_INPUTS}")
    return TrainingData(x, y, names, resolved)


def _label_names(y: np.ndarray, source: str) -> list[str]:
    """`"0"`, `"1"`, ... for labels 0..C-1 with every class present; other label sets are refused, not padded."""
    present = np.unique(y)
    if not np.array_equal(present, np.arange(len(present))):
        absent = sorted(set(range(int(present.max()) + 1)) - set(present.tolist()))
        raise ValueError(
            f"Expected the labels in {source}:{NPZ_LABELS} to be 0..C-1 with every class present (or an array "
            f"{NPZ_CLASS_NAMES!r} naming each label index). Received labels {present.tolist()[:20]} "
            f"(no items of {absent[:20]}); relabel them 0..{len(present) - 1} or store {NPZ_CLASS_NAMES!r}"
        )
    return [str(label) for label in present.tolist()]


def train(
    source: str | TrainingData,
    out_dir: str,
    spec: Any = None,
    epochs: int = 10,
    batch_size: int = 64,
    validation_fraction: float = 0.1,
    seed: int = 0,
    augment: bool = False,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    verbose: int = 1,
    callbacks: list | None = None,
    preprocessing: Any = None,
    strict: bool = False,
    restart: bool = False,
) -> TrainingResult:
    """Trains a `LossLearningModel` on labeled data and writes `model.keras`, `preprocessing.json`, `classes.json`.

    Args:
        source: a manifest, a folder of class subfolders or an `.npz` (see
            `load_training_data`), or a `TrainingData`.
        out_dir: the output directory (see the module docstring for its files).
        spec: a `keras_lossal.contracts.ModelSpec`: the backbone (a built-in by
            name with `width`, your `.keras` file or `package.module:function`
            factory, see `model_factory.backbone_builder`), the optimizer and the
            head's recipe; default `ModelSpec(learning_rate=0.05)`: `resnet18_cifar`
            of width 16, SGD, the "recommended" recipe.
        epochs: training epochs.
        batch_size: training batch size (a one-item last batch joins the one before).
        validation_fraction: share of every class held out for validation (seeded, stratified); 0 for none.
        seed: seeds the split, the model's initialisation and the shuffles.
        augment: the paper's random flip + pad-crop (images only).
        image_size, channels: for images read from a folder or a manifest.
        verbose: 0 silent, 1 progress bars and a line per step, 2 one line per epoch.
        callbacks: extra Keras callbacks, called after the checkpoint of each epoch.
        preprocessing: for an `.npz`: `"identity"` to use its inputs unchanged
            (needed for signals `(N, T, C)`, which would otherwise be grayscale
            images), an `ImagePreprocessing`, or `None` to infer it.
        strict: refuse an unreadable image instead of skipping it (skipped ones go to `rejects.jsonl`).
        restart: discard an earlier training in `out_dir` (its files only) instead of resuming it;
            without it, a directory trained with other settings or data is refused
            (`keras_lossal.loop_state.ResumeRefusedError`).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (`keras_lossal.callbacks`);
            no model is written and `training.json` stays unfinished.

    Example:

    >>> from keras_lossal.contracts import ModelSpec
    >>> spec = ModelSpec(backbone="small_cnn", width=8, optimizer="adam", learning_rate=0.01)
    >>> result = train("my_images/", "models/round_1", spec, epochs=5)  # doctest: +SKIP
    >>> result.path(MODEL_FILE), result.validation["accuracy"]  # doctest: +SKIP
    ('models/round_1/model.keras', 0.91)
    """
    run = _TrainingRun(source, out_dir, spec, epochs, batch_size, validation_fraction, seed, augment, restart)
    run.load(image_size, channels, preprocessing, strict)
    finished = run.check_resumable()
    if finished is not None:
        if verbose:
            print(f"{out_dir}: already trained ({TRAINING_FILE} says finished); nothing to do", flush=True)
        return finished
    return run.fit(verbose, callbacks or [])


class _TrainingRun:
    """One `train` call: its settings, its data and split, and the steps that fill the output directory."""

    def __init__(self, source, out_dir, spec, epochs, batch_size, validation_fraction, seed, augment, restart=False):
        self.source, self.out_dir = source, str(out_dir)
        self.spec = spec if spec is not None else ModelSpec(learning_rate=0.05)
        if not isinstance(self.spec, ModelSpec):
            raise TypeError(f"Expected `spec` to be a keras_lossal.contracts.ModelSpec. Received: {spec!r}")
        for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("seed", seed, 0)):
            check_integer(name, value, low, integral_floats=True)
        if not 0 <= validation_fraction < 1:
            raise ValueError(f"Expected validation_fraction in [0, 1). Received: {validation_fraction}")
        model_factory.backbone_builder(self.spec.backbone)  # an unknown name, file or factory fails before reading data
        self.backbone_sha256 = model_factory.backbone_fingerprint(self.spec.backbone)
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.validation_fraction, self.augment = float(validation_fraction), bool(augment)
        self.restart = bool(restart)
        self.data: TrainingData | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def load(self, image_size, channels, preprocessing=None, strict: bool = False) -> None:
        """Reads the data and splits it (seeded, stratified)."""
        from keras_lossal import data as data_lib

        data = self.source if isinstance(self.source, TrainingData) else None
        self.data = data or load_training_data(str(self.source), image_size, channels, preprocessing, strict)
        if len(self.data.class_names) < 2:
            raise ValueError(f"Expected at least 2 classes to train a classifier. Received: {self.data.class_names}")
        self.train_positions, self.validation_positions = data_lib.stratified_split(
            self.data.y, self.validation_fraction, self.seed
        )
        if self.validation_fraction and not len(self.validation_positions):
            raise ValueError(f"Expected a validation split: {self.validation_fraction} of {len(self.data.y)} is none")
        if len(self.train_positions) < 2:
            raise ValueError(f"Expected at least 2 training items. Received: {len(self.train_positions)}")
        if self.augment and self.data.x.ndim != 4:
            raise ValueError(f"Expected images (N, H, W, C) to augment. Received inputs of shape {self.data.x.shape}")
        self.data_sha256 = self.data.fingerprint()

    def settings(self) -> dict:
        """What `training.json` records and a resume must match."""
        source = self.source if isinstance(self.source, TrainingData) else os.path.abspath(str(self.source))
        settings = {
            "source": "<TrainingData>" if isinstance(source, TrainingData) else source,
            "data_sha256": self.data_sha256,
            "num_items": int(len(self.data.y)),
            "class_names": self.data.class_names,
            "preprocessing": self.data.preprocessing.get_config(),
            "model": dataclasses.asdict(self.spec),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
            "augment": self.augment,
        }
        if self.backbone_sha256 is not None:  # a .keras backbone: its weights are the initialisation
            settings["backbone_sha256"] = self.backbone_sha256
        return settings

    def check_resumable(self) -> TrainingResult | None:
        """The recorded result of a finished run with these settings; `None` to train; raises for other settings.

        With `restart`, an earlier training is never resumed (`fit` discards it once the model is built).
        """
        from keras_lossal.loop_state import ResumeRefusedError, jsonable

        path = self.path(TRAINING_FILE)
        if not os.path.exists(path):
            if os.path.isdir(self.out_dir) and os.listdir(self.out_dir):
                raise ValueError(f"Expected an empty or new output directory. Received: {self.out_dir!r} holds files")
            return None
        if self.restart:
            return None
        with open(path) as stream:
            recorded = json.load(stream)
        settings = jsonable(self.settings())
        differences = {
            key: (recorded["settings"].get(key), value)
            for key, value in settings.items()
            if recorded["settings"].get(key) != value
        }
        if differences:
            raise ResumeRefusedError(
                f"{path} was written by a training run with other settings or data; refusing to resume. "
                f"Differences (recorded, requested): {_short(differences)}.",
                "Train into a new output directory, or pass restart=True to discard the earlier training.",
            )
        if not recorded.get("finished"):
            return None
        history, validation = recorded["history"], recorded["validation"]
        return TrainingResult(self.out_dir, None, history, validation, self.epochs, self.data.rejects)

    def fit(self, verbose: int, callbacks: list) -> TrainingResult:
        """Trains (or resumes), then writes the model, the preprocessing, the class names and `finished`."""
        from keras_lossal import data as data_lib
        from keras_lossal.callbacks import StopOnNonFiniteLoss

        keras.utils.set_random_seed(self.seed)
        # Built before anything is written, so a backbone that does not fit leaves the directory as it was.
        model = model_factory.build_model(
            self.spec, self.data.preprocessing.input_shape, len(self.data.class_names), with_head=True
        )
        if self.restart:
            self._discard_earlier_training()
        os.makedirs(self.out_dir, exist_ok=True)
        recorder = _EpochRecorder(self, self._recorded_history(), verbose)
        self.write_training(recorder.history, {}, finished=False)
        data = self.data
        train = data_lib.training_pipeline(
            data.x[self.train_positions], data.y[self.train_positions], data.preprocessing,
            batch_size=self.batch_size, augment=self.augment, seed=self.seed,
        )  # fmt: skip
        validation = self._validation_pipeline()
        # Kept until the outputs are written, so a run killed after the last epoch still resumes to the end.
        backup = keras.callbacks.BackupAndRestore(self.path(BACKUP_DIR), delete_checkpoint=False)
        # First, so a NaN loss raises before the epoch's checkpoint or record could keep its weights.
        model.fit(
            train, validation_data=validation, epochs=self.epochs, shuffle=False, verbose=verbose,
            callbacks=[StopOnNonFiniteLoss(), backup, recorder, *callbacks],
        )  # fmt: skip
        metrics = {} if validation is None else model.evaluate(validation, verbose=0, return_dict=True)
        metrics = {key: float(value) for key, value in metrics.items()}
        self._write_outputs(model)
        self.write_training(recorder.history, metrics, finished=True)
        shutil.rmtree(self.path(BACKUP_DIR), ignore_errors=True)
        resumed = self.epochs if recorder.first_epoch is None else recorder.first_epoch
        return TrainingResult(self.out_dir, model, recorder.history, metrics, resumed, self.data.rejects)

    def _discard_earlier_training(self) -> None:
        """Deletes what an earlier training wrote in the directory (a restart); other files stay."""
        for name in (MODEL_FILE, PREPROCESSING_FILE, CLASSES_FILE, TRAINING_FILE, REJECTS_FILE, PARTIAL_MODEL_FILE):
            if os.path.isfile(self.path(name)):
                os.remove(self.path(name))
        shutil.rmtree(self.path(BACKUP_DIR), ignore_errors=True)

    def _validation_pipeline(self):
        from keras_lossal import data as data_lib

        if not len(self.validation_positions):
            return None
        positions = self.validation_positions
        return data_lib.evaluation_pipeline(self.data.x[positions], self.data.y[positions], self.data.preprocessing)

    def _recorded_history(self) -> dict[str, list[float]]:
        path = self.path(TRAINING_FILE)
        if not os.path.exists(path):
            return {}
        with open(path) as stream:
            return json.load(stream).get("history", {})

    def write_training(self, history: dict, validation: dict, finished: bool) -> None:
        from keras_lossal.loop_state import jsonable, write_json_atomic

        payload = {"settings": self.settings(), "history": history, "validation": validation, "finished": finished}
        write_json_atomic(self.path(TRAINING_FILE), jsonable(payload))

    def _write_outputs(self, model) -> None:
        """The three files export reads; the model is written to a temporary name first, then renamed."""
        from keras_lossal.files import atomic_write

        temporary = self.path(PARTIAL_MODEL_FILE)
        model.save(temporary)
        os.replace(temporary, self.path(MODEL_FILE))
        atomic_write(self.path(PREPROCESSING_FILE), self.data.preprocessing.to_json())
        atomic_write(self.path(CLASSES_FILE), json.dumps(self.data.class_names, indent=1))


def _short(differences: dict) -> dict:
    """Long values (class lists, hashes) shortened for a one-line error."""
    return {key: tuple(str(value)[:40] for value in pair) for key, pair in differences.items()}


class _EpochRecorder(keras.callbacks.Callback):
    """Records each finished epoch's logs in `training.json` (after the backup of that epoch) and the first epoch run."""

    def __init__(self, run: _TrainingRun, history: dict[str, list], verbose: int):
        super().__init__()
        self.run, self.history, self.verbose = run, {key: list(values) for key, values in history.items()}, verbose
        self.first_epoch: int | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = int(epoch)
            if epoch and self.verbose:
                print(f"{self.run.out_dir}: resuming after epoch {epoch} of {self.run.epochs}", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            values = self.history.setdefault(key, [])
            del values[epoch:]  # an epoch run again after a resume replaces its earlier record
            values.extend([None] * (epoch - len(values)))
            values.append(float(value))
        self.run.write_training(self.history, {}, finished=False)
