"""`lossal run` through the command line: your images with unreadable files, one-line errors, resume advice, no retracing."""

import json
import logging
import os

import pytest
from test_data import BAD_IMAGES, write_bad_images, write_fake_fashion_mnist
from test_training import write_image_folder

from keras_lossal import cli, data

TINY = ["--backbone", "small_cnn", "--width", "2", "--epochs", "1", "--batch-size", "4", "--lr", "0.01",
        "--initial-size", "6", "--query-size", "3", "--subset-size", "0"]  # fmt: skip


def _short_error(capsys):
    """The stderr of a refused command: one short line, never a traceback."""
    error = capsys.readouterr().err.strip().splitlines()
    assert 0 < len(error) < 5 and error[0].startswith("lossal run: "), error
    assert not any("Traceback" in line for line in error), error
    return error[0]


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("fashon_mnist", "Unknown dataset 'fashon_mnist': no such folder or manifest, and not a TFDS dataset. "
                         "Did you mean 'fashion_mnist'"),
        ("./nope_dir", "No such folder or manifest: './nope_dir'. Expected fashion_mnist (local IDX files)"),
        ("x.npz", "No such folder or manifest: 'x.npz'. Expected fashion_mnist (local IDX files)"),
        ("missing.jsonl", "No such file: 'missing.jsonl'"),
    ],
)  # fmt: skip
def test_unknown_datasets_and_paths_are_one_line(tmp_path, capsys, dataset, message):
    assert cli.main(["run", "--dataset", dataset, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert message in _short_error(capsys)
    assert not os.path.exists(tmp_path / "out")


def test_a_nan_learning_rate_is_refused_before_anything_runs(tmp_path, capsys):
    for flags in (["--lr", "nan"], ["--lr", "-0.1"]):
        assert cli.main(["run", "--dataset", "./nope_dir", "--out", str(tmp_path / "out"), *flags]) == 2
        assert "expected --lr to be a finite number > 0" in _short_error(capsys)
    assert cli.main(["run", "--dataset", "./nope_dir", "--out", str(tmp_path / "out"), "--lr-schedule", "2:nan"]) == 2
    assert "every rate a finite number >= 0" in _short_error(capsys)


@pytest.mark.timeout(180)  # a FIFO read without the guard blocks forever
def test_your_images_with_unreadable_files_are_skipped_and_reported_or_refused_with_strict(tmp_path, capsys):
    folder = write_bad_images(write_image_folder(tmp_path / "images", per_class=6))
    out = str(tmp_path / "out")
    argv = ["run", "--dataset", folder, "--strategies", "random", "--cycles", "2", *TINY, "--quiet"]
    assert cli.main([*argv, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert f"skipped {len(BAD_IMAGES)} unreadable image(s), listed with the reason in {out}/rejects.jsonl" in printed
    for name, word in BAD_IMAGES.items():
        assert f"{os.path.join(folder, name)}: " in printed and word in printed, name
    rejects = [json.loads(line) for line in open(os.path.join(out, data.REJECTS_FILE))]
    assert sorted(reject["id"] for reject in rejects) == sorted(BAD_IMAGES)
    state = json.load(open(os.path.join(out, "random", "seed_0", "state.json")))
    assert state["finished"] and state["config"]["pool_size"] + state["config"]["test_size"] == 18
    assert cli.main([*argv, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert "Unreadable image" in _short_error(capsys) and not os.path.exists(tmp_path / "strict")


def test_a_refused_resume_names_the_cli_flags_and_restart_reruns(tmp_path, capsys):
    data_dir, out = str(tmp_path / "fashion"), str(tmp_path / "out")
    write_fake_fashion_mnist(data_dir, train=40, test=8)
    argv = ["run", "--dataset", "fashion_mnist", "--data-dir", data_dir, "--strategies", "random", "--out", out,
            *TINY, "--quiet"]  # fmt: skip
    assert cli.main([*argv, "--cycles", "1"]) == 0
    state = open(os.path.join(out, "random", "seed_0", "state.json")).read()
    assert cli.main([*argv, "--cycles", "2"]) == 2
    error = _short_error(capsys)
    assert "refusing to resume" in error and "--restart" in error and "--out" in error
    assert "restart=True" not in error and "work_dir" not in error and "out_dir" not in error
    assert open(os.path.join(out, "random", "seed_0", "state.json")).read() == state  # untouched
    assert cli.main([*argv, "--cycles", "2", "--restart"]) == 0
    rerun = json.load(open(os.path.join(out, "random", "seed_0", "state.json")))
    assert rerun["finished"] and [cycle["num_labeled"] for cycle in rerun["cycles"]] == [6, 9]
    assert cli.main([*argv, "--cycles", "2", "--training-seed", "1"]) == 2  # another training is another run
    assert "'training_seed': (None, 1)" in _short_error(capsys)
    assert cli.main([*argv, "--cycles", "2", "--training-seed", "1", "--out", out + "_train1"]) == 0
    other = json.load(open(os.path.join(out + "_train1", "random", "seed_0", "state.json")))
    assert other["config"]["training_seed"] == 1 and other["labeled_indices"] == rerun["labeled_indices"]


def test_cycles_reuse_the_compiled_functions_so_nothing_is_retraced(tmp_path, caplog):
    data_dir, out = str(tmp_path / "fashion"), str(tmp_path / "out")
    write_fake_fashion_mnist(data_dir, train=40, test=8)
    argv = ["run", "--dataset", "fashion_mnist", "--data-dir", data_dir, "--strategies", "learning_loss,random",
            "--cycles", "4", "--out", out, *TINY, "--quiet"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        assert cli.main(argv) == 0
    assert not [record for record in caplog.records if "retracing" in record.getMessage()]
