"""keras_lossal.labeling.labelstudio: label config, image URLs, export readers, the majority rule, ingest.

The export fixtures in tests/data/labelstudio/ were exported by a real Label
Studio 1.23.2; the `labelstudio` tests at the end drive a real server
(tests/labelstudio_server.py) from task import to `lossal ingest`.
"""

import argparse
import collections
import hashlib
import json
import os
import struct
import urllib.error
import urllib.parse
import urllib.request
import zlib

import pytest
from labelstudio_server import label_studio  # noqa: F401 - pytest fixture

from keras_lossal.commands import ingest as ingest_command
from keras_lossal.labeling import labelstudio, manifest
from keras_lossal.labeling.labelstudio import Annotation, image_path, image_url, label_config, read_export, resolve

DATA = os.path.join(os.path.dirname(__file__), "data", "labelstudio")
EXPORTS = {"JSON": "export.json", "JSON_MIN": "export_min.json", "CSV": "export.csv"}


# --------------------------------------------------------------------------- label config
def test_label_config_is_the_single_choice_image_config_with_escaped_names(tmp_path):
    assert label_config(["cat", "dog"]) == (
        '<View><Image name="image" value="$image"/><Choices name="label" toName="image" choice="single">'
        '<Choice value="cat"/><Choice value="dog"/></Choices></View>'
    )
    names = ["a<b", 'say "hi"', "fish & chips", "été"]
    assert '<Choice value="a&lt;b"/><Choice value="say &quot;hi&quot;"/>' in label_config(names)
    path = str(tmp_path / "label_config.xml")
    labelstudio.write_label_config(path, names)
    assert labelstudio.read_label_config(path) == names


@pytest.mark.parametrize(
    "names, message",
    [([], "non-empty"), (["cat", " "], "non-empty"), (["cat", "dog", "cat"], r"duplicates: \['cat'\]")],
)
def test_label_config_refuses_empty_and_repeated_names(names, message):
    with pytest.raises(ValueError, match=message):
        label_config(names)


def test_read_label_config_needs_the_label_choices(tmp_path):
    path = tmp_path / "config.xml"
    path.write_text('<View><Choices name="other" toName="image"><Choice value="x"/></Choices></View>')
    with pytest.raises(ValueError, match="<Choices name='label'>"):
        labelstudio.read_label_config(str(path))
    path.write_text("<View>")
    with pytest.raises(ValueError, match="Expected a Label Studio label config"):
        labelstudio.read_label_config(str(path))


# --------------------------------------------------------------------------- image URLs
def test_local_files_url_is_relative_to_the_document_root_and_quoted(tmp_path):
    root = str(tmp_path)
    assert image_url(os.path.join(root, "pool", "a.png"), document_root=root) == "/data/local-files/?d=pool/a.png"
    assert image_url(os.path.join(root, "my pool", "été.png"), document_root=root) == (
        "/data/local-files/?d=my%20pool/%C3%A9t%C3%A9.png"
    )
    # `&`, `#`, `?` and `+` would end or change the query if left as they are.
    assert image_url(os.path.join(root, "a&b#c?d+e.png"), document_root=root) == (
        "/data/local-files/?d=a%26b%23c%3Fd%2Be.png"
    )


def test_relative_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert image_url("pool/a.png", document_root=str(tmp_path)) == "/data/local-files/?d=pool/a.png"


def test_a_path_outside_the_document_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ValueError, match=r"inside the Label Studio document root .*Received: '.*other\.png'"):
        image_url(str(tmp_path / "other.png"), document_root=str(root))
    with pytest.raises(ValueError, match="inside the Label Studio document root"):
        image_url(str(root), document_root=str(root))
    (root / "link.png").symlink_to(tmp_path / "elsewhere.png")  # a symlink out of the root is outside too
    with pytest.raises(ValueError, match="link.png"):
        image_url(str(root / "link.png"), document_root=str(root))


def test_cloud_prefix_joins_the_relative_path(tmp_path):
    path = str(tmp_path / "pool" / "a b.png")
    assert image_url(path, str(tmp_path), url_prefix="gs://bucket/dir/") == "gs://bucket/dir/pool/a%20b.png"
    assert image_url(path, str(tmp_path), url_prefix="s3://bucket") == "s3://bucket/pool/a%20b.png"
    assert image_url(path, str(tmp_path), url_prefix="https://cdn.example/x") == "https://cdn.example/x/pool/a%20b.png"
    with pytest.raises(ValueError, match=r"url_prefix starting with .*Received: 'ftp://x'"):
        image_url(path, str(tmp_path), url_prefix="ftp://x")
    with pytest.raises(ValueError, match="received neither"):
        image_url(path)


def test_image_path_inverts_image_url(tmp_path):
    root = str(tmp_path)
    for name in ("pool/a.png", "my pool/été&1.png"):
        path = os.path.join(root, *name.split("/"))
        assert image_path(image_url(path, document_root=root), document_root=root) == path
    assert image_path("gs://bucket/dir/a%20b.png") == "gs://bucket/dir/a b.png"
    with pytest.raises(ValueError, match="relative to the document root"):
        image_path("/data/local-files/?d=../etc/passwd", document_root=root)
    with pytest.raises(ValueError, match="document root to find the file"):
        image_path("/data/local-files/?d=a.png")


def test_image_sources_accept_local_files_urls_and_plain_paths_inside_the_root(tmp_path, monkeypatch):
    root = str(tmp_path)
    sources = labelstudio.ImageSources(document_root=root)
    assert sources.path("/data/local-files/?d=pool/a%20b.png") == os.path.join(root, "pool", "a b.png")
    assert sources.path("pool/%C3%A9t%C3%A9.png") == os.path.join(root, "pool", "été.png")
    assert sources.path(os.path.join(root, "pool", "c.png")) == os.path.join(root, "pool", "c.png")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert labelstudio.ImageSources().path("d.png") == os.path.join(root, "here", "d.png")  # default root: cwd
    with pytest.raises(ValueError, match="Expected the document root to find the file of the local-files URL"):
        labelstudio.ImageSources().path("/data/local-files/?d=a.png")  # a setup error, not a task's


@pytest.mark.parametrize(
    "url, reason",
    [
        ("file:///etc/passwd", "URL scheme 'file' not allowed (file:///etc/passwd)"),
        ("FILE:///etc/passwd", "URL scheme 'file' not allowed (FILE:///etc/passwd)"),
        ("file%3A%2F%2F%2Fetc%2Fpasswd", "URL scheme 'file' not allowed (file%3A%2F%2F%2Fetc%2Fpasswd)"),
        ("file:/etc/passwd", "URL scheme 'file' not allowed (file:/etc/passwd)"),
        ("http://example.com/a.png", "URL scheme 'http' not allowed (http://example.com/a.png)"),
        ("https://example.com/a.png", "URL scheme 'https' not allowed (https://example.com/a.png)"),
        ("s3://bucket/a.png", "URL scheme 's3' not allowed (s3://bucket/a.png)"),
        ("gs://bucket/a.png", "URL scheme 'gs' not allowed (gs://bucket/a.png)"),
        ("data:image/png;base64,iVBO", "URL scheme 'data' not allowed (data:image/png;base64,iVBO)"),
        ("/etc/passwd", "outside the document root ROOT (/etc/passwd)"),
        ("../../../../etc/passwd", "outside the document root ROOT (../../../../etc/passwd)"),
        ("pool/../../etc/passwd", "outside the document root ROOT (pool/../../etc/passwd)"),
        ("%2e%2e/%2e%2e/etc/passwd", "outside the document root ROOT (%2e%2e/%2e%2e/etc/passwd)"),
        ("link/passwd", "outside the document root ROOT (link/passwd)"),
        ("/data/local-files/?d=link/passwd", "outside the document root ROOT (/data/local-files/?d=link/passwd)"),
        ("/data/local-files/?d=../etc/passwd",
         "a local-files URL without a path inside the root (/data/local-files/?d=../etc/passwd)"),
        ("/data/local-files/?d=%2e%2e%2fetc%2fpasswd",
         "a local-files URL without a path inside the root (/data/local-files/?d=%2e%2e%2fetc%2fpasswd)"),
        ("/data/local-files/?d=/etc/passwd",
         "a local-files URL without a path inside the root (/data/local-files/?d=/etc/passwd)"),
        ("/data/local-files/?x=a.png", "a local-files URL without a path inside the root (/data/local-files/?x=a.png)"),
        ("pool/a%00.png", "a NUL character in the path (pool/a%00.png)"),
    ],
)  # fmt: skip
def test_image_sources_refuse_other_schemes_and_files_outside_the_root(tmp_path, url, reason):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to("/etc")  # inside the root by name, outside by what it opens
    with pytest.raises(labelstudio.RefusedImage) as refused:
        labelstudio.ImageSources(document_root=str(root)).path(url)
    assert str(refused.value) == "image refused: " + reason.replace("ROOT", repr(str(root)))


def test_image_sources_allow_what_they_are_told_and_no_more(tmp_path):
    root = str(tmp_path)
    sources = labelstudio.ImageSources(root, allow_paths_outside_root=True, url_schemes=("file", "S3", "https"))
    assert sources.url_schemes == ("file", "s3", "https")
    assert sources.path("file:///etc/passwd") == "file:///etc/passwd"
    assert sources.path("s3://bucket/a%20b.png") == "s3://bucket/a b.png"
    assert sources.path("https://example.com/a.png") == "https://example.com/a.png"
    assert sources.path("/etc/passwd") == "/etc/passwd"
    assert os.path.normpath(sources.path("../x.png")) == os.path.join(os.path.dirname(root), "x.png")
    for url in ("http://example.com/a.png", "gs://bucket/a.png", "/data/local-files/?d=../etc/passwd"):
        with pytest.raises(labelstudio.RefusedImage):
            sources.path(url)
    with pytest.raises(ValueError, match=r"Expected URL scheme names such as 's3' or 'https' \(no ':' or '/'\). "
                                         r"Received: url_schemes=\['s3://'\]"):  # fmt: skip
        labelstudio.ImageSources(url_schemes=("s3://",))


# --------------------------------------------------------------------------- export readers
def votes(annotations):
    return [(a.item_id, a.choices, a.annotator, a.annotation_id, a.cancelled) for a in annotations]


# What Label Studio 1.23.2 exported for tests/data/labelstudio/: task 4 also has a data field `id` ("dd").
RECORDED = [
    ("a", ("dog",), "3", 3, False),
    ("a", ("cat",), "2", 2, False),
    ("a", ("cat",), "1", 1, False),
    ("b", ("NotAClass",), "1", 4, False),
    ("d", ("cat",), "1", 7, False),
    ('e, "é"', (), "2", 9, False),
    ('e, "é"', ("cat", "dog"), "1", 8, False),
    ("f", ("cat",), "1", 11, False),
    ("f", ("dog",), "1", 10, False),
]
CANCELLED = [("b", ("dog",), "2", 5, True), ("c", ("cat",), "1", 6, True)]


@pytest.mark.parametrize("export_type", EXPORTS)
def test_the_three_export_types_read_as_the_same_annotations(export_type):
    annotations = read_export(os.path.join(DATA, EXPORTS[export_type]))
    got = sorted(votes(annotations), key=lambda vote: vote[3])
    # JSON_MIN and CSV leave cancelled annotations out; JSON keeps them, marked.
    expected = RECORDED + (CANCELLED if export_type == "JSON" else [])
    assert got == sorted(expected, key=lambda vote: vote[3])
    assert {a.image for a in annotations} == {"/data/local-files/?d=pool/a.png"}


def test_flattened_exports_quirks():
    by_type = {kind: read_export(os.path.join(DATA, name)) for kind, name in EXPORTS.items()}
    task_ids = {kind: {a.item_id: a.task_id for a in annotations} for kind, annotations in by_type.items()}
    assert task_ids["JSON"]["a"] == task_ids["JSON_MIN"]["a"] == task_ids["CSV"]["a"] == 1  # CSV text made an int
    # A data field named `id` collides with the task id: JSON_MIN keeps the task id, CSV the data field.
    assert (task_ids["JSON"]["d"], task_ids["JSON_MIN"]["d"], task_ids["CSV"]["d"]) == (4, 4, "dd")
    with open(os.path.join(DATA, "export.csv"), encoding="utf-8") as handle:
        assert '"{""choices"":[""cat"",""dog""]}"' in handle.read()  # several choices: JSON inside the CSV cell


def test_export_type_from_the_file_or_given(tmp_path):
    path = tmp_path / "export.txt"
    path.write_text(open(os.path.join(DATA, "export_min.json"), encoding="utf-8").read(), encoding="utf-8")
    assert len(read_export(str(path))) == 9
    with pytest.raises(ValueError, match=r"export_type in \['JSON', 'JSON_MIN', 'CSV'\]. Received: 'XML'"):
        read_export(str(path), export_type="XML")
    path.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match=r"a JSON list of tasks\) in .*export.txt'. Received: an object"):
        read_export(str(path))


def test_flattened_exports_refuse_an_id_field_label_studio_overwrites():
    with pytest.raises(ValueError, match=r"Received: id_field='id'"):
        read_export(os.path.join(DATA, "export_min.json"), id_field="id")
    assert {a.item_id for a in read_export(os.path.join(DATA, "export.json"), id_field="id")} == {None, "dd"}


def test_a_task_without_the_id_field_is_rejected_not_guessed():
    annotations = read_export(os.path.join(DATA, "export.json"), id_field="pool_id")
    labels, rejects = resolve(annotations, ["cat", "dog"])
    assert labels == {}
    assert {reject["reason"] for reject in rejects} == {
        f"task has no item id (task {task})" for task in (1, 2, 4, 5, 6)
    }


# --------------------------------------------------------------------------- the majority rule
def vote(item, label, annotator, annotation_id, cancelled=False):
    return Annotation(item, (label,) if label else (), annotator, annotation_id, cancelled=cancelled)


def test_majority_wins_and_names_its_annotators():
    labels, rejects = resolve(
        [vote("a", "cat", "1", 1), vote("a", "dog", "2", 2), vote("a", "cat", "3", 3), vote("b", "dog", "1", 4)],
        ["cat", "dog"],
    )
    assert rejects == []
    assert {key: (value.label, value.annotators, dict(value.votes)) for key, value in labels.items()} == {
        "a": ("cat", ("1", "3"), {"cat": 2, "dog": 1}),
        "b": ("dog", ("1",), {"dog": 1}),
    }


def test_a_tie_is_rejected_with_the_counts():
    labels, rejects = resolve(
        [vote("a", "cat", "1", 1), vote("a", "dog", "2", 2), vote("a", "bird", "3", 3), vote("a", "bird", "4", 4),
         vote("a", "cat", "5", 5)],
        ["cat", "dog", "bird"],
    )  # fmt: skip
    assert labels == {}
    assert rejects == [
        {
            "id": "a",
            "votes": {"bird": 2, "cat": 2, "dog": 1},
            "reason": "tie between annotators: bird (2), cat (2), dog (1)",
        }
    ]


def test_each_annotator_votes_once_with_their_latest_annotation():
    labels, rejects = resolve(
        [vote("a", "dog", "1", 5), vote("a", "cat", "1", 2), vote("a", "cat", "2", 3)], ["cat", "dog"]
    )
    assert rejects == [{"id": "a", "votes": {"cat": 1, "dog": 1}, "reason": "tie between annotators: cat (1), dog (1)"}]
    labels, rejects = resolve([vote("a", "NotAClass", "1", 1), vote("a", "cat", "1", 2)], ["cat"])
    assert (labels["a"].label, rejects) == ("cat", [])  # the later annotation replaced the bad one


def test_invalid_votes_are_rejected_and_do_not_count():
    labels, rejects = resolve(
        [
            vote("a", "NotAClass", "1", 1),
            vote("a", "dog", "2", 2),
            vote("a", None, "3", 3),
            Annotation("a", ("cat", "dog"), "4", 4),
            vote("a", "cat", "5", 6, cancelled=True),
        ],
        ["cat", "dog"],
    )
    assert (labels["a"].label, labels["a"].annotators, dict(labels["a"].votes)) == ("dog", ("2",), {"dog": 1})
    assert [(reject["annotator"], reject["reason"]) for reject in rejects] == [
        ("1", "label not in the class list: NotAClass"),
        ("3", "no choice"),
        ("4", "several choices: cat, dog"),
    ]
    assert rejects[0] == {
        "id": "a", "choices": ["NotAClass"], "annotator": "1", "annotation_id": 1, "task_id": None,
        "reason": "label not in the class list: NotAClass",
    }  # fmt: skip


def test_labels_are_compared_exactly():
    _, rejects = resolve([vote("a", "Cat", "1", 1), vote("b", "cat ", "1", 2)], ["cat"])
    assert [reject["reason"] for reject in rejects] == [
        "label not in the class list: Cat",
        "label not in the class list: cat ",
    ]


# --------------------------------------------------------------------------- ingest
def run_ingest(*argv) -> int:
    parser = argparse.ArgumentParser()
    ingest_command.add_parser(parser.add_subparsers())
    return ingest_command.run(parser.parse_args(["ingest", *argv]))


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def without_time(records):
    return [{key: value for key, value in record.items() if key != "ingested_at"} for record in records]


@pytest.mark.parametrize("export_type", EXPORTS)
def test_ingesting_a_recorded_export_twice_changes_nothing(tmp_path, export_type):
    export = os.path.join(DATA, EXPORTS[export_type])
    known = tmp_path / "pool.jsonl"
    known.write_text("".join(json.dumps({"id": i, "path": f"pool/{i}.png"}) + "\n" for i in ["a", "b", "f", 'e, "é"']))
    (tmp_path / "pool").mkdir()
    for item in ["a", "b", "f", 'e, "é"']:
        (tmp_path / "pool" / f"{item}.png").write_bytes(f"{item}'s bytes".encode())
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text('{"id": "f", "label": "dog", "path": "pool/f.png"}\n')
    summary = labelstudio.ingest(export, str(labeled), ["cat", "dog"], manifest.read_known_items(str(known)))
    first = labeled.read_bytes()
    rejects = (tmp_path / f"{EXPORTS[export_type]}.rejects.jsonl").read_bytes()
    assert without_time(read_jsonl(labeled)) == [
        {"id": "f", "label": "dog", "path": "pool/f.png"},
        {"id": "a", "label": "cat", "path": "pool/a.png", "source": EXPORTS[export_type], "annotators": ["1", "2"],
         "sha256": hashlib.sha256(b"a's bytes").hexdigest()},
    ]  # fmt: skip
    assert [(reject["id"], reject["reason"]) for reject in read_jsonl(summary.rejects_path)] == [
        ("b", "label not in the class list: NotAClass"),
        ('e, "é"', "several choices: cat, dog"),
        ('e, "é"', "no choice"),
        ("d", "unknown id"),
        ("f", "conflicts with the labeled set: it has 'dog'"),
    ]
    assert (summary.added, summary.present, summary.cancelled) == (1, 0, 2 if export_type == "JSON" else 0)
    assert summary.reasons() == {
        "conflicts with the labeled set": 1, "label not in the class list": 1, "no choice": 1, "several choices": 1,
        "unknown id": 1,
    }  # fmt: skip
    again = labelstudio.ingest(export, str(labeled), ["cat", "dog"], manifest.read_known_items(str(known)))
    assert labeled.read_bytes() == first
    assert (tmp_path / f"{EXPORTS[export_type]}.rejects.jsonl").read_bytes() == rejects
    assert (again.added, again.present, len(again.rejects)) == (0, 1, 5)


def test_without_known_items_every_id_is_known_and_the_path_comes_from_the_url(tmp_path):
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.png").write_bytes(b"a's bytes")
    labeled = tmp_path / "labeled.jsonl"
    summary = labelstudio.ingest(
        os.path.join(DATA, "export.csv"), str(labeled), ["cat", "dog"],
        image_sources=labelstudio.ImageSources(document_root=str(tmp_path)),
    )  # fmt: skip
    assert [(entry["id"], entry["label"], entry["path"]) for entry in read_jsonl(labeled)] == [
        ("a", "cat", "pool/a.png"),
        ("d", "cat", "pool/a.png"),
        ("f", "cat", "pool/a.png"),
    ]
    assert summary.added == 3
    with pytest.raises(ValueError, match="document root to find the file"):
        labelstudio.ingest(os.path.join(DATA, "export.csv"), str(tmp_path / "other.jsonl"), ["cat", "dog"])


# --------------------------------------------------------------------------- a real Label Studio
def png(height: int, width: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


CLASSES = ["cat", "dog", "fish & chips"]
POOL = ["a.png", "b.png", "c.png", "d d.png", "été.png", "e.png", "g.png", "h.png", "stray.png"]


def triage_task(root: str, name: str) -> dict:
    """A task as triage writes it: image URL, item id, predicted loss and the model's class as a pre-annotation."""
    choice = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}
    return {
        "data": {"image": image_url(os.path.join(root, "pool", name), document_root=root), "item_id": name,
                 "predicted_loss": 1.0},
        "predictions": [{"model_version": "v1", "score": 1.0, "result": [choice]}],
    }  # fmt: skip


@pytest.fixture(scope="module")
def labeled_round(label_studio, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """A triage round in a real Label Studio: pool, tasks with served images, several annotators' annotations."""
    root = label_studio.document_root
    os.makedirs(os.path.join(root, "pool"))
    for name in POOL:
        with open(os.path.join(root, "pool", name), "wb") as handle:
            handle.write(png(4, 6))
    triage_out = tmp_path_factory.mktemp("triage_out")
    scored = [{"id": name, "path": os.path.join(root, "pool", name), "predicted_loss": 1.0} for name in POOL[:-1]]
    (triage_out / "scored.jsonl").write_text("".join(json.dumps(record) + "\n" for record in scored))
    (triage_out / "queue.jsonl").write_text("".join(json.dumps(record) + "\n" for record in scored[:3]))

    project = label_studio.create_project("lossal triage round", label_config(CLASSES))
    label_studio.connect_local_storage(project, os.path.join(root, "pool"))
    tasks = [triage_task(root, name) for name in POOL]
    task_ids = label_studio.import_tasks(project, tasks)
    first = label_studio.current_user()
    second, third = label_studio.create_user("second@example.com"), label_studio.create_user("third@example.com")
    plan = [
        ("a.png", first, "cat", False), ("a.png", second, "cat", False), ("a.png", third, "dog", False),
        ("b.png", first, "dog", False), ("b.png", second, "cat", False),  # a tie
        ("c.png", first, "NotAClass", False), ("c.png", second, "fish & chips", False),
        ("d d.png", first, "cat", True),  # cancelled (skipped): nothing to ingest
        ("été.png", third, "dog", False),
        ("e.png", first, "cat", False),  # the labeled set says dog: a conflict
        ("g.png", second, "cat", False),  # already labeled cat: present
        # h.png: no annotation, only the model's pre-annotation, which must never become a label
        ("stray.png", first, "dog", False),  # not in triage's output: unknown
    ]  # fmt: skip
    annotation_ids = {}
    for name, user, label, cancelled in plan:
        annotation_ids[name, user] = label_studio.annotate(task_ids[name], user, [label], cancelled)
    return {
        "project": project, "tasks": tasks, "task_ids": task_ids, "users": (first, second, third),
        "annotation_ids": annotation_ids, "triage_out": str(triage_out), "root": root,
    }  # fmt: skip


@pytest.mark.slow  # starts a real Label Studio (1-2 min cold)
@pytest.mark.labelstudio
def test_label_studio_serves_the_images_at_the_mapped_urls(label_studio, labeled_round):  # noqa: F811
    for task in labeled_round["tasks"]:
        assert label_studio.send("GET", task["data"]["image"]) == (200, png(4, 6))
    absolute = os.path.join(labeled_round["root"], "pool", "a.png")
    status, _ = label_studio.send("GET", "/data/local-files/?d=" + urllib.parse.quote(absolute))
    assert status == 404  # why image_url refuses paths outside the document root
    with pytest.raises(urllib.error.HTTPError, match="401"):  # local files are served to logged-in users only
        urllib.request.urlopen(label_studio.url + labeled_round["tasks"][0]["data"]["image"], timeout=30)
    assert [task["data"]["image"] for task in labeled_round["tasks"]][3:5] == [
        "/data/local-files/?d=pool/d%20d.png",
        "/data/local-files/?d=pool/%C3%A9t%C3%A9.png",
    ]


@pytest.mark.slow  # starts a real Label Studio (1-2 min cold)
@pytest.mark.labelstudio
@pytest.mark.parametrize("export_type", EXPORTS)
def test_ingest_of_each_real_export(label_studio, labeled_round, tmp_path, capsys, export_type):  # noqa: F811
    export = tmp_path / EXPORTS[export_type]
    export.write_bytes(label_studio.export(labeled_round["project"], export_type))
    labeled = tmp_path / "labeled.jsonl"
    pool = os.path.join(labeled_round["root"], "pool")
    existing = [
        {"id": "e.png", "path": os.path.join(pool, "e.png"), "label": "dog"},
        {"id": "g.png", "path": os.path.join(pool, "g.png"), "label": "cat"},
    ]
    manifest.write_manifest(str(labeled), existing)
    config = tmp_path / "label_config.xml"
    labelstudio.write_label_config(str(config), CLASSES)
    argv = [str(export), "--manifest", str(labeled), "--label-config", str(config)]
    argv += ["--known-items", labeled_round["triage_out"]]
    assert run_ingest(*argv) == 3  # completed with rejects
    first, second, third = labeled_round["users"]
    ids = labeled_round["annotation_ids"]
    content = hashlib.sha256(png(4, 6)).hexdigest()  # every pool image has these bytes
    added = [
        {"id": "a.png", "path": os.path.join(pool, "a.png"), "label": "cat", "source": export.name,
         "annotators": sorted([str(first), str(second)]), "sha256": content},
        {"id": "c.png", "path": os.path.join(pool, "c.png"), "label": "fish & chips", "source": export.name,
         "annotators": [str(second)], "sha256": content},
        {"id": "été.png", "path": os.path.join(pool, "été.png"), "label": "dog", "source": export.name,
         "annotators": [str(third)], "sha256": content},
    ]  # fmt: skip
    assert without_time(read_jsonl(labeled)) == existing + added
    rejects = read_jsonl(tmp_path / f"{export.name}.rejects.jsonl")
    assert rejects == [
        {"id": "c.png", "choices": ["NotAClass"], "annotator": str(first), "annotation_id": ids["c.png", first],
         "task_id": labeled_round["task_ids"]["c.png"], "reason": "label not in the class list: NotAClass"},
        {"id": "b.png", "votes": {"cat": 1, "dog": 1}, "reason": "tie between annotators: cat (1), dog (1)"},
        {"id": "stray.png", "label": "dog", "reason": "unknown id"},
        {"id": "e.png", "label": "cat", "reason": "conflicts with the labeled set: it has 'dog'"},
    ]  # fmt: skip
    cancelled = " (and 1 cancelled, ignored)" if export_type == "JSON" else ""
    summary = capsys.readouterr().out
    assert summary == (
        f"Read 11 annotation(s){cancelled}: added 3 item(s) to the labeled set, 1 already "
        "present with the same label, rejected 4 (1 conflicts with the labeled set, 1 label not in the class list, "
        f"1 tie between annotators, 1 unknown id). Rejects: {tmp_path / export.name}.rejects.jsonl\n"
    )
    before = labeled.read_bytes()
    assert run_ingest(*argv) == 3
    assert labeled.read_bytes() == before
    assert "added 0 item(s) to the labeled set, 4 already present" in capsys.readouterr().out
    rejects_text = (tmp_path / f"{export.name}.rejects.jsonl").read_text(encoding="utf-8")
    print(f"--- {export_type} ---\n{summary}{rejects_text}")  # shown with -s, pasted into docs/labeling.md


# --------------------------------------------------------------------------- malformed exports
def json_task(task_id, item, choice="cat"):
    result = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}
    annotation = {"id": task_id, "completed_by": 1, "result": [result], "was_cancelled": False}
    return {"id": task_id, "data": {"item_id": item, "image": f"pool/{item}.png"}, "annotations": [annotation]}


DELETE = object()


def changed(value, where, new):
    """`value` with the element at the key path `where` replaced by `new` (deleted when `new` is DELETE)."""
    if not where:
        return new
    value = value.copy()
    if new is DELETE and len(where) == 1:
        del value[where[0]]
    else:
        value[where[0]] = changed(value[where[0]], where[1:], new)
    return value


@pytest.mark.parametrize(
    "where, new, item, problem",
    [
        (("annotations",), {"id": 2}, "bad", "`annotations` is an object {'id': 2}, expected a list"),
        (("annotations", 0), ["cat"], "bad", "`annotations[0]` is a list ['cat'], expected an object"),
        (("annotations", 0, "id"), "x", "bad", "`annotations[0].id` is a string 'x', expected an integer"),
        (("annotations", 0, "id"), DELETE, "bad", "`annotations[0].id` is missing, expected an integer"),
        (("annotations", 0, "result"), "cat", "bad", "`annotations[0].result` is a string 'cat', expected a list"),
        (("annotations", 0, "result", 0), "cat", "bad",
         "`annotations[0].result[0]` is a string 'cat', expected an object"),
        (("annotations", 0, "result", 0, "value"), "cat", "bad",
         "`annotations[0].result[0].value` is a string 'cat', expected an object"),
        (("annotations", 0, "result", 0, "value", "choices"), "cat", "bad",
         "`annotations[0].result[0].value.choices` is a string 'cat', expected a list"),
        (("annotations", 0, "result", 0, "value", "choices"), {"cat": 1}, "bad",
         "`annotations[0].result[0].value.choices` is an object {'cat': 1}, expected a list"),
        (("annotations", 0, "result", 0, "value", "choices", 0), 7, "bad",
         "`annotations[0].result[0].value.choices[0]` is an integer 7, expected a string"),
        (("data",), ["bad"], None, "`data` is a list ['bad'], expected an object"),
        (("data", "item_id"), {"x": 1}, None, "`data.item_id` is an object {'x': 1}, expected a string"),
        (("data", "image"), ["a.png"], "bad", "`data.image` is a list ['a.png'], expected a string"),
        ((), "a task", None, "`task` is a string 'a task', expected an object"),
    ],
)  # fmt: skip
def test_a_malformed_json_task_is_rejected_with_its_reason_and_the_rest_read(tmp_path, where, new, item, problem):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([json_task(1, "good"), changed(json_task(2, "bad", "dog"), where, new)]))
    labels, rejects = resolve(read_export(str(path)), ["cat", "dog"])
    assert [(item_id, label.label) for item_id, label in labels.items()] == [("good", "cat")]
    task_id = None if where == () else 2
    assert rejects == [{"id": item, "task_id": task_id, "annotation_id": None, "reason": f"malformed task: {problem}"}]


def test_a_malformed_task_keeps_its_item_out_whatever_its_other_votes(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([json_task(1, "a"), changed(json_task(2, "a"), ("annotations", 0, "result"), "cat")]))
    labels, rejects = resolve(read_export(str(path)), ["cat"])
    assert labels == {} and [reject["reason"] for reject in rejects] == [
        "malformed task: `annotations[0].result` is a string 'cat', expected a list"
    ]


FLAT = {"image": "pool/bad.png", "item_id": "bad", "id": 2, "label": "dog", "annotator": 1, "annotation_id": 2}


@pytest.mark.parametrize(
    "field, new, problem",
    [
        ("label", ["dog"], "`label` is a list ['dog'], expected a string or {\"choices\": [...]}"),
        ("label", 3, "`label` is an integer 3, expected a string or {\"choices\": [...]}"),
        ("label", {"choices": "dog"}, "`label.choices` is a string 'dog', expected a list"),
        ("label", {"choices": [None]}, "`label.choices[0]` is missing, expected a string"),
        ("annotation_id", "x", "`annotation_id` is a string 'x', expected an integer"),
        ("annotation_id", 2.5, "`annotation_id` is a number 2.5, expected an integer"),
        ("annotation_id", DELETE, "`annotation_id` is missing, expected an integer"),
        ("annotator", DELETE, "`annotator` is missing, expected a user id"),
        ("annotator", {"id": 1}, "`annotator` is an object {'id': 1}, expected a user id"),
        ("image", 5, "`image` is an integer 5, expected a string"),
    ],
)  # fmt: skip
def test_a_malformed_json_min_record_is_rejected_with_its_reason(tmp_path, field, new, problem):
    good = {**FLAT, "item_id": "good", "label": "cat", "annotation_id": 1, "id": 1}
    path = tmp_path / "export_min.json"
    path.write_text(json.dumps([good, changed(FLAT, (field,), new)]))
    labels, rejects = resolve(read_export(str(path)), ["cat", "dog"])
    assert list(labels) == ["good"] and labels["good"].label == "cat"
    annotation_id = None if field == "annotation_id" else 2
    assert rejects == [
        {"id": "bad", "task_id": 2, "annotation_id": annotation_id, "reason": f"malformed task: {problem}"}
    ]


def test_a_malformed_csv_row_is_rejected_with_its_reason(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("annotation_id,annotator,id,image,item_id,label\n1,1,1,pool/a.png,a,cat\nx,1,2,pool/b.png,b,dog\n")
    labels, rejects = resolve(read_export(str(path)), ["cat", "dog"])
    assert list(labels) == ["a"]
    assert [(reject["id"], reject["reason"]) for reject in rejects] == [
        ("b", "malformed task: `annotation_id` is a string 'x', expected an integer")
    ]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("e.json", '{"tasks": []}', r"Expected a Label Studio JSON export \(a JSON list of tasks\) in '.*e.json'. "
                                    r"Received: an object \{'tasks': \[\]\}"),
        ("e.json", '"cat"', r"a JSON list of tasks\) in '.*e.json'. Received: a string 'cat'"),
        ("e.json", "[1, 2]", r"Expected a Label Studio JSON_MIN export \(a list of records, each with `annotator` and "
                             r"`annotation_id`\) in '.*e.json'; no record has that shape. First: malformed task: "
                             r"`record` is an integer 1, expected an object$"),
        ("e.json", '[{"annotations": {}}]', r"Expected a Label Studio JSON export \(a list of tasks, each with a `data` "
                                            r"object and a list of `annotations`\) in '.*e.json'; no record has that "
                                            r"shape. First: malformed task: `data` is missing, expected an object$"),
        ("e.json", '[{"id": 1, "data": {}, "annotations": [{"result": []}]}]',
         r"no record has that shape. First: malformed task: `annotations\[0\].id` is missing, expected an integer "
         r"\(task 1\)$"),
        ("e.json", "[" * 100_000, r"Expected a Label Studio JSON export in '.*e.json': maximum recursion depth"),
        ("e.json", "not json", r"Expected a Label Studio JSON export in '.*e.json': Expecting value"),
        ("e.csv", "a,b\n1,2\n", r"Expected a Label Studio CSV export \(columns \['annotator', 'annotation_id'\] "
                                 r"among others\) in '.*e.csv'. Received columns: \['a', 'b'\]"),
        ("e.csv", "annotator,annotation_id,label\n1,1," + "x" * 200_000 + "\n",
         r"Expected a Label Studio CSV export in '.*e.csv': field larger than field limit"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_an_export_is_one_error_naming_it(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as refused:
        read_export(str(path))
    assert "\n" not in str(refused.value)


def test_a_binary_file_is_one_error_naming_it(tmp_path):
    path = tmp_path / "export.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=r"Expected a Label Studio export \(UTF-8 text\) in '.*export.json': 'utf-8'"):
        read_export(str(path))


WRONG_VALUES = [DELETE, None, "x", 7, ["x"], {"x": 1}]
# What ingest reads of a JSON export; the recorded tasks' other fields are left out of the test below.
READ_FIELDS = {"id", "data", "annotations", "completed_by", "result", "from_name", "type", "value", "choices",
               "was_cancelled", "item_id", "image"}  # fmt: skip


def only_read_fields(value):
    if isinstance(value, dict):
        return {key: only_read_fields(child) for key, child in value.items() if key in READ_FIELDS}
    return [only_read_fields(child) for child in value] if isinstance(value, list) else value


def json_paths(value, where=()):
    yield where
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from json_paths(child, (*where, key))


def test_no_wrong_value_anywhere_in_a_recorded_export_gets_past_ingest_as_an_exception(tmp_path, capsys, monkeypatch):
    with open(os.path.join(DATA, "export.json"), encoding="utf-8") as handle:
        recorded = only_read_fields(json.load(handle))[:3]  # 3 tasks: 7 annotations, one cancelled
    monkeypatch.setattr(os, "fsync", lambda descriptor: None)  # hundreds of runs: durability is not the point here
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "a.png").write_bytes(b"a's bytes")  # what the recorded tasks name
    export = tmp_path / "export.json"
    outcomes = collections.Counter()
    for where in json_paths(recorded):
        for new in WRONG_VALUES:
            if new is DELETE and (not where or isinstance(recorded_at(recorded, where[:-1]), list)):
                continue
            export.write_text(json.dumps(changed(recorded, where, new)), encoding="utf-8")
            code = run_ingest(
                str(export), "--manifest", str(tmp_path / "m.jsonl"), "--classes", "cat,dog",
                "--document-root", str(tmp_path), "--rejects", str(tmp_path / "rejects.jsonl"),
            )  # fmt: skip
            out, err = capsys.readouterr()
            assert code in (0, 2, 3), (where, new)
            assert (err.startswith("lossal ingest: ") and err.count("\n") == 1) if code == 2 else err == "", (
                where,
                new,
            )
            ingested = code in (0, 3)  # 3: completed with rejects (the recorded tasks hold invalid votes)
            malformed = ingested and "malformed task" in (tmp_path / "rejects.jsonl").read_text(encoding="utf-8")
            outcomes["malformed" if malformed else "ingested" if ingested else code] += 1
            if os.path.exists(tmp_path / "m.jsonl"):
                os.remove(tmp_path / "m.jsonl")
    # 85 values (the file, 3 tasks and what ingest reads of them), 6 changes each (deletions only of object
    # keys): 488 exports, each ingested with or without a malformed-task reject, or (the 5 that replace the
    # whole file by something that is not a list of tasks) refused in one line.
    assert outcomes == {"malformed": 264, "ingested": 219, 2: 5}


def recorded_at(value, where):
    for key in where:
        value = value[key]
    return value
