"""`lossal manifest from-folders` (keras_lossal/commands/manifest.py): a labeled-set manifest with content hashes."""

import hashlib
import json
import subprocess
import sys

from keras_lossal import cli
from keras_lossal.labeling import manifest

IMAGES = {"cat/1.png": b"one", "cat/x/2.jpg": b"two", "dog/3.bmp": b"three", "dog/notes.txt": b"not an image"}


def class_folders(root):
    for name, content in IMAGES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return str(root)


def test_from_folders_writes_one_record_per_image_with_its_sha256(tmp_path, capsys):
    root = class_folders(tmp_path / "labeled_images")
    output = tmp_path / "labeled.jsonl"
    capsys.readouterr()
    assert cli.main(["manifest", "from-folders", root, "-o", str(output)]) == 0
    assert capsys.readouterr().out == f"wrote 3 labeled image(s) in 2 class(es) (cat: 2, dog: 1) to {output}\n"
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records == [
        {"id": name, "path": f"labeled_images/{name}", "label": name.split("/")[0],
         "sha256": hashlib.sha256(IMAGES[name]).hexdigest()}
        for name in ("cat/1.png", "cat/x/2.jpg", "dog/3.bmp")
    ]  # fmt: skip
    labeled = manifest.load_labeled_set(str(output))  # what `lossal train --data` reads
    assert labeled.class_names == ["cat", "dog"] and labeled.labels.tolist() == [0, 0, 1]
    assert manifest.labeled_content([str(output)]).sha256 == {record["sha256"] for record in records}


def test_from_folders_never_rewrites_a_manifest_and_needs_images(tmp_path, capsys):
    root = class_folders(tmp_path / "labeled_images")
    output = tmp_path / "labeled.jsonl"
    output.write_text('{"id": "x", "path": "x.png", "label": "cat"}\n')
    capsys.readouterr()
    assert cli.main(["manifest", "from-folders", root, "-o", str(output)]) == 2
    assert capsys.readouterr().err.startswith(f"lossal manifest: {str(output)!r} exists; from-folders starts a ")
    assert output.read_text() == '{"id": "x", "path": "x.png", "label": "cat"}\n'
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    assert cli.main(["manifest", "from-folders", str(tmp_path / "empty"), "-o", str(tmp_path / "m.jsonl")]) == 2
    assert capsys.readouterr().err == (
        f"lossal manifest: no images (.png, .jpg, .jpeg, .bmp) in the class subfolders of {str(tmp_path / 'empty')!r}\n"
    )
    assert cli.main(["manifest", "from-folders", str(tmp_path / "nowhere"), "-o", str(tmp_path / "m.jsonl")]) == 2
    assert "Expected a directory of class subfolders" in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()


def test_a_csv_manifest_from_folders_keeps_the_hash_column(tmp_path, capsys):
    root = class_folders(tmp_path / "labeled_images")
    assert cli.main(["manifest", "from-folders", root, "-o", str(tmp_path / "labeled.csv")]) == 0
    lines = (tmp_path / "labeled.csv").read_text().splitlines()
    assert lines[0] == "id,path,label,source,annotators,ingested_at,sha256"
    assert lines[1] == "cat/1.png,labeled_images/cat/1.png,cat,,,," + hashlib.sha256(b"one").hexdigest()


def test_the_command_module_loads_no_tensorflow():
    code = "import sys, keras_lossal.commands.manifest; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
