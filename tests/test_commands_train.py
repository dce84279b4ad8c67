"""`lossal train` through its module's `add_parser`/`run`: outputs, resume, one-line errors, no TensorFlow at import."""

import argparse
import json
import os
import subprocess
import sys

import pytest
from test_training import write_image_folder, write_tabular_npz

from keras_lossal import training
from keras_lossal.commands import train as train_command


def _parse(argv):
    parser = argparse.ArgumentParser(prog="lossal")
    train_command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _main(argv):
    args = _parse(argv)
    return args.func(args)


def test_train_a_folder_end_to_end(tmp_path, capsys):
    source, out = write_image_folder(tmp_path / "images", per_class=8), str(tmp_path / "model")
    argv = ["train", "--data", source, "--out", out, "--backbone", "small_cnn", "--width", "4", "--epochs", "2",
            "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01", "--validation-fraction", "0.25",
            "--image-size", "12x10", "--channels", "3"]  # fmt: skip
    assert _main(argv) == 0
    printed = capsys.readouterr().out
    assert "validation: accuracy" in printed and os.path.join(out, training.MODEL_FILE) in printed
    preprocessing = json.load(open(os.path.join(out, training.PREPROCESSING_FILE)))
    assert (preprocessing["height"], preprocessing["width"], preprocessing["channels"]) == (12, 10, 3)
    assert json.load(open(os.path.join(out, training.CLASSES_FILE))) == ["bright", "dark", "mid"]
    settings = json.load(open(os.path.join(out, training.TRAINING_FILE)))["settings"]
    assert settings["model"]["recipe"] == "recommended" and settings["model"]["backbone"] == "small_cnn"
    # The same command again: finished, nothing trained.
    assert _main(argv) == 0 and "already trained" in capsys.readouterr().out


def test_mistakes_are_one_line_with_exit_2(tmp_path, capsys):
    npz = write_tabular_npz(tmp_path / "t.npz")
    cases = [
        (["--data", str(tmp_path / "missing.jsonl")], "No such file"),
        (["--data", npz, "--backbone", "resnet50"], "Expected backbone in"),
        (["--data", npz, "--backbone", "nowhere:factory"], "importable backbone factory"),
        (["--data", npz, "--epochs", "0"], "--epochs"),
        (["--data", npz, "--backbone", "test_training:mlp", "--augment"], "augment"),
    ]
    for extra, message in cases:
        code = _main(["train", "--out", str(tmp_path / "out"), "--quiet", *extra])
        error = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(error) == 1 and error[0].startswith("lossal train: "), (extra, error)
        assert message in error[0], (message, error)
        assert not os.path.exists(tmp_path / "out")  # refused before anything was written
    with pytest.raises(SystemExit):
        _parse(["train", "--data", npz, "--out", "o", "--image-size", "0x4"])


def test_importing_the_command_loads_no_tensorflow():
    code = "import sys, keras_lossal.commands.train; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__))).returncode == 0


def test_raw_inputs_train_a_signal_npz_unchanged(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    x = np.sin(np.linspace(0, 6, 16))[None, :, None] * (1 + 2 * y[:, None, None]) + rng.normal(0, 0.1, (60, 16, 2))
    np.savez(tmp_path / "signals.npz", x=x.astype(np.float32), y=y)
    out = str(tmp_path / "model")
    argv = ["train", "--data", str(tmp_path / "signals.npz"), "--out", out, "--raw-inputs", "--backbone",
            "test_training:mlp", "--epochs", "1", "--batch-size", "16", "--quiet"]  # fmt: skip
    assert _main(argv) == 0
    assert json.load(open(os.path.join(out, training.PREPROCESSING_FILE))) == {
        "kind": "identity",
        "input_shape": [16, 2],
    }


def _short_error(capsys, command="train"):
    """The stderr of a refused command: one short line, never a traceback."""
    error = capsys.readouterr().err.strip().splitlines()
    assert 0 < len(error) < 5 and error[0].startswith(f"lossal {command}: "), error
    assert not any("Traceback" in line for line in error), error
    return error[0]


FAST = ["--backbone", "small_cnn", "--width", "2", "--epochs", "1", "--batch-size", "8", "--optimizer", "adam"]


@pytest.mark.timeout(120)  # a FIFO read without the guard blocks forever
def test_unreadable_images_are_skipped_and_reported_or_refused_with_strict(tmp_path, capsys):
    from test_data import BAD_IMAGES, write_bad_images
    from test_training import write_image_folder

    from keras_lossal import data

    folder = write_bad_images(write_image_folder(tmp_path / "images", per_class=4))
    out = str(tmp_path / "model")
    assert _main(["train", "--data", folder, "--out", out, *FAST, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {len(BAD_IMAGES)} unreadable image(s)" in printed
    for name, word in BAD_IMAGES.items():
        assert f"{os.path.join(folder, name)}: " in printed and word in printed, name
    rejects = [json.loads(line) for line in open(os.path.join(out, data.REJECTS_FILE))]
    assert sorted(reject["id"] for reject in rejects) == sorted(BAD_IMAGES)
    assert json.load(open(os.path.join(out, training.TRAINING_FILE)))["settings"]["num_items"] == 12
    # --strict: refused in one line naming a file, nothing written.
    strict_out = str(tmp_path / "strict")
    assert _main(["train", "--data", folder, "--out", strict_out, *FAST, "--strict"]) == 2
    assert "Unreadable image" in _short_error(capsys) and not os.path.exists(strict_out)


@pytest.mark.timeout(120)
def test_a_fifo_named_in_the_manifest_is_skipped_and_a_fifo_manifest_refused(tmp_path, capsys):
    from test_training import write_image_folder

    from keras_lossal.labeling import manifest

    folder = write_image_folder(tmp_path / "images", per_class=4)
    os.mkfifo(tmp_path / "pipe.png")
    records = [{**record, "path": os.path.join(folder, record["path"])} for record in manifest.from_directory(folder)]
    path = str(tmp_path / "labeled.jsonl")
    manifest.write_manifest(path, [*records, {"id": "pipe", "path": str(tmp_path / "pipe.png"), "label": "dark"}])
    assert _main(["train", "--data", path, "--out", str(tmp_path / "model"), *FAST, "--quiet"]) == 0
    assert "pipe.png: unreadable: not a regular file (a FIFO)" in capsys.readouterr().out
    os.mkfifo(tmp_path / "fifo.jsonl")
    assert _main(["train", "--data", str(tmp_path / "fifo.jsonl"), "--out", str(tmp_path / "m2"), *FAST]) == 2
    assert "not a regular file (a FIFO)" in _short_error(capsys)


def test_a_nan_learning_rate_is_refused_and_a_diverging_loss_stops_training_unfinished(tmp_path, capsys):
    npz = write_tabular_npz(tmp_path / "t.npz")
    for rate in ("nan", "inf", "0", "-1"):
        assert _main(["train", "--data", npz, "--out", str(tmp_path / "out"), "--lr", rate]) == 2
        assert "expected --lr to be a finite number > 0" in _short_error(capsys)
        assert not os.path.exists(tmp_path / "out")
    out = str(tmp_path / "diverged")
    argv = ["train", "--data", npz, "--out", out, "--backbone", "test_training:mlp", "--lr", "1e30", "--epochs", "3",
            "--batch-size", "16", "--quiet"]  # fmt: skip
    assert _main(argv) != 0
    assert "Training stopped: the loss became" in _short_error(capsys)
    assert not any(os.path.exists(os.path.join(out, name)) for name in (training.MODEL_FILE, training.CLASSES_FILE))
    assert not os.path.exists(os.path.join(out, training.PREPROCESSING_FILE))
    assert json.load(open(os.path.join(out, training.TRAINING_FILE)))["finished"] is False


def test_npz_labels_with_a_gap_are_refused_naming_them(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "gap.npz", x=np.zeros((8, 3), np.float32), y=np.array([0, 1, 2, 5, 0, 1, 2, 5]))
    assert _main(["train", "--data", str(tmp_path / "gap.npz"), "--out", str(tmp_path / "out")]) == 2
    error = _short_error(capsys)
    assert "Received labels [0, 1, 2, 5] (no items of [3, 4])" in error and "0..C-1" in error
    # With class names, one per label index, the labels mean what they say.
    names = np.array(["a", "b", "c", "d", "e", "f"])
    np.savez(
        tmp_path / "named.npz", x=np.zeros((8, 3), np.float32), y=np.array([0, 1, 2, 5, 0, 1, 2, 5]), class_names=names
    )
    assert training.load_training_data(str(tmp_path / "named.npz")).class_names == names.tolist()


def test_quiet_hides_only_the_progress_bars(tmp_path, capsys):
    npz = write_tabular_npz(tmp_path / "t.npz")
    out = str(tmp_path / "model")
    argv = ["train", "--data", npz, "--out", out, "--backbone", "test_training:mlp", "--optimizer", "adam", "--lr",
            "0.01", "--epochs", "2", "--batch-size", "16", "--quiet"]  # fmt: skip
    assert _main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("validation: accuracy ") and printed[1].startswith("wrote ") and len(printed) == 2
    assert os.path.join(out, training.MODEL_FILE) in printed[1]


def test_a_refused_resume_names_the_cli_flag_and_restart_retrains(tmp_path, capsys):
    npz = write_tabular_npz(tmp_path / "t.npz")
    out = str(tmp_path / "model")
    argv = ["train", "--data", npz, "--out", out, "--backbone", "test_training:mlp", "--optimizer", "adam", "--lr",
            "0.01", "--batch-size", "16", "--quiet"]  # fmt: skip
    assert _main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert _main([*argv, "--epochs", "2"]) == 2
    error = _short_error(capsys)
    assert "refusing to resume" in error and "--restart" in error and "--out" in error
    assert "restart=True" not in error and "out_dir" not in error
    assert _main([*argv, "--epochs", "2", "--restart"]) == 0
    record = json.load(open(os.path.join(out, training.TRAINING_FILE)))
    assert record["finished"] and record["settings"]["epochs"] == 2 and len(record["history"]["loss"]) == 2
    with pytest.raises(ValueError, match=r"refusing to resume.*restart=True"):  # the Python API names its argument
        training.train(npz, out, training_spec(), epochs=3, batch_size=16, verbose=0)


def training_spec():
    from keras_lossal import experiment

    return experiment.ModelSpec(backbone="test_training:mlp", optimizer="adam", learning_rate=0.01)
