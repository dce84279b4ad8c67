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
