"""`lossal ingest` (keras_lossal/commands/ingest.py): arguments, summary, exit codes (2: bad input, 3: completed
with rejects), the lock, the image URL guard, malformed exports and the integrity of what is recorded."""

import argparse
import json
import os
import subprocess
import sys
import time

import pytest

import keras_lossal
from keras_lossal.commands import ingest
from keras_lossal.files import exclusive_lock

DATA = os.path.join(os.path.dirname(__file__), "data", "labelstudio")


def pool_files(root, *names, content=b"\x89PNG image bytes"):
    """Creates `root/pool/<name>` for each name (the files the recorded exports' tasks name)."""
    for name in names:
        (root / "pool" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "pool" / name).write_bytes(content)


def run(capsys, *argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="lossal")
    ingest.add_parser(parser.add_subparsers())
    capsys.readouterr()
    code = ingest.run(parser.parse_args(["ingest", *argv]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_summary_paragraph_and_rejects_file(capsys, tmp_path):
    pool_files(tmp_path, "a.png")
    labeled = tmp_path / "labeled.jsonl"
    code, out, err = run(
        capsys, os.path.join(DATA, "export.json"), "--manifest", str(labeled), "--classes", "cat, dog",
        "--document-root", str(tmp_path),
    )  # fmt: skip
    rejects = tmp_path / "export.json.rejects.jsonl"
    assert (code, err) == (3, "")  # completed with rejects
    assert out == (
        "Read 9 annotation(s) (and 2 cancelled, ignored): added 3 item(s) to the labeled set, 0 already present with "
        "the same label, rejected 3 (1 label not in the class list, 1 no choice, 1 several choices). "
        f"Rejects: {rejects}\n"
    )
    assert [json.loads(line)["id"] for line in labeled.read_text().splitlines()] == ["a", "d", "f"]
    assert len(rejects.read_text().splitlines()) == 3


def test_classes_from_the_label_config_and_a_chosen_rejects_path(capsys, tmp_path):
    from keras_lossal.labeling import labelstudio

    pool_files(tmp_path, "a.png")
    config = tmp_path / "label_config.xml"
    labelstudio.write_label_config(str(config), ["dog"])
    code, out, _ = run(
        capsys, os.path.join(DATA, "export.csv"), "--manifest", str(tmp_path / "m.csv"), "--label-config",
        str(config), "--rejects", str(tmp_path / "r.jsonl"), "--document-root", str(tmp_path),
    )  # fmt: skip
    assert code == 3 and out.endswith(f"Rejects: {tmp_path / 'r.jsonl'}\n")
    # Only "dog" is a class: every cat vote is rejected, a's single dog vote (annotator 3) wins.
    assert (tmp_path / "m.csv").read_text().splitlines()[1].startswith("a,pool/a.png,dog,export.csv,3,")


def test_known_items_reject_unknown_ids(capsys, tmp_path):
    pool_files(tmp_path, "a.png")
    (tmp_path / "triage_out").mkdir()
    (tmp_path / "triage_out" / "scored.jsonl").write_text('{"id": "a", "path": "pool/a.png", "predicted_loss": 1}\n')
    code, out, _ = run(
        capsys, os.path.join(DATA, "export_min.json"), "--manifest", str(tmp_path / "m.jsonl"), "--classes",
        "cat,dog", "--known-items", str(tmp_path / "triage_out"), "--path-root", str(tmp_path),
    )  # fmt: skip
    assert code == 3 and "added 1 item(s)" in out and "2 unknown id" in out
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
    pool_files(tmp_path, "a.png")
    argv = ["ingest", os.path.join(DATA, "export_min.json"), "--manifest", str(tmp_path / "m.jsonl")]
    assert cli.main([*argv, "--classes", "cat,dog", "--document-root", str(tmp_path)]) == 3  # rejects
    assert "added 3 item(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:  # argparse's own usage error
        cli.main([*argv, "--classes", "cat,dog", "--export-type", "XML"])
    assert stopped.value.code == 2
    assert "invalid choice: 'XML'" in capsys.readouterr().err


# --------------------------------------------------------------------------- concurrent ingests
# The `lossal` entry point (`keras_lossal.cli.main`) in a fresh interpreter. Not `python -m keras_lossal.cli`:
# run that way it imports TensorFlow up front to silence its logs, seconds per process that ingest never needs.
LOSSAL = "import sys; from keras_lossal.cli import main; sys.exit(main(sys.argv[1:]))"


def json_min_export(path, prefix, count):
    pool_files(path.parent, *(f"{prefix}{i}.png" for i in range(count)))
    records = [
        {"image": f"/data/local-files/?d=pool/{prefix}{i}.png", "item_id": f"{prefix}{i}", "id": i + 1,
         "label": "cat" if i % 2 else "dog", "annotator": 1, "annotation_id": i + 1}
        for i in range(count)
    ]  # fmt: skip
    path.write_text(json.dumps(records))
    return str(path)


def test_two_concurrent_ingests_into_one_manifest_add_every_label(tmp_path):
    labeled = tmp_path / "labeled.jsonl"
    exports = [json_min_export(tmp_path / f"{prefix}.json", prefix, 5000) for prefix in "ab"]
    environment = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(keras_lossal.__file__))}
    with exclusive_lock(str(labeled)):  # both start while the manifest is busy, so their writes meet
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    LOSSAL,
                    "ingest",
                    export,
                    "--manifest",
                    str(labeled),
                    "--classes",
                    "cat,dog",
                    "--document-root",
                    str(tmp_path),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=environment,
            )  # fmt: skip
            for export in exports
        ]
        time.sleep(1.0)
        assert [process.poll() for process in processes] == [None, None]  # both wait for the lock
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [(process.returncode, err) for process, (_, err) in zip(processes, outputs)] == [(0, ""), (0, "")]
    assert all("added 5000 item(s) to the labeled set" in out for out, _ in outputs)
    ids = [json.loads(line)["id"] for line in labeled.read_text().splitlines()]
    assert len(ids) == 10000 and set(ids) == {f"{prefix}{i}" for prefix in "ab" for i in range(5000)}
    assert sorted(os.listdir(tmp_path)) == [
        "a.json", "a.json.rejects.jsonl", "b.json", "b.json.rejects.jsonl", "labeled.jsonl", "labeled.jsonl.lock",
        "pool",
    ]  # fmt: skip


def test_an_ingest_that_cannot_get_the_lock_gives_up_in_one_line(capsys, tmp_path):
    labeled = tmp_path / "labeled.jsonl"
    export = json_min_export(tmp_path / "a.json", "a", 3)
    with exclusive_lock(str(labeled)):
        started = time.monotonic()
        code, out, err = run(
            capsys, export, "--manifest", str(labeled), "--classes", "cat,dog", "--document-root", str(tmp_path),
            "--lock-timeout", "0.3",
        )  # fmt: skip
        waited = time.monotonic() - started
    assert (code, out) == (2, "") and 0.3 <= waited < 3.0
    assert err == (
        f"lossal ingest: Timed out after 0.3 s waiting for another process writing {str(labeled)!r} to release its "
        f"lock file {str(labeled) + '.lock'!r}; retry when it has finished (the lock ends with its process)\n"
    )
    assert not labeled.exists() and not (tmp_path / "a.json.rejects.jsonl").exists()
    code, _, err = run(capsys, export, "--manifest", str(labeled), "--classes", "cat", "--lock-timeout", "-1")
    assert (code, err) == (2, "lossal ingest: Expected --lock-timeout >= 0 seconds. Received: -1\n")


# --------------------------------------------------------------------------- image URLs
IMAGES = {
    "local": "/data/local-files/?d=pool/local.png",
    "relative": "pool/relative.png",
    "file": "file:///etc/passwd",
    "absolute": "/etc/passwd",
    "up": "../../../../etc/passwd",
    "http": "http://example.com/a.png",
    "s3": "s3://bucket/a.png",
    "local_up": "/data/local-files/?d=../etc/passwd",
}


def test_image_urls_outside_the_root_or_with_a_scheme_are_rejected_unless_allowed(capsys, tmp_path):
    records = [{"image": url, "item_id": item, "id": number, "label": "cat", "annotator": 1, "annotation_id": number}
               for number, (item, url) in enumerate(IMAGES.items(), start=1)]  # fmt: skip
    (tmp_path / "e.json").write_text(json.dumps(records))
    root = tmp_path / "root"
    pool_files(root, "local.png", "relative.png")
    argv = [str(tmp_path / "e.json"), "--classes", "cat", "--document-root", str(root)]
    code, out, _ = run(capsys, *argv, "--manifest", str(root / "strict.jsonl"))
    assert code == 3 and "added 2 item(s)" in out and "rejected 6 (6 image refused)" in out
    manifest = [json.loads(line) for line in (root / "strict.jsonl").read_text().splitlines()]
    assert [(entry["id"], entry["path"]) for entry in manifest] == [
        ("local", "pool/local.png"), ("relative", "pool/relative.png"),
    ]  # fmt: skip
    rejects = [json.loads(line) for line in (root / "e.json.rejects.jsonl").read_text().splitlines()]
    assert {reject["id"]: reject["reason"].split(" (")[0] for reject in rejects} == {
        "absolute": f"image refused: outside the document root {str(root)!r}",
        "file": "image refused: URL scheme 'file' not allowed",
        "http": "image refused: URL scheme 'http' not allowed",
        "local_up": "image refused: a local-files URL without a path inside the root",
        "s3": "image refused: URL scheme 's3' not allowed",
        "up": f"image refused: outside the document root {str(root)!r}",
    }
    code, out, _ = run(
        capsys, *argv, "--manifest", str(root / "open.jsonl"), "--allow-url-schemes", "file, s3,http",
        "--allow-paths-outside-root",
    )  # fmt: skip
    # Allowed, and still never recorded for a file that is not there: `up` names <tmp>/etc/passwd.
    assert code == 3 and "added 6 item(s)" in out and "rejected 2 (1 image missing, 1 image refused)" in out
    paths = {
        json.loads(line)["id"]: json.loads(line)["path"] for line in (root / "open.jsonl").read_text().splitlines()
    }
    assert (paths["file"], paths["absolute"], paths["s3"]) == ("file:///etc/passwd", "/etc/passwd", "s3://bucket/a.png")
    assert "local_up" not in paths  # a local-files URL is never outside the root: Label Studio would not serve it
    assert "up" not in paths and not os.path.exists(os.path.join(root, IMAGES["up"]))


# --------------------------------------------------------------------------- malformed exports
def test_a_malformed_task_is_rejected_and_the_rest_ingested(capsys, tmp_path):
    tasks = json.loads(open(os.path.join(DATA, "export.json"), encoding="utf-8").read())
    tasks[0]["annotations"][0]["result"] = "cat"  # item a
    tasks[1]["annotations"] = {"id": 4}  # item b
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    pool_files(tmp_path, "a.png")
    code, out, err = run(
        capsys, str(tmp_path / "export.json"), "--manifest", str(tmp_path / "m.jsonl"), "--classes", "cat,dog",
        "--document-root", str(tmp_path),
    )  # fmt: skip
    assert (code, err) == (3, "") and "added 2 item(s)" in out and "2 malformed task" in out
    assert [json.loads(line)["id"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == ["d", "f"]
    rejects = [json.loads(line) for line in (tmp_path / "export.json.rejects.jsonl").read_text().splitlines()]
    assert [(reject["id"], reject["reason"]) for reject in rejects[:2]] == [
        ("a", "malformed task: `annotations[0].result` is a string 'cat', expected a list"),
        ("b", "malformed task: `annotations` is an object {'id': 4}, expected a list"),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"tasks": []}', "Expected a Label Studio JSON export (a JSON list of tasks) in {export!r}. Received: an object "
                          "{{'tasks': []}}"),
        ('[{"id": 1, "data": {"item_id": "a"}, "annotations": {"id": 2}}]',
         "Expected a Label Studio JSON export (a list of tasks, each with a `data` object and a list of `annotations`) "
         "in {export!r}; no record has that shape. First: malformed task: `annotations` is an object {{'id': 2}}, expected a "
         "list (task 1)"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_an_export_is_one_line_from_the_command_line(tmp_path, text, message):
    export = tmp_path / "export.json"
    export.write_text(text)
    environment = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(keras_lossal.__file__))}
    argv = ["ingest", str(export), "--manifest", str(tmp_path / "m.jsonl"), "--classes", "cat"]
    done = subprocess.run([sys.executable, "-c", LOSSAL, *argv], capture_output=True, text=True, env=environment)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "lossal ingest: " + message.format(export=str(export)) + "\n"


# --------------------------------------------------------------------------- integrity of what is recorded
def labeled_task(number, item_id, image, label="cat", sha256=None):
    """A JSON-export task as triage writes it (image URL, item id, content hash) with one annotation."""
    data = {"image": image, "item_id": item_id, **({"sha256": sha256} if sha256 else {})}
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
    annotation = {"id": number, "completed_by": 1, "result": result, "was_cancelled": False}
    return {"id": number, "data": data, "annotations": [annotation]}


def write_export(path, tasks):
    path.write_text(json.dumps(tasks))
    return str(path)


def triage_output(folder, records):
    """A triage output directory whose scored.jsonl holds `records` (id, path, sha256)."""
    folder.mkdir(parents=True)
    lines = [json.dumps({**record, "predicted_loss": 1.0}) + "\n" for record in records]
    (folder / "scored.jsonl").write_text("".join(lines))
    return str(folder)


def read_rejects(path):
    return [(reject["id"], reject["reason"]) for reject in map(json.loads, path.read_text().splitlines())]


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_wrong_document_root_records_nothing_and_says_the_images_are_missing(capsys, tmp_path):
    pool_files(tmp_path / "srv", "a.png", "b.png")  # Label Studio's document root is srv/
    (tmp_path / "wrong").mkdir()
    tasks = [labeled_task(1, "a.png", "/data/local-files/?d=pool/a.png"),
             labeled_task(2, "b.png", "/data/local-files/?d=pool/b.png", "dog")]  # fmt: skip
    export = write_export(tmp_path / "export.json", tasks)
    labeled = tmp_path / "labeled.jsonl"
    argv = [export, "--manifest", str(labeled), "--classes", "cat,dog"]
    code, out, err = run(capsys, *argv, "--document-root", str(tmp_path / "wrong"))
    assert (code, err) == (3, "")
    assert (
        "added 0 item(s) to the labeled set, 0 already present with the same label, rejected 2 (2 image missing)" in out
    )
    assert read_rejects(tmp_path / "export.json.rejects.jsonl") == [
        ("a.png", f"image missing: {tmp_path / 'wrong' / 'pool' / 'a.png'}"),
        ("b.png", f"image missing: {tmp_path / 'wrong' / 'pool' / 'b.png'}"),
    ]
    assert not labeled.exists()  # nothing written for them
    code, out, _ = run(capsys, *argv, "--document-root", str(tmp_path / "srv"))
    assert code == 0 and "added 2 item(s) to the labeled set" in out and "rejected 0" in out
    records = [json.loads(line) for line in labeled.read_text().splitlines()]
    assert [(record["id"], record["path"], record["sha256"]) for record in records] == [
        ("a.png", "srv/pool/a.png", sha256(b"\x89PNG image bytes")),
        ("b.png", "srv/pool/b.png", sha256(b"\x89PNG image bytes")),
    ]


def test_a_file_changed_after_triage_is_rejected_with_both_hashes(capsys, tmp_path):
    pool = tmp_path / "pool"
    pool_files(tmp_path, "a.png", "b.png", "c.png")
    scored = {name: sha256((pool / name).read_bytes()) for name in ("a.png", "b.png", "c.png")}
    out_dir = triage_output(tmp_path / "triage_out", [
        {"id": name, "path": str(pool / name), "sha256": digest} for name, digest in scored.items()
    ])  # fmt: skip
    tasks = [labeled_task(number, name, f"/data/local-files/?d=pool/{name}", sha256=scored[name])
             for number, name in enumerate(("a.png", "b.png"), start=1)]  # fmt: skip
    tasks.append(labeled_task(3, "c.png", "/data/local-files/?d=pool/c.png"))  # an older task: no data.sha256
    export = write_export(tmp_path / "export.json", tasks)
    (pool / "a.png").write_bytes(b"edited after triage")  # the task's hash no longer holds
    (pool / "c.png").write_bytes(b"edited too")  # triage's scored.jsonl still knows c's hash
    labeled = tmp_path / "labeled.jsonl"
    code, out, err = run(
        capsys, export, "--manifest", str(labeled), "--classes", "cat", "--known-items", out_dir
    )  # fmt: skip
    assert (code, err) == (3, "")
    assert "added 1 item(s) to the labeled set, 0 already present with the same label, rejected 2 (2 content " in out
    now_a, now_c, was = sha256(b"edited after triage"), sha256(b"edited too"), scored["a.png"]
    assert read_rejects(tmp_path / "export.json.rejects.jsonl") == [
        ("a.png", f"content changed since triage: {pool / 'a.png'} (sha256 now {now_a[:12]}..., at triage {was[:12]}...)"),
        ("c.png", f"content changed since triage: {pool / 'c.png'} (sha256 now {now_c[:12]}..., at triage {was[:12]}...)"),
    ]  # fmt: skip
    (record,) = [json.loads(line) for line in labeled.read_text().splitlines()]
    assert (record["id"], record["sha256"]) == ("b.png", scored["b.png"])


def test_two_known_item_sources_that_disagree_on_an_id_are_an_error_naming_both(capsys, tmp_path):
    pool_files(tmp_path / "round1", "a.png")
    pool_files(tmp_path / "round2", "a.png", content=b"another image")
    first = triage_output(tmp_path / "triage1", [{"id": "a.png", "path": str(tmp_path / "round1/pool/a.png")}])
    second = triage_output(tmp_path / "triage2", [
        {"id": "a.png", "path": str(tmp_path / "round2/pool/a.png"), "sha256": sha256(b"another image")},
    ])  # fmt: skip
    export = write_export(tmp_path / "export.json", [labeled_task(1, "a.png", "pool/a.png")])
    labeled = tmp_path / "labeled.jsonl"
    argv = [export, "--manifest", str(labeled), "--classes", "cat"]
    code, out, err = run(capsys, *argv, "--known-items", first, "--known-items", second)
    assert (code, out) == (2, "")
    assert err == (
        f"lossal ingest: Known-item sources disagree on id 'a.png': {tmp_path / 'round1/pool/a.png'} in "
        f"{first + '/scored.jsonl'!r} but {tmp_path / 'round2/pool/a.png'} (sha256 {sha256(b'another image')[:12]}...) "
        f"in {second + '/scored.jsonl'!r}; an id must name one item across the sources (pass the triage outputs or "
        "pool manifests of one pool)\n"
    )
    assert not labeled.exists() and not (tmp_path / "export.json.rejects.jsonl").exists()
    # The same item named by two sources (a triage output and the pool manifest it read) is no disagreement.
    pool_manifest = tmp_path / "round1" / "pool.jsonl"
    pool_manifest.write_text('{"id": "a.png", "path": "pool/a.png"}\n')
    code, out, _ = run(capsys, *argv, "--known-items", first, "--known-items", str(pool_manifest))
    assert code == 0 and "added 1 item(s) to the labeled set" in out


def test_a_relative_path_from_another_working_directory_is_rejected_not_recorded(capsys, tmp_path, monkeypatch):
    # An older triage recorded `pool/a.png` relative to where it ran (here/); ingest runs in elsewhere/.
    pool_files(tmp_path / "here", "a.png")
    (tmp_path / "elsewhere").mkdir()
    out_dir = triage_output(tmp_path / "triage_out", [{"id": "a.png", "path": "pool/a.png"}])
    export = write_export(tmp_path / "export.json", [labeled_task(1, "a.png", "/data/local-files/?d=pool/a.png")])
    monkeypatch.chdir(tmp_path / "elsewhere")
    labeled = tmp_path / "labeled.jsonl"
    argv = [export, "--manifest", str(labeled), "--classes", "cat", "--known-items", out_dir]
    code, out, _ = run(capsys, *argv)
    assert code == 3 and "added 0 item(s)" in out and "rejected 1 (1 image missing)" in out
    assert read_rejects(tmp_path / "export.json.rejects.jsonl") == [
        ("a.png", f"image missing: {tmp_path / 'elsewhere' / 'pool' / 'a.png'}"),
    ]
    assert not labeled.exists()
    code, out, _ = run(capsys, *argv, "--path-root", str(tmp_path / "here"))  # where that triage ran
    assert code == 0 and "added 1 item(s)" in out
    assert json.loads(labeled.read_text())["path"] == "here/pool/a.png"  # relative to the manifest's folder
