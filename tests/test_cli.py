"""`lossal run/report/plot` end to end on tiny Fashion-MNIST-format data."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from serving_fixtures import lossal_export  # noqa: F401 - pytest fixture
from test_data import write_fake_fashion_mnist

from keras_lossal import cli


def _run_args(data_dir, out):
    return [
        "run",
        "--dataset", "fashion_mnist",
        "--data-dir", data_dir,
        "--backbone", "small_cnn",
        "--width", "2",
        "--seeds", "0,1",
        "--cycles", "2",
        "--initial-size", "10",
        "--query-size", "5",
        "--subset-size", "20",
        "--epochs", "1",
        "--batch-size", "8",
        "--lr", "0.01",
        "--out", out,
        "--quiet",
    ]  # fmt: skip


@pytest.mark.slow  # end to end, 20-30 s on 2 cores
def test_run_report_plot_end_to_end(tmp_path, capsys):
    data_dir, out = str(tmp_path / "fashion"), str(tmp_path / "out")
    write_fake_fashion_mnist(data_dir, train=60, test=16)
    assert cli.main(_run_args(data_dir, out)) == 0  # the default arms: budget_switch (recommended) and random
    for strategy in ("budget_switch", "random"):
        for seed in (0, 1):
            state = json.load(open(os.path.join(out, strategy, f"seed_{seed}", "state.json")))
            assert state["finished"] and [c["num_labeled"] for c in state["cycles"]] == [10, 15]
            assert len(set(state["labeled_indices"])) == 15
            assert state["config"]["preprocessing"]["mean"] == [0.286]
    # Both strategies start from the same seeded initial set, and then pick differently.
    labeled = [
        json.load(open(os.path.join(out, s, "seed_1", "state.json")))["labeled_indices"]
        for s in ("budget_switch", "random")
    ]
    assert labeled[0][:10] == labeled[1][:10] and set(labeled[0]) != set(labeled[1])

    capsys.readouterr()
    assert cli.main(["report", out]) == 0
    printed = capsys.readouterr().out
    assert "| strategy | 10 | 15 | AUC (10–15) |" in printed and "| budget_switch |" in printed
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["strategies"]["random"]["seeds"] == [0, 1] and report["strategies"]["random"]["runs"] == [2, 2]
    rows = list(csv.DictReader(open(os.path.join(out, "report.csv"))))
    assert [(r["strategy"], r["num_labeled"]) for r in rows] == [
        ("budget_switch", "10"), ("budget_switch", "15"), ("random", "10"), ("random", "15")
    ]  # fmt: skip

    assert cli.main(["plot", out, "-o", str(tmp_path / "curve.png"), "--quiet"]) == 0
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"

    # Running the same command again resumes: finished runs are left as they are.
    before = open(os.path.join(out, "random", "seed_0", "state.json")).read()
    assert cli.main(_run_args(data_dir, out)) == 0
    assert open(os.path.join(out, "random", "seed_0", "state.json")).read() == before


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--seeds", "zero", "--out", "x"])
    assert exit_info.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_report_on_a_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cli.main(["report", str(tmp_path / "nowhere")])


@pytest.mark.skipif(
    shutil.which("lossal") is None and not os.path.exists(".venv/bin/lossal"), reason="console script not installed"
)
def test_console_script_lists_the_commands():
    executable = shutil.which("lossal") or ".venv/bin/lossal"
    completed = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0
    for command in ("run", "report", "plot"):
        assert command in completed.stdout


def _tensorflow_log_lines(stderr: str) -> list[str]:
    markers = ("WARNING: All log messages before absl", "cudart_stub", "cpu_feature_guard", "cuda_platform")
    return [
        line for line in stderr.splitlines() if line[:1] in "IWEF" and line[1:5].isdigit() or line.startswith(markers)
    ]


def test_cli_is_quiet_unless_verbose(tmp_path, lossal_export):  # noqa: F811 - pytest fixture
    import tensorflow as tf

    folder = tmp_path / "pool"
    folder.mkdir()
    for index in range(3):
        image = np.random.default_rng(index).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        (folder / f"{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    command = [sys.executable, "-m", "keras_lossal.cli", "triage", str(folder), "--model", lossal_export["base"]]
    quiet = subprocess.run([*command, "-o", str(tmp_path / "q")], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and "scored 3, failed 0" in quiet.stdout
    assert quiet.stderr == ""
    # As the Makefile runs it: level 2 lets ERROR lines through, such as a failed CUDA probe (cuInit) without a GPU.
    level_2 = subprocess.run(
        [*command, "-o", str(tmp_path / "q2")], capture_output=True, text=True, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    assert level_2.returncode == 0 and level_2.stderr == ""
    verbose = subprocess.run(
        [*command, "-o", str(tmp_path / "v"), "--verbose"], capture_output=True, text=True, env=env, timeout=300
    )
    assert verbose.returncode == 0 and "scored 3, failed 0" in verbose.stdout
    assert len(_tensorflow_log_lines(verbose.stderr)) >= 1  # TensorFlow's start-up lines, on this CPU-only machine


def test_run_on_a_folder_of_your_images_with_your_backbone(tmp_path, capsys):
    from test_training import write_image_folder

    source, out = write_image_folder(tmp_path / "images", per_class=10), str(tmp_path / "out")
    argv = ["run", "--dataset", source, "--test-fraction", "0.3", "--backbone", "test_experiment:tiny_backbone",
            "--strategies", "random,entropy", "--cycles", "2", "--initial-size", "6", "--query-size", "4",
            "--subset-size", "0", "--epochs", "1", "--batch-size", "4", "--optimizer", "adam", "--lr", "0.01",
            "--out", out, "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    settings = json.load(open(os.path.join(out, "experiment.json")))
    assert settings["dataset"] == "images" and settings["model"]["backbone"] == "test_experiment:tiny_backbone"
    for strategy in ("random", "entropy"):
        state = json.load(open(os.path.join(out, strategy, "seed_0", "state.json")))
        # 30 images, 3 of each class's 10 held out: a pool of 21, a test set of 9.
        assert state["config"]["pool_size"] == 21 and state["config"]["test_size"] == 9
        assert [cycle["num_labeled"] for cycle in state["cycles"]] == [6, 10]
    capsys.readouterr()
    bad = ["run", "--dataset", str(tmp_path / "nowhere.jsonl"), "--out", out, "--quiet"]
    assert cli.main(bad) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("lossal run: ") and "nowhere.jsonl" in error[0]
