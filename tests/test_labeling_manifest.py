"""keras_lossal.labeling.manifest: the labeled-set manifest (read, validate, merge atomically, load for training)."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_lossal.labeling import manifest

A = {"id": "a", "path": "pool/a.png", "label": "cat"}
B = {"id": "b", "path": "pool/b.png", "label": "dog"}


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- reading and validating
def test_reads_jsonl_and_csv_alike(tmp_path):
    jsonl = write(tmp_path / "m.jsonl", json.dumps(A) + "\n\n" + json.dumps({**B, "source": "x.json"}) + "\n")
    csv_path = write(tmp_path / "m.csv", "id,path,label,source\na,pool/a.png,cat,\nb,pool/b.png,dog,x.json\n")
    assert manifest.read_manifest(jsonl) == [A, {**B, "source": "x.json"}]
    assert manifest.read_manifest(csv_path) == [{**A, "source": ""}, {**B, "source": "x.json"}]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"id": "a", "path": "a.png", "label": "cat"}\n{"id": "a", "path": "b.png", "label": "dog"}\n',
         "m.jsonl:2: duplicate id 'a' \\(first on line 1\\)"),
        ('{"id": "a", "path": "a.png"}\n', "m.jsonl:1: expected a non-empty string 'label'. Received: label=None"),
        ('\n{"id": 7, "path": "a.png", "label": "cat"}\n', "m.jsonl:2: expected a non-empty string 'id'. Received: id=7"),
        ('{"id": "a", "path": " ", "label": "cat"}\n', "m.jsonl:1: expected a non-empty string 'path'. Received: path=' '"),
        ('{"id": "a",\n', r"m.jsonl:1: invalid JSON \(.*\). Received: '{\"id\": \"a\",'"),
        ('["a", "a.png", "cat"]\n', "m.jsonl:1: expected a JSON object"),
    ],
)  # fmt: skip
def test_errors_name_the_line_and_the_value(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        manifest.read_manifest(write(tmp_path / "m.jsonl", text))


def test_csv_errors_name_the_line(tmp_path):
    with pytest.raises(ValueError, match=r"m.csv:1: expected a CSV header with \['id', 'path', 'label'\]"):
        manifest.read_manifest(write(tmp_path / "m.csv", "id,file,label\na,a.png,cat\n"))
    with pytest.raises(ValueError, match="m.csv:3: duplicate id 'a' \\(first on line 2\\)"):
        manifest.read_manifest(write(tmp_path / "m.csv", "id,path,label\na,a.png,cat\na,b.png,cat\n"))
    with pytest.raises(ValueError, match="m.csv:2: expected a non-empty string 'label'. Received: label=''"):
        manifest.read_manifest(write(tmp_path / "m.csv", "id,path,label\na,a.png,\n"))


def test_a_missing_manifest_is_an_error_unless_allowed(tmp_path):
    with pytest.raises(FileNotFoundError):
        manifest.read_manifest(str(tmp_path / "none.jsonl"))
    assert manifest.read_manifest(str(tmp_path / "none.jsonl"), missing_ok=True) == []


# --------------------------------------------------------------------------- merging
def test_merge_appends_new_ids_and_keeps_existing_lines_byte_for_byte(tmp_path):
    original = '{"label":"cat","path":"pool/a.png","id":"a"}'  # no newline at the end, keys unsorted
    path = write(tmp_path / "m.jsonl", original)
    result = manifest.merge(path, [A, B])
    assert ([r["id"] for r in result.added], [r["id"] for r in result.present], result.conflicts) == (["b"], ["a"], [])
    assert (tmp_path / "m.jsonl").read_text() == original + "\n" + json.dumps(B, sort_keys=True) + "\n"
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl", "m.jsonl.lock"]  # the temporary file was renamed over it


def test_merge_returns_conflicts_and_never_overwrites(tmp_path):
    path = str(tmp_path / "m.jsonl")
    manifest.merge(path, [A])
    before = (tmp_path / "m.jsonl").read_bytes()
    stat = os.stat(path)
    result = manifest.merge(path, [{**A, "label": "dog"}])
    assert result.added == [] and result.conflicts == [({**A, "label": "dog"}, A)]
    assert (tmp_path / "m.jsonl").read_bytes() == before
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns  # nothing added: nothing written


def test_merge_refuses_invalid_or_repeated_new_records(tmp_path):
    path = str(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match=r"records\[1\]: duplicate id 'a'"):
        manifest.merge(path, [A, {**A, "label": "dog"}])
    with pytest.raises(ValueError, match=r"records\[0\]: expected a non-empty string 'label'"):
        manifest.merge(path, [{"id": "a", "path": "a.png"}])
    assert not os.path.exists(path)


def test_merge_into_csv_keeps_its_header_once(tmp_path):
    path = write(tmp_path / "m.csv", "id,path,label\na,pool/a.png,cat\n")
    manifest.merge(path, [{**B, "source": "export.csv", "annotators": ["1", "2"], "ingested_at": "t"}])
    # New rows follow the header there: a valid CSV, whatever columns a newer version writes.
    assert (tmp_path / "m.csv").read_text() == "id,path,label\na,pool/a.png,cat\nb,pool/b.png,dog\n"
    created = str(tmp_path / "new.csv")
    manifest.merge(created, [{**A, "sha256": "0f" * 32}])
    assert (tmp_path / "new.csv").read_text() == (
        "id,path,label,source,annotators,ingested_at,sha256\na,pool/a.png,cat,,,," + "0f" * 32 + "\n"
    )
    assert manifest.read_manifest(created) == [
        {**A, "source": "", "annotators": "", "ingested_at": "", "sha256": "0f" * 32}
    ]
    manifest.merge(created, [{**B, "sha256": "1e" * 32}])
    assert (tmp_path / "new.csv").read_text().splitlines()[2] == "b,pool/b.png,dog,,,," + "1e" * 32


def test_a_failed_write_leaves_the_old_manifest(tmp_path, monkeypatch):
    path = str(tmp_path / "m.jsonl")
    manifest.merge(path, [A])
    before = (tmp_path / "m.jsonl").read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        manifest.merge(path, [B])
    assert (tmp_path / "m.jsonl").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl", "m.jsonl.lock"]  # no temporary file left


def test_concurrent_merges_lose_no_record(tmp_path):
    path = str(tmp_path / "m.jsonl")

    def writer(prefix):
        for start in range(0, 200, 50):  # four read-merge-write cycles each
            manifest.merge(path, [{"id": f"{prefix}{i}", "path": f"{prefix}{i}.png", "label": "cat"}
                                  for i in range(start, start + 50)])  # fmt: skip

    threads = [threading.Thread(target=writer, args=(prefix,)) for prefix in "abcdef"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [record["id"] for record in manifest.read_manifest(path)]
    assert len(ids) == 1200 and set(ids) == {f"{prefix}{i}" for prefix in "abcdef" for i in range(200)}


def test_merge_waits_for_the_lock_and_gives_up_after_its_timeout(tmp_path):
    from keras_lossal.files import exclusive_lock

    path = str(tmp_path / "m.jsonl")
    with exclusive_lock(path):
        with pytest.raises(
            TimeoutError, match=r"Timed out after 0.2 s .*m.jsonl' to release its lock file '.*m.jsonl.lock'"
        ):
            manifest.merge(path, [A], lock_timeout=0.2)
        with pytest.raises(TimeoutError):
            manifest.write_manifest(path, [A], lock_timeout=0.2)
    assert not os.path.exists(path)
    assert len(manifest.merge(path, [A], lock_timeout=0.2).added) == 1


def test_a_writer_killed_mid_merge_leaves_a_whole_manifest_and_no_stale_lock(tmp_path):
    path = str(tmp_path / "m.jsonl")
    writer = (
        "import sys; from keras_lossal.labeling import manifest\n"
        "for i in range(100000):\n"
        "    manifest.merge(sys.argv[1], [{'id': f'x{i}', 'path': f'x{i}.png', 'label': 'cat' * 200}])\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer, path])
    try:
        deadline = time.monotonic() + 60
        while (not os.path.exists(path) or os.path.getsize(path) < 200_000) and time.monotonic() < deadline:
            time.sleep(0.01)  # ~300 records: each merge now rewrites 200 kB
    finally:
        process.kill()  # SIGKILL, most likely mid-write
        process.wait()
    records = manifest.read_manifest(path)  # the old manifest or the new one, never a torn line
    assert len(records) >= 300 and [record["id"] for record in records] == [f"x{i}" for i in range(len(records))]
    assert len([name for name in os.listdir(tmp_path) if name.endswith(".tmp")]) <= 1  # at most the cut write's
    assert len(manifest.merge(path, [A], lock_timeout=1.0).added) == 1  # the dead writer's lock was released
    assert len(manifest.read_manifest(path)) == len(records) + 1


def test_write_manifest_validates_first(tmp_path):
    with pytest.raises(ValueError, match=r"records\[1\]: duplicate id 'a'"):
        manifest.write_manifest(str(tmp_path / "m.jsonl"), [A, A])
    manifest.write_manifest(str(tmp_path / "m.jsonl"), [B, A])
    assert manifest.read_manifest(str(tmp_path / "m.jsonl")) == [B, A]


def test_relative_to_manifest(tmp_path):
    inside = str(tmp_path / "pool" / "a.png")
    assert manifest.relative_to_manifest(inside, str(tmp_path / "m.jsonl")) == "pool/a.png"
    assert manifest.relative_to_manifest(inside, str(tmp_path / "sub" / "m.jsonl")) == inside
    assert manifest.relative_to_manifest("gs://b/a.png", str(tmp_path / "m.jsonl")) == "gs://b/a.png"


# --------------------------------------------------------------------------- sources of records
def test_from_directory_follows_image_dataset_from_directory(tmp_path):
    for name in ("dog/1.png", "cat/x/2.JPG", "cat/3.bmp", "cat/notes.txt", "cat/anim.gif", "loose.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    records = manifest.from_directory(str(tmp_path))
    assert records == [
        {"id": "cat/3.bmp", "path": "cat/3.bmp", "label": "cat"},
        {"id": "cat/x/2.JPG", "path": "cat/x/2.JPG", "label": "cat"},
        {"id": "dog/1.png", "path": "dog/1.png", "label": "dog"},
    ]
    manifest.write_manifest(str(tmp_path / "labeled.jsonl"), records)
    labeled = manifest.load_labeled_set(str(tmp_path / "labeled.jsonl"))
    assert labeled.class_names == ["cat", "dog"] and labeled.labels.tolist() == [0, 0, 1]
    assert labeled.paths.tolist() == [str(tmp_path / record["path"]) for record in records]
    with pytest.raises(ValueError, match="Expected class subfolders in"):
        manifest.from_directory(str(tmp_path / "dog"))


def test_known_items_from_a_triage_output_directory(tmp_path, monkeypatch):
    out = tmp_path / "triage_out"
    out.mkdir()
    write(out / "scored.jsonl", '{"id": "a", "path": "pool/a.png", "predicted_loss": 0.5}\n')
    write(out / "scored-00001-of-00002.jsonl", '{"id": "b", "path": "/abs/b.png", "predicted_loss": 0.1}\n')
    write(out / "queue.jsonl", '{"id": "c", "path": "gs://bucket/c.png", "predicted_loss": 0.9, "rank": 1}\n')
    write(out / "failures.jsonl", '{"id": "d", "path": "pool/d.png", "reason": "corrupt"}\n')
    monkeypatch.chdir(tmp_path)
    assert paths(manifest.read_known_items(str(out))) == {
        "a": str(tmp_path / "pool" / "a.png"), "b": "/abs/b.png", "c": "gs://bucket/c.png",
    }  # fmt: skip
    assert manifest.read_known_items(str(out), path_root="/r")["a"].path == "/r/pool/a.png"
    with pytest.raises(FileNotFoundError, match="Expected triage output"):
        manifest.read_known_items(str(tmp_path))


def test_known_items_from_a_pool_manifest_resolve_against_its_folder(tmp_path):
    (tmp_path / "pools").mkdir()
    jsonl = write(tmp_path / "pools" / "pool.jsonl", '{"path": "x/a.png"}\n{"id": "b", "uri": "s3://b/b.png"}\n')
    assert paths(manifest.read_known_items(jsonl)) == {
        "x/a.png": str(tmp_path / "pools" / "x" / "a.png"), "b": "s3://b/b.png",
    }  # fmt: skip
    csv_path = write(tmp_path / "pool.csv", "id,path\na,a.png\n")
    assert paths(manifest.read_known_items(csv_path)) == {"a": str(tmp_path / "a.png")}


def paths(known: dict) -> dict:
    return {item_id: item.path for item_id, item in known.items()}


def test_labeled_content_uses_recorded_hashes_and_hashes_older_records_from_their_files(tmp_path):
    import hashlib

    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "b.png").write_bytes(b"b's bytes")
    first = write(tmp_path / "labeled.jsonl", "".join(json.dumps(record) + "\n" for record in [
        {**A, "sha256": "0f" * 32},  # recorded by ingest: used as it is (its file is not read)
        B,  # written before ingest recorded hashes: hashed from pool/b.png now
        {"id": "c", "path": "pool/missing.png", "label": "cat"},
    ]))  # fmt: skip
    second = write(tmp_path / "other.jsonl", json.dumps({"id": "d", "path": "gs://bucket/d.png", "label": "dog"}))
    content = manifest.labeled_content([first, second])
    assert content.sha256 == {"0f" * 32, hashlib.sha256(b"b's bytes").hexdigest()}
    assert (content.records, content.unhashed) == (4, (f"{first}: c", f"{second}: d"))
    with pytest.raises(ValueError, match=r"labeled.jsonl:1: expected 'sha256' to be 64 lowercase hex digits"):
        manifest.labeled_content([write(tmp_path / "labeled.jsonl", json.dumps({**A, "sha256": "F" * 64}))])


# --------------------------------------------------------------------------- training input
def png_file(path, pixels):
    path.write_bytes(tf.io.encode_png(tf.constant(pixels, tf.uint8)).numpy())


def test_load_labeled_set_uses_the_given_class_order(tmp_path):
    path = str(tmp_path / "m.jsonl")
    manifest.write_manifest(path, [A, B, {"id": "c", "path": "gs://x/c.png", "label": "cat"}])
    labeled = manifest.load_labeled_set(path, class_names=["dog", "cat"])
    assert labeled.labels.tolist() == [1, 0, 1] and labeled.ids.tolist() == ["a", "b", "c"]
    assert labeled.paths.tolist()[2] == "gs://x/c.png"
    with pytest.raises(ValueError, match=r"Expected labels in \['cat'\]. Received: label 'dog' of id 'b'"):
        manifest.load_labeled_set(path, class_names=["cat"])


def test_dataset_decodes_and_resizes_in_manifest_order(tmp_path):
    (tmp_path / "pool").mkdir()
    png_file(tmp_path / "pool" / "a.png", np.full((4, 4, 3), 10))
    png_file(tmp_path / "pool" / "b.png", np.full((2, 6, 1), 200))
    path = str(tmp_path / "m.jsonl")
    manifest.write_manifest(path, [A, B])
    images, labels = manifest.load_labeled_set(path).arrays((3, 3))
    assert images.shape == (2, 3, 3, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0], np.full((3, 3, 3), 10))
    np.testing.assert_array_equal(images[1], np.full((3, 3, 3), 200))  # grayscale becomes 3 channels
    assert labels.tolist() == [0, 1]


def test_dataset_refuses_an_image_over_the_pixel_limit(tmp_path):
    (tmp_path / "pool").mkdir()
    png_file(tmp_path / "pool" / "a.png", np.zeros((8, 8, 3)))
    path = str(tmp_path / "m.jsonl")
    manifest.write_manifest(path, [A])
    with pytest.raises(tf.errors.InvalidArgumentError, match="image of 8x8 pixels is over the limit of 63"):
        list(manifest.load_labeled_set(path).dataset((4, 4), max_pixels=63))
