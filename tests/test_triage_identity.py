"""Triage's item and model identity (keras_lossal/serving/triage.py, commands/triage.py): content hashes in every
output, `--exclude-labeled`, the model compared canonically, and a round from triage to ingest across directories."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_lossal import cli

sys.path.insert(0, os.path.dirname(__file__))
from serving_fixtures import lossal_export  # noqa: E402, F401 - pytest fixture

N_POOL = 6


@pytest.fixture
def pool(tmp_path):
    """`tmp_path/work/pool/img_<i>.png`: six distinct 8x8 images; returns the work folder."""
    pixels = np.random.default_rng(3).integers(0, 256, size=(N_POOL, 8, 8, 3), dtype=np.uint8)
    folder = tmp_path / "work" / "pool"
    folder.mkdir(parents=True)
    for index, image in enumerate(pixels):
        (folder / f"img_{index}.png").write_bytes(tf.io.encode_png(image).numpy())
    return tmp_path / "work"


def triage(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["triage", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def result_line(out: str) -> str:
    """Triage's `scored ..., failed ...` line (the default selection prints its choice before it)."""
    return next(line for line in out.splitlines() if line.startswith("scored "))


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --------------------------------------------------------------------------- rounds that never re-label
def test_exclude_labeled_keeps_labeled_images_and_renamed_copies(lossal_export, pool, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(pool)
    # Labeled earlier: img_0 (kept in a class folder under another name) and img_1 (an older manifest, no sha256).
    (pool / "labeled" / "cat").mkdir(parents=True)
    shutil.copy(pool / "pool" / "img_0.png", pool / "labeled" / "cat" / "first.png")
    assert cli.main(["manifest", "from-folders", "labeled", "-o", "labeled.jsonl"]) == 0
    (pool / "old.jsonl").write_text('{"id": "x", "path": "pool/img_1.png", "label": "dog"}\n')
    shutil.copy(pool / "pool" / "img_0.png", pool / "pool" / "renamed_copy.png")  # the pool holds a copy too
    argv = ["pool", "--model", lossal_export["base"], "--output", "out", "--top-k", "0", "--show", "0"]
    exclude = ["--exclude-labeled", "labeled.jsonl", "--exclude-labeled", "old.jsonl"]

    code, out, err = triage(capsys, *argv, *exclude)
    assert (code, err) == (0, "")
    assert out.splitlines()[1] == (
        "excluded 3 item(s) already labeled (matched by sha256 against 2 labeled record(s) in labeled.jsonl, old.jsonl)"
    )
    queue = read_jsonl(pool / "out" / "queue.jsonl")
    assert sorted(record["id"] for record in queue) == ["img_2.png", "img_3.png", "img_4.png", "img_5.png"]
    assert len(read_jsonl(pool / "out" / "scored.jsonl")) == 4  # the labeled ones were not even scored
    summary = read_json(pool / "out" / "summary.json")
    assert (summary["excluded_labeled"], summary["scored"], summary["queued"]) == (3, 4, 4)
    # Every queued item carries its content hash beside an absolute path, in the queue and in its task.
    for record in queue:
        assert record["path"] == str(pool / "pool" / record["id"]) and record["sha256"] == sha256(record["path"])
    tasks = read_json(pool / "out" / "label_studio_tasks.json")
    assert [task["data"]["sha256"] for task in tasks] == [record["sha256"] for record in queue]
    assert (pool / "out" / "queue.csv").read_text().splitlines()[1].endswith("," + queue[0]["sha256"])

    code, out, _ = triage(capsys, *argv, *exclude)  # resumed: excluded again, nothing scored
    assert code == 0 and out.startswith("scored 0, failed 0, resumed 4 ") and "excluded 3 item(s)" in out


def test_exclude_labeled_drops_items_an_earlier_run_scored(lossal_export, pool, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(pool)
    argv = ["pool", "--model", lossal_export["base"], "--output", "out", "--top-k", "0", "--show", "0"]
    assert triage(capsys, *argv)[0] == 0
    assert len(read_jsonl(pool / "out" / "queue.jsonl")) == N_POOL
    record = {"id": "a", "path": "pool/img_4.png", "label": "cat", "sha256": sha256(pool / "pool" / "img_4.png")}
    (pool / "labeled.jsonl").write_text(json.dumps(record) + "\n")
    code, out, _ = triage(capsys, *argv, "--exclude-labeled", "labeled.jsonl")
    assert code == 0 and out.startswith("scored 0, failed 0, resumed 6 ") and "excluded 1 item(s)" in out
    queue = read_jsonl(pool / "out" / "queue.jsonl")
    assert len(queue) == N_POOL - 1 and "img_4.png" not in {record["id"] for record in queue}
    assert read_json(pool / "out" / "summary.json")["excluded_labeled"] == 1


# --------------------------------------------------------------------------- the model's identity
def models(base, tmp_path, name="models"):
    """`tmp_path/<name>/lossal/{1,2}`: the shared export under two versions."""
    target = tmp_path / name / "lossal"
    for version in (1, 2):
        shutil.copytree(os.path.join(base, "1"), target / str(version))
    return target


def test_the_same_model_typed_relative_or_absolute_resumes(lossal_export, pool, tmp_path, capsys, monkeypatch):  # noqa: F811
    base = models(lossal_export["base"], tmp_path)
    monkeypatch.chdir(pool)
    argv = ["pool", "--output", "out", "--show", "0"]
    code, out, err = triage(capsys, *argv, "--model", "../models/lossal", "--model-version", "1")
    assert (code, err) == (0, "") and result_line(out).startswith(f"scored {N_POOL}, ")
    # No manifest and no training record in this export: the default budget_switch says so and takes badge.
    assert out.startswith("selection budget_switch: the number of labeled items is not known -> badge")
    state = read_json(pool / "out" / "state.json")
    assert state == {"scorer": f"saved_model:{os.path.realpath(base)}", "model_version": 1}
    tasks = read_json(pool / "out" / "label_studio_tasks.json")
    assert {task["predictions"][0]["model_version"] for task in tasks} == {"lossal/1"}
    for typed in (str(base), str(base / "1"), "../models/../models/lossal/1"):
        code, out, err = triage(capsys, *argv, "--model", typed, "--model-version", "1")
        assert (code, err) == (0, ""), typed
        assert result_line(out).startswith(f"scored 0, failed 0, resumed {N_POOL} "), typed


def test_the_advice_of_a_refused_resume_works(lossal_export, pool, tmp_path, capsys, monkeypatch):  # noqa: F811
    base = models(lossal_export["base"], tmp_path)
    monkeypatch.chdir(pool)
    argv = ["pool", "--output", "out", "--show", "0"]
    assert triage(capsys, *argv, "--model", "../models/lossal/1")[0] == 0
    # Version 2 is another version of the same model: finish the queue with version 1, or restart.
    code, _, err = triage(capsys, *argv, "--model", "../models/lossal/2")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"holds {N_POOL} scores of model version 1, but this run scores with version 2" in err
    assert "(--model-version 1)" in err and "(--restart)" in err
    code, out, err = triage(capsys, *argv, "--model", "../models/lossal/2", "--model-version", "1")
    assert (code, err) == (0, "") and result_line(out).startswith(f"scored 0, failed 0, resumed {N_POOL} ")
    code, out, err = triage(capsys, *argv, "--model", "../models/lossal/2", "--restart")
    assert (code, err) == (0, "") and result_line(out).startswith(f"scored {N_POOL}, ") and "(model version 2)" in out
    tasks = read_json(pool / "out" / "label_studio_tasks.json")
    assert {task["predictions"][0]["model_version"] for task in tasks} == {"lossal/2"}
    # Another model (another base path) is refused, naming --restart, and --restart rescores with it.
    other = models(lossal_export["base"], tmp_path, name="other_models")
    code, _, err = triage(capsys, *argv, "--model", str(other))
    assert code == 2 and "do not rank together" in err and "--restart" in err
    assert f"not 'saved_model:{os.path.realpath(other)}'" in err
    code, out, _ = triage(capsys, *argv, "--model", str(other), "--restart")
    assert code == 0 and result_line(out).startswith(f"scored {N_POOL}, ")
    assert read_json(pool / "out" / "state.json")["scorer"] == f"saved_model:{os.path.realpath(other)}"
    assert base.exists()


# --------------------------------------------------------------------------- triage to ingest
def test_a_round_from_triage_to_ingest_in_another_working_directory(lossal_export, pool, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(pool)
    argv = ["pool", "--model", lossal_export["base"], "--output", "out", "--top-k", "3", "--show", "0"]
    assert triage(capsys, *argv, "--label-studio-document-root", ".")[0] == 0
    tasks = read_json(pool / "out" / "label_studio_tasks.json")
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}]
    export = [{"id": number, "data": task["data"],
               "annotations": [{"id": number, "completed_by": 1, "result": result, "was_cancelled": False}]}
              for number, task in enumerate(tasks, start=1)]  # fmt: skip
    (tmp_path / "export.json").write_text(json.dumps(export))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative `pool` of triage's command line means nothing here
    ingest = ["ingest", str(tmp_path / "export.json"), "--classes", "cat,dog,bird", "--known-items", str(pool / "out")]
    capsys.readouterr()
    assert cli.main([*ingest, "--manifest", "labeled.jsonl"]) == 0
    assert "added 3 item(s) to the labeled set" in capsys.readouterr().out
    records = read_jsonl(elsewhere / "labeled.jsonl")
    assert [(record["path"], record["sha256"]) for record in records] == [
        (str(pool / "pool" / task["data"]["item_id"]), task["data"]["sha256"])
        for task in sorted(tasks, key=lambda task: task["data"]["item_id"])
    ]
    changed = pool / "pool" / tasks[0]["data"]["item_id"]
    changed.write_bytes(b"replaced after triage")
    assert cli.main([*ingest, "--manifest", "again.jsonl"]) == 3
    assert "added 2 item(s)" in capsys.readouterr().out
    (reject,) = read_jsonl(elsewhere / "export.json.rejects.jsonl")
    assert reject["reason"].startswith(f"content changed since triage: {changed} (sha256 now ")
