"""`lossal export` (keras_lossal/commands/export.py) through its parser and `run`."""

import argparse
import json
import os
import subprocess
import sys

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
