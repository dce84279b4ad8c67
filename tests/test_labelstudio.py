"""keras_lossal.labelstudio: label config, image URLs, export readers, the majority rule, ingest.

The export fixtures in tests/data/labelstudio/ were exported by a real Label
Studio 1.23.2; the `labelstudio` tests at the end drive a real server
(tests/labelstudio_server.py) from task import to `lossal ingest`.
"""

import argparse
import json
import os
import struct
import urllib.error
import urllib.parse
import urllib.request
import zlib

import pytest
from labelstudio_server import label_studio  # noqa: F401 - pytest fixture

from keras_lossal import labelstudio, manifest
from keras_lossal.commands import ingest as ingest_command
from keras_lossal.labelstudio import Annotation, image_path, image_url, label_config, read_export, resolve

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
    with pytest.raises(ValueError, match="JSON list of objects"):
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
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text('{"id": "f", "label": "dog", "path": "pool/f.png"}\n')
    summary = labelstudio.ingest(export, str(labeled), ["cat", "dog"], manifest.read_known_items(str(known)))
    first = labeled.read_bytes()
    rejects = (tmp_path / f"{EXPORTS[export_type]}.rejects.jsonl").read_bytes()
    assert without_time(read_jsonl(labeled)) == [
        {"id": "f", "label": "dog", "path": "pool/f.png"},
        {"id": "a", "label": "cat", "path": "pool/a.png", "source": EXPORTS[export_type], "annotators": ["1", "2"]},
    ]
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
    labeled = tmp_path / "labeled.jsonl"
    summary = labelstudio.ingest(
        os.path.join(DATA, "export.csv"), str(labeled), ["cat", "dog"], document_root=str(tmp_path)
    )
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
    assert run_ingest(*argv) == 0
    first, second, third = labeled_round["users"]
    ids = labeled_round["annotation_ids"]
    added = [
        {"id": "a.png", "path": os.path.join(pool, "a.png"), "label": "cat", "source": export.name,
         "annotators": sorted([str(first), str(second)])},
        {"id": "c.png", "path": os.path.join(pool, "c.png"), "label": "fish & chips", "source": export.name,
         "annotators": [str(second)]},
        {"id": "été.png", "path": os.path.join(pool, "été.png"), "label": "dog", "source": export.name,
         "annotators": [str(third)]},
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
    assert run_ingest(*argv) == 0
    assert labeled.read_bytes() == before
    assert "added 0 item(s) to the labeled set, 4 already present" in capsys.readouterr().out
    rejects_text = (tmp_path / f"{export.name}.rejects.jsonl").read_text(encoding="utf-8")
    print(f"--- {export_type} ---\n{summary}{rejects_text}")  # shown with -s, pasted into docs/labeling.md


def test_a_json_export_without_annotation_ids_is_refused(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": 1, "data": {"item_id": "a"}, "annotations": [{"result": []}]}]))
    with pytest.raises(ValueError, match=r"Expected an `id` in every annotation of the JSON export .*Task: 1"):
        read_export(str(path))
    path.write_text(json.dumps([{"id": 1, "annotations": []}]))
    with pytest.raises(ValueError, match="Expected a `data` object in every task"):
        read_export(str(path))
