"""`lossal ingest` (keras_lossal/commands/ingest.py): arguments, summary, one-line errors with exit code 2."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from keras_lossal.commands import ingest

DATA = os.path.join(os.path.dirname(__file__), "data", "labelstudio")


def run(capsys, *argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="lossal")
    ingest.add_parser(parser.add_subparsers())
    capsys.readouterr()
    code = ingest.run(parser.parse_args(["ingest", *argv]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_summary_paragraph_and_rejects_file(capsys, tmp_path):
    labeled = tmp_path / "labeled.jsonl"
    code, out, err = run(
        capsys, os.path.join(DATA, "export.json"), "--manifest", str(labeled), "--classes", "cat, dog",
        "--document-root", str(tmp_path),
    )  # fmt: skip
    rejects = tmp_path / "export.json.rejects.jsonl"
    assert (code, err) == (0, "")
    assert out == (
        "Read 9 annotation(s) (and 2 cancelled, ignored): added 3 item(s) to the labeled set, 0 already present with "
        "the same label, rejected 3 (1 label not in the class list, 1 no choice, 1 several choices). "
        f"Rejects: {rejects}\n"
    )
    assert [json.loads(line)["id"] for line in labeled.read_text().splitlines()] == ["a", "d", "f"]
    assert len(rejects.read_text().splitlines()) == 3


def test_classes_from_the_label_config_and_a_chosen_rejects_path(capsys, tmp_path):
    from keras_lossal import labelstudio

    config = tmp_path / "label_config.xml"
    labelstudio.write_label_config(str(config), ["dog"])
    code, out, _ = run(
        capsys, os.path.join(DATA, "export.csv"), "--manifest", str(tmp_path / "m.csv"), "--label-config",
        str(config), "--rejects", str(tmp_path / "r.jsonl"), "--document-root", str(tmp_path),
    )  # fmt: skip
    assert code == 0 and out.endswith(f"Rejects: {tmp_path / 'r.jsonl'}\n")
    # Only "dog" is a class: every cat vote is rejected, a's single dog vote (annotator 3) wins.
    assert (tmp_path / "m.csv").read_text().splitlines()[1].startswith("a,pool/a.png,dog,export.csv,3,")


def test_known_items_reject_unknown_ids(capsys, tmp_path):
    (tmp_path / "triage_out").mkdir()
    (tmp_path / "triage_out" / "scored.jsonl").write_text('{"id": "a", "path": "pool/a.png", "predicted_loss": 1}\n')
    code, out, _ = run(
        capsys, os.path.join(DATA, "export_min.json"), "--manifest", str(tmp_path / "m.jsonl"), "--classes",
        "cat,dog", "--known-items", str(tmp_path / "triage_out"), "--path-root", str(tmp_path),
    )  # fmt: skip
    assert code == 0 and "added 1 item(s)" in out and "2 unknown id" in out
    assert json.loads((tmp_path / "m.jsonl").read_text())["path"] == "pool/a.png"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classes", "cat,dog,cat"], "lossal ingest: Expected distinct class names. Received duplicates: ['cat']"),
        (["--classes", "cat", "--path-root", "x"], "lossal ingest: --path-root only applies to --known-items"),
        (["--classes", "cat"], "lossal ingest: Expected the document root to find the file of the local-files URL "
                               "'/data/local-files/?d=pool/a.png'"),
        (["--classes", "cat", "--known-items", "missing_dir"], "No such file or directory: 'missing_dir'"),
        (["--classes", "cat", "--id-field", "label", "--document-root", "."],
         "lossal ingest: Expected an id field other than"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_2(capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, os.path.join(DATA, "export.csv"), "--manifest", "m.jsonl", *extra)
    assert (code, out) == (2, "")
    assert message in err and err.count("\n") == 1 and err.startswith("lossal ingest: ")
    assert not os.path.exists("m.jsonl")


def test_a_bad_manifest_or_export_names_the_value(capsys, tmp_path):
    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "a.png"}\n')
    code, _, err = run(
        capsys,
        os.path.join(DATA, "export.csv"),
        "--manifest",
        str(tmp_path / "m.jsonl"),
        "--classes",
        "cat",
        "--document-root",
        ".",
    )
    assert (
        code == 2
        and err
        == f"lossal ingest: {tmp_path / 'm.jsonl'}:1: expected a non-empty string 'label'. Received: label=None\n"
    )
    (tmp_path / "export.json").write_text("not json")
    code, _, err = run(
        capsys, str(tmp_path / "export.json"), "--manifest", str(tmp_path / "n.jsonl"), "--classes", "cat"
    )
    assert code == 2 and err.startswith(
        f"lossal ingest: Expected a Label Studio JSON export in '{tmp_path / 'export.json'}'"
    )


def test_the_command_module_loads_no_tensorflow():
    code = "import sys, keras_lossal.commands.ingest; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_through_the_lossal_entry_point(capsys, tmp_path):
    from keras_lossal import cli

    assert "ingest" in cli.build_parser().format_help()
    argv = ["ingest", os.path.join(DATA, "export_min.json"), "--manifest", str(tmp_path / "m.jsonl")]
    assert cli.main([*argv, "--classes", "cat,dog", "--document-root", str(tmp_path)]) == 0
    assert "added 3 item(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:  # argparse's own usage error
        cli.main([*argv, "--classes", "cat,dog", "--export-type", "XML"])
    assert stopped.value.code == 2
    assert "invalid choice: 'XML'" in capsys.readouterr().err
