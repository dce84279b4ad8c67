"""keras_lossal.training: train on a folder, a manifest or an .npz; outputs for export; resume after a kill."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_lossal import data, experiment, training
from keras_lossal.labeling import manifest
from keras_lossal.preprocessing import ImagePreprocessing

CLASSES = ("bright", "dark", "mid")


def write_image_folder(root, per_class=12, size=8, seed=0):
    """A folder of class subfolders whose class sets the brightness of 8x8 grayscale PNGs; returns the root."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        level = (220, 30, 120)[label]
        for item in range(per_class):
            pixels = np.clip(rng.normal(level, 20, (size, size, 1)), 0, 255).astype(np.uint8)
            tf.io.write_file(os.path.join(root, name, f"{item:03d}.png"), tf.io.encode_png(pixels))
    return str(root)


def mlp(input_shape, num_classes):
    """A user's backbone factory (`test_training:mlp`)."""
    inputs = keras.Input(input_shape)
    hidden = keras.layers.Dense(16, activation="relu", name="hidden1")(keras.layers.Flatten()(inputs))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden2")(hidden)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(hidden))


def write_tabular_npz(path, count=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (count, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    np.savez(path, x=x, y=y, class_names=np.array(["a", "b", "c", "d"]))
    return str(path)


MLP_SPEC = experiment.ModelSpec(backbone="test_training:mlp", optimizer="adam", learning_rate=0.02)


def test_training_on_a_folder_writes_what_export_reads(tmp_path):
    source = write_image_folder(tmp_path / "images")
    out = str(tmp_path / "model")
    spec = experiment.ModelSpec(backbone="small_cnn", width=4, optimizer="adam", learning_rate=0.02)
    result = training.train(source, out, spec, epochs=3, batch_size=8, validation_fraction=0.25, verbose=0)
    assert sorted(os.listdir(out)) == sorted(
        [training.MODEL_FILE, training.PREPROCESSING_FILE, training.CLASSES_FILE, training.TRAINING_FILE]
    )
    assert json.load(open(os.path.join(out, training.CLASSES_FILE))) == list(CLASSES)
    preprocessing = ImagePreprocessing.from_config(json.load(open(os.path.join(out, training.PREPROCESSING_FILE))))
    assert preprocessing.input_shape == (8, 8, 1) and preprocessing.scale == pytest.approx(1 / 255)
    model = keras.saving.load_model(os.path.join(out, training.MODEL_FILE))
    assert type(model).__name__ == "LossLearningModel"
    images = data.labeled_images(source)
    predicted = model.predict(preprocessing(images.x).numpy(), verbose=0)
    assert predicted["output"].shape == (36, 3) and predicted["predicted_loss"].shape == (36,)
    record = json.load(open(os.path.join(out, training.TRAINING_FILE)))
    assert record["finished"] and len(record["history"]["loss"]) == 3 and "val_accuracy" in record["history"]
    assert record["settings"]["class_names"] == list(CLASSES) and record["settings"]["num_items"] == 36
    assert set(result.validation) >= {"accuracy", "ranking_accuracy"}
    # The split is seeded and stratified: 3 of every class's 12 held out.
    run = training._TrainingRun(source, out, spec, 3, 8, 0.25, 0, False)
    run.load(None, None)
    assert np.bincount(images.y[run.validation_positions]).tolist() == [3, 3, 3]


def test_a_manifest_and_an_npz_train_too(tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=6)
    path = os.path.join(folder, "labeled.jsonl")
    records = [record for record in manifest.from_directory(folder) if record["label"] != "mid"]
    manifest.write_manifest(path, records)
    loaded = training.load_training_data(path)
    assert loaded.class_names == ["bright", "dark"] and loaded.x.shape == (12, 8, 8, 1)
    tabular = training.load_training_data(write_tabular_npz(tmp_path / "tabular.npz"))
    assert tabular.class_names == ["a", "b", "c", "d"]
    assert isinstance(tabular.preprocessing, data.IdentityPreprocessing)
    result = training.train(tabular, str(tmp_path / "tabular"), MLP_SPEC, epochs=8, batch_size=16, verbose=0)
    assert result.validation["accuracy"] > 0.5  # chance: 0.25
    config = json.load(open(tmp_path / "tabular" / training.PREPROCESSING_FILE))
    assert data.preprocessing_from_config(config) == data.IdentityPreprocessing((6,))


class _Interrupt(keras.callbacks.Callback):
    """Stops the process' training after `epoch` finished, as a kill would (the checkpoint is written)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("killed")


class _CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_a_killed_run_resumes_after_its_last_finished_epoch(tmp_path):
    source, out = write_tabular_npz(tmp_path / "tabular.npz"), str(tmp_path / "model")
    settings = dict(spec=MLP_SPEC, epochs=4, batch_size=16, verbose=0)
    with pytest.raises(RuntimeError, match="killed"):
        training.train(source, out, callbacks=[_Interrupt(1)], **settings)
    assert not os.path.exists(os.path.join(out, training.MODEL_FILE))
    assert not json.load(open(os.path.join(out, training.TRAINING_FILE)))["finished"]
    counter = _CountEpochs()
    result = training.train(source, out, callbacks=[counter], **settings)
    assert counter.epochs == [2, 3] and result.resumed_from_epoch == 2
    assert len(result.history["loss"]) == 4 and None not in result.history["loss"]
    assert os.path.exists(os.path.join(out, training.MODEL_FILE))
    assert not os.path.exists(os.path.join(out, training.BACKUP_DIR))
    # A finished directory is not trained again; other settings or other data are refused.
    again = training.train(source, out, callbacks=[counter], **settings)
    assert again.model is None and counter.epochs == [2, 3] and again.history == result.history
    with pytest.raises(ValueError, match="epochs"):
        training.train(source, out, **{**settings, "epochs": 5})
    with pytest.raises(ValueError, match="data_sha256"):
        training.train(write_tabular_npz(tmp_path / "tabular.npz", seed=1), out, **settings)


def test_bad_inputs_are_refused_with_the_value(tmp_path):
    with pytest.raises(ValueError, match="manifest"):
        training.load_training_data(str(tmp_path / "data.txt"))
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"Expected arrays \['x', 'y'\]"):
        training.load_training_data(str(tmp_path / "bad.npz"))
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="empty or new output directory"):
        training.train(write_tabular_npz(tmp_path / "t.npz"), str(occupied), MLP_SPEC, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="augment"):
        training.train(write_tabular_npz(tmp_path / "t.npz"), str(tmp_path / "m"), MLP_SPEC, augment=True, verbose=0)


def test_the_next_round_starts_from_the_last_rounds_backbone(tmp_path):
    source = write_tabular_npz(tmp_path / "tabular.npz")
    first = training.train(source, str(tmp_path / "round_1"), MLP_SPEC, epochs=2, batch_size=16, verbose=0)
    previous = str(tmp_path / "round_1" / training.MODEL_FILE)
    # Learning rate 0: the new model keeps its initialisation, which must be the last round's backbone.
    frozen = experiment.ModelSpec(backbone=previous, learning_rate=0.0)
    second = training.train(source, str(tmp_path / "round_2"), frozen, epochs=1, batch_size=16, verbose=0)
    for old, new in zip(first.model.backbone.get_weights(), second.model.backbone.get_weights()):
        np.testing.assert_array_equal(old, new)
    recorded = json.load(open(tmp_path / "round_2" / training.TRAINING_FILE))["settings"]
    assert recorded["backbone_sha256"] == experiment.backbone_fingerprint(previous)
