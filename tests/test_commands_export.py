"""`lossal export` (keras_lossal/commands/export.py) through its parser and `run`."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_lossal.commands import export as export_command

sys.path.insert(0, os.path.dirname(__file__))
from serving_fixtures import LABELS, PREP, make_model  # noqa: E402


def run_export(capsys, *argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="lossal")
    export_command.add_parser(parser.add_subparsers())
    code = export_command.run(parser.parse_args(["export", *argv]))
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    path = str(folder / "learning_loss_model.keras")
    make_model().save(path)
    (folder / "preprocessing.json").write_text(PREP.to_json())
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return path


def test_exports_the_next_version_and_names_the_serving_model(saved_model, tmp_path, capsys):
    from keras_lossal.export import read_export_config
    from keras_lossal.serving import InProcessScorer

    base = str(tmp_path / "models" / "lossal")
    labels = os.path.join(os.path.dirname(saved_model), "labels.txt")
    code, printed, _ = run_export(
        capsys, saved_model, "--base-path", base, "--labels", labels, "--model-name", "triage"
    )
    assert (code, printed) == (0, os.path.join(base, "1"))
    config = read_export_config(printed)
    # preprocessing.json beside the model was found: the image signatures and their limits are exported.
    assert config["model_name"] == "triage" and config["labels"] == LABELS
    assert config["preprocessing"] == json.loads(PREP.to_json()) and "score_image_bytes" in config["signatures"]
    code, printed, _ = run_export(capsys, saved_model, "--base-path", base, "--labels", ",".join(LABELS))
    assert (code, printed) == (0, os.path.join(base, "2"))
    assert InProcessScorer(base).version == 2  # what triage scores with next
    code, printed, error = run_export(capsys, saved_model, "--base-path", base, "--version", "1", "--no-warmup")
    assert code == 2 and printed == "" and len(error.splitlines()) == 1
    assert "Version 1 already exists" in error and "refusing to overwrite" in error
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_class_names_default_to_classes_json_beside_the_model(saved_model, tmp_path, capsys):
    import shutil

    from keras_lossal.export import read_export_config

    trained = tmp_path / "train_out"  # what lossal train writes: model.keras, preprocessing.json, classes.json
    trained.mkdir()
    shutil.copy(saved_model, trained / "model.keras")
    (trained / "preprocessing.json").write_text(PREP.to_json())
    (trained / "classes.json").write_text(json.dumps(["coat", "shirt", "bag"]))
    code, printed, _ = run_export(capsys, str(trained / "model.keras"), "--base-path", str(tmp_path / "m"))
    assert code == 0 and read_export_config(printed)["labels"] == ["coat", "shirt", "bag"]
    code, _, error = run_export(capsys, str(trained / "model.keras"), "--base-path", str(tmp_path / "m"),
                                "--labels", str(trained / "preprocessing.json"))  # fmt: skip
    assert code == 2 and "expected a JSON list of class names" in error


def test_bad_arguments_are_one_line_errors_with_the_value(saved_model, tmp_path, capsys):
    base = str(tmp_path / "lossal")
    cases = [
        ((str(tmp_path / "missing.keras"), "--base-path", base), "no such model file"),
        ((str(tmp_path / "model.h5"), "--base-path", base), "expected a .keras file"),
        ((saved_model, "--base-path", base, "--version", "-1"), "expected --version >= 0. Received: -1"),
        ((saved_model, "--base-path", base, "--labels", "cat,dog"), "Expected 3 labels (one per class)"),
        ((saved_model, "--base-path", base, "--preprocessing", str(tmp_path / "bad.json")), "bad.json"),
    ]
    (tmp_path / "bad.json").write_text("{not json")
    for argv, message in cases:
        code, printed, error = run_export(capsys, *argv)
        assert code == 2 and printed == "" and len(error.splitlines()) == 1, (argv, error)
        assert error.startswith("lossal export: ") and message in error, (argv, error)
    assert not os.path.exists(base) or os.listdir(base) == []


def test_importing_the_command_loads_no_tensorflow():
    code = "import sys, keras_lossal.commands.export; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"


def assert_one_line_refusal(code, printed, error, *fragments):
    assert code == 2 and printed == "", (code, printed)
    assert len(error.splitlines()) < 5 and "Traceback" not in error, error
    assert error.startswith("lossal export: ") and all(fragment in error for fragment in fragments), error


def test_file_names_match_what_lossal_train_writes():
    from keras_lossal import training

    names = (export_command.PREPROCESSING_FILE, export_command.CLASSES_FILE, export_command.TRAINING_FILE)
    assert names == (training.PREPROCESSING_FILE, training.CLASSES_FILE, training.TRAINING_FILE)


def test_an_unfinished_training_directory_is_refused(saved_model, tmp_path, capsys):
    import shutil

    trained = tmp_path / "train_out"
    trained.mkdir()
    shutil.copy(saved_model, trained / "model.keras")
    # Killed after model.keras was renamed into place, before preprocessing.json and classes.json.
    (trained / "training.json").write_text(json.dumps({"settings": {}, "history": {}, "finished": False}))
    base = tmp_path / "models"
    code, printed, error = run_export(capsys, str(trained / "model.keras"), "--base-path", str(base))
    assert_one_line_refusal(code, printed, error, "unfinished lossal train directory", "training.json does not say",
                            "preprocessing.json, classes.json not written")  # fmt: skip
    # Marked finished, but a file export needs is gone: refused, naming that file, unless a flag stands in.
    (trained / "training.json").write_text(json.dumps({"finished": True}))
    (trained / "preprocessing.json").write_text(PREP.to_json())
    code, printed, error = run_export(capsys, str(trained / "model.keras"), "--base-path", str(base))
    assert_one_line_refusal(code, printed, error, "classes.json missing from the lossal train directory")
    assert "preprocessing.json" not in error
    assert not base.exists()
    code, printed, _ = run_export(capsys, str(trained / "model.keras"), "--base-path", str(base), "--no-warmup",
                                  "--labels", "coat,shirt,bag")  # fmt: skip
    assert (code, printed) == (0, str(base / "1"))


def test_a_model_with_a_nan_weight_is_refused_naming_the_variable(tmp_path, capsys):
    from keras_lossal.export import export_for_serving

    model = make_model()
    variable = model.backbone.trainable_weights[3]
    values = np.array(variable.numpy())
    values.flat[1] = np.nan
    variable.assign(values)
    path = str(tmp_path / "diverged.keras")
    model.save(path)
    base = tmp_path / "models"
    code, printed, error = run_export(capsys, path, "--base-path", str(base), "--labels", ",".join(LABELS))
    assert_one_line_refusal(code, printed, error, "non-finite weights", repr(variable.path), "1 NaN/inf value(s)")
    with pytest.raises(ValueError, match="non-finite weights"):
        export_for_serving(model, str(base))
    assert not base.exists()  # refused before the base path was created


def test_a_base_path_that_is_a_file_or_not_writable_is_a_one_line_error(saved_model, tmp_path, capsys):
    a_file = tmp_path / "lossal"
    a_file.write_text("not a directory")
    code, printed, error = run_export(capsys, saved_model, "--base-path", str(a_file), "--no-warmup")
    assert_one_line_refusal(code, printed, error, repr(str(a_file)), "it is a file")
    # Tests run as root, so chmod does not stop a write; a path under a file cannot be written by anyone.
    under_a_file = str(a_file / "models" / "lossal")
    code, printed, error = run_export(capsys, saved_model, "--base-path", under_a_file, "--no-warmup")
    assert_one_line_refusal(code, printed, error, "Cannot write an export under the base path", "Not a directory")
    assert a_file.read_text() == "not a directory"


def test_the_command_line_refusal_is_one_line_without_a_traceback(saved_model, tmp_path):
    (tmp_path / "base").write_text("a file")
    command = [sys.executable, "-m", "keras_lossal.cli", "export", saved_model, "--base-path", str(tmp_path / "base")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) < 5 and "Traceback" not in result.stderr, result.stderr


def test_an_export_of_a_training_directory_records_what_it_was_trained_on(saved_model, tmp_path, capsys):
    import shutil

    from keras_lossal.export.config import read_export_config

    trained = tmp_path / "train_out"
    trained.mkdir()
    shutil.copy(saved_model, trained / "model.keras")
    (trained / "preprocessing.json").write_text(PREP.to_json())
    (trained / "classes.json").write_text(json.dumps(LABELS))
    settings = {"num_items": 48, "data_sha256": "ab" * 32, "epochs": 2}
    (trained / "training.json").write_text(json.dumps({"settings": settings, "finished": True}))
    code, printed, _ = run_export(
        capsys, str(trained / "model.keras"), "--base-path", str(tmp_path / "a"), "--no-warmup"
    )
    assert code == 0 and read_export_config(printed)["training"] == {"num_items": 48, "data_sha256": "ab" * 32}
    # A model saved by hand (no training.json beside it) records nothing.
    code, printed, _ = run_export(capsys, saved_model, "--base-path", str(tmp_path / "b"), "--no-warmup",
                                  "--preprocessing", str(trained / "preprocessing.json"))  # fmt: skip
    assert code == 0 and "training" not in read_export_config(printed)
