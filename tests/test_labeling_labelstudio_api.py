"""keras_lossal.labeling.labelstudio_api and `lossal labelstudio push / pull`: pure parts here, then a real Label Studio 1.23.2.

The `labelstudio` tests start one server for the module (tests/labelstudio_server.py) as soon as the first of
them begins, and wait for it only when they first call it: the two-round test trains and triages meanwhile.
Every `lossal` step runs as a subprocess of the `lossal` command, as a user types it.
"""

import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import urllib.request
import zlib

import numpy as np
import pytest
from labelstudio_server import LabelStudioServer, free_port, label_studio_executable

from keras_lossal import cli
from keras_lossal.labeling import labelstudio_api
from keras_lossal.labeling.labelstudio import label_config
from keras_lossal.labeling.labelstudio_api import (
    LabelStudioError,
    new_tasks,
    storage_folders,
    token_kind,
    unauthorized_message,
)

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "dog"]
PROJECT = "lossal rounds"


def jwt(claims: dict, signature: str = "c2lnbmF0dXJl") -> str:
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{signature}"


# A token of the shape Label Studio's account page gives (signed by another server: refused by this one).
FOREIGN_TOKEN = jwt({"token_type": "refresh", "exp": 4_102_444_800, "iat": 1_700_000_000, "jti": "x", "user_id": "1"})
EXPIRED_TOKEN = jwt({"token_type": "refresh", "exp": 1_000_000_000, "iat": 900_000_000, "jti": "y", "user_id": "1"})


# --------------------------------------------------------------------------- tokens and the 401 messages
def test_token_kind_tells_a_personal_access_token_from_a_legacy_token():
    assert token_kind(FOREIGN_TOKEN) == "personal access token"
    assert token_kind(FOREIGN_TOKEN.rsplit(".", 1)[0]) == "personal access token"  # the cut-short form the UI lists
    for legacy in ("lossaltesttoken0123456789abcdef01234567", "abc.def.ghi", "e30.e30.x", "", "....."):
        assert token_kind(legacy) == "legacy token", legacy


def test_a_refused_legacy_token_says_how_to_enable_legacy_tokens_or_use_a_personal_access_token():
    detail = "Authentication token no longer valid: legacy token authentication has been disabled for this organization"
    message = unauthorized_message("http://ls:8080", "0123456789abcdef", detail)
    assert message == (
        f"Label Studio at http://ls:8080 refused the legacy token (401: {detail}). Label Studio 1.23 accepts legacy "
        "tokens only if the organisation enables them: Organization > API Tokens Settings > Legacy Tokens, or "
        "`label-studio start --enable-legacy-api-token` on the first start (when it creates the organisation); or use "
        "a personal access token from the account page (Account & Settings > Personal Access Token)."
    )


def test_a_refused_personal_access_token_says_to_create_a_new_one_on_the_account_page():
    message = unauthorized_message("http://ls:8080", FOREIGN_TOKEN, "Token is invalid")
    assert message == (
        "Label Studio at http://ls:8080 refused the personal access token (401: Token is invalid). It is expired, "
        "revoked, cut short or from another server: create a new one on the account page (Account & Settings > "
        "Personal Access Token) and pass it with --token or LABEL_STUDIO_API_KEY."
    )
    assert "--enable-legacy-api-token" not in message


def test_url_and_token_come_from_the_flags_else_label_studio_s_environment_variables(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://from-env:8080/")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "env-token")
    client = labelstudio_api.LabelStudioClient()
    assert (client.url, client.token) == ("http://from-env:8080", "env-token")
    client = labelstudio_api.LabelStudioClient("http://flag:9000", "flag-token")
    assert (client.url, client.token) == ("http://flag:9000", "flag-token")
    monkeypatch.delenv("LABEL_STUDIO_URL")
    assert labelstudio_api.LabelStudioClient().url == "http://localhost:8080"
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    with pytest.raises(LabelStudioError, match="no Label Studio token: pass --token or set LABEL_STUDIO_API_KEY"):
        labelstudio_api.LabelStudioClient()
    with pytest.raises(LabelStudioError, match="URL starting with http:// or https://. Received: 'localhost:8080'"):
        labelstudio_api.LabelStudioClient("localhost:8080", "t")


def test_an_expired_personal_access_token_and_an_unreachable_server_are_one_line_and_exit_2(tmp_path, capsys):
    root = str(tmp_path / "root")
    triage_dir = fake_triage(root, ["a.png"], "pool", str(tmp_path / "triage"))
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["labelstudio", "push", triage_dir, "--project", "p", "--url", url, "--document-root", root]
    assert cli.main([*argv, "--token", EXPIRED_TOKEN]) == 2
    assert capsys.readouterr().err == (
        "lossal labelstudio push: the personal access token has expired (API key has expired. Please obtain a new "
        "refresh token.): create a new one on the account page (Account & Settings > Personal Access Token) and pass "
        "it with --token or LABEL_STUDIO_API_KEY\n"
    )
    assert cli.main([*argv, "--token", "t"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lossal labelstudio push: Label Studio at {url} could not be reached while looking for ")
    assert err.count("\n") == 1
    argv = ["labelstudio", "pull", "--project", "p", "-o", str(tmp_path / "m.jsonl"), "--url", url, "--token", "t"]
    assert cli.main(argv) == 2
    assert "could not be reached while looking for project 'p'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "m.jsonl")


def test_push_and_pull_start_without_tensorflow():
    parser = cli.build_parser()
    assert parser.parse_args(["labelstudio", "push", "d", "--project", "p"]).tensorflow is False
    assert parser.parse_args(["labelstudio", "pull", "--project", "p", "-o", "m.jsonl"]).tensorflow is False
    assert parser.parse_args(["train", "--data", "d", "--out", "o"]).tensorflow is True
    code = "import sys, keras_lossal.labeling.labelstudio_api, keras_lossal.commands.labelstudio_sync; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


# --------------------------------------------------------------------------- storages and matching
def test_the_storage_covers_the_common_folder_of_the_queue_s_images():
    url = "/data/local-files/?d="
    assert storage_folders([url + "pool/a.png", url + "pool/b%20b.png"], "/srv/data") == ["/srv/data/pool"]
    assert storage_folders([url + "pool/cat/a.png", url + "pool/dog/b.png"], "/srv/data/") == ["/srv/data/pool"]
    assert storage_folders([url + "pool/a.png", url + "triage/label_studio_images/b.png"], "/srv") == [
        "/srv/pool",
        "/srv/triage",
    ]  # nothing in common but the root, on which Label Studio refuses a storage: one per top-level folder
    assert storage_folders(["gs://bucket/a.png", "https://cdn/b.png"], None) == []  # cloud: connected by hand
    with pytest.raises(LabelStudioError, match="pass --document-root or set LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"):
        storage_folders([url + "pool/a.png"], None)
    with pytest.raises(LabelStudioError, match="an absolute path; received 'data'"):
        storage_folders([url + "pool/a.png"], "data")
    with pytest.raises(LabelStudioError, match="not in a folder below the document root"):
        storage_folders([url + "a.png"], "/srv")
    with pytest.raises(LabelStudioError, match="not in a folder below the document root"):
        storage_folders([url + "../etc/a.png"], "/srv")
    with pytest.raises(LabelStudioError, match=r"'pool/a.png' is no URL Label Studio serves: run `lossal triage` with"):
        storage_folders(["pool/a.png"], "/srv")


def test_a_task_is_new_unless_the_project_holds_its_sha256_or_its_image_url():
    def task(image, sha256=None):
        return {"data": {"image": image, **({"sha256": sha256} if sha256 else {})}}

    present = [task("u/a.png", "aa")["data"], task("u/old.png")["data"]]  # an older task without a hash
    tasks = [
        task("u/a.png", "aa"),  # pushed before
        task("u/renamed.png", "aa"),  # the same bytes under another name
        task("u/old.png", "cc"),  # the same URL as a task without a hash
        task("u/b.png", "bb"),  # new
        task("u/b-copy.png", "bb"),  # a copy of a task of this push
        task("u/c.png"),  # new, without a hash
    ]
    new, skipped = new_tasks(tasks, present)
    assert [t["data"]["image"] for t in new] == ["u/b.png", "u/c.png"] and skipped == 4


# --------------------------------------------------------------------------- a real Label Studio
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Label Studio started now, without waiting: call `server.wait_until_up()` before the first request."""
    executable = label_studio_executable()
    document_root = str(tmp_path_factory.mktemp("labelstudio_root"))
    started = LabelStudioServer(executable, document_root, str(tmp_path_factory.mktemp("labelstudio_data")))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def personal_access_token(server):
    """The admin's personal access token, made as the account page's *Create* does (a user holds one at a time)."""
    server.wait_until_up()
    return server.call("POST", "/api/token/", expected=201)["token"]


def lossal(*arguments, token=None, ok=(0,), env=None):
    """Runs the `lossal` command (a subprocess, as a user types it); returns its stdout."""
    executable = os.path.join(os.path.dirname(sys.executable), "lossal")
    command = [executable] if os.path.exists(executable) else [sys.executable, "-m", "keras_lossal.cli"]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([REPOSITORY, os.environ.get("PYTHONPATH", "")]))
    environment.update(env or {})
    if token is not None:
        environment["LABEL_STUDIO_API_KEY"] = token
    completed = subprocess.run([*command, *map(str, arguments)], capture_output=True, text=True, env=environment)
    print(f"$ lossal {' '.join(map(str, arguments))}\n{completed.stdout}{completed.stderr}")
    assert completed.returncode in ok, f"lossal {arguments[0]} exited {completed.returncode}: {completed.stderr}"
    assert "Traceback" not in completed.stderr
    return completed


def png(pixels: np.ndarray) -> bytes:
    """An RGB PNG of `pixels` (H, W, 3) uint8, without TensorFlow."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def write_images(folder, names, seed):
    """Distinct 8x8 images, the dog class brighter than the cat class."""
    os.makedirs(folder, exist_ok=True)
    random = np.random.default_rng(seed)
    for index, name in enumerate(names):
        base = 150 if "dog" in folder or index % 2 else 60
        pixels = np.clip(random.normal(base, 40, size=(8, 8, 3)), 0, 255).astype(np.uint8)
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(png(pixels))


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def project_tasks(server, project_id):
    return server.call("GET", f"/api/tasks?project={project_id}&page_size=1000")["tasks"]


TRAIN = ("--backbone", "small_cnn", "--width", "4", "--epochs", "1", "--batch-size", "4", "--image-size", "8x8",
         "--validation-fraction", "0", "--seed", "0", "--quiet")  # fmt: skip


def train_export_triage(workspace, root, round_number, top_k):
    """`lossal train` on the manifest, `export` as the next version, `triage` the pool without labeled items."""
    labeled, out = os.path.join(workspace, "labeled.jsonl"), os.path.join(workspace, f"round{round_number}")
    lossal("train", "--data", labeled, "--out", os.path.join(out, "train"), *TRAIN)
    base = os.path.join(workspace, "models", "lossal")
    exported = lossal("export", os.path.join(out, "train", "model.keras"), "--base-path", base).stdout
    assert exported.strip().endswith(os.path.join("lossal", str(round_number)))
    triage = os.path.join(out, "triage")
    lossal("triage", os.path.join(root, "pool"), "--model", base, "--output", triage, "--top-k", top_k,
           "--batch-size", "4", "--label-studio-document-root", root, "--exclude-labeled", labeled)  # fmt: skip
    return triage


@pytest.mark.slow  # starts a real Label Studio and trains twice (about 5 min on 2 busy cores)
@pytest.mark.labelstudio
def test_two_rounds_through_the_cli_with_a_real_label_studio(server, request, tmp_path):
    root, workspace = server.document_root, str(tmp_path)
    write_images(os.path.join(root, "seed", "cat"), ["c0.png", "c1.png", "c2.png", "c3.png"], seed=1)
    write_images(os.path.join(root, "seed", "dog"), ["d0.png", "d1.png", "d2.png", "d3.png"], seed=2)
    pool_names = [f"p{index:02d}.png" for index in range(10)]
    write_images(os.path.join(root, "pool"), pool_names, seed=3)
    shutil.copy(os.path.join(root, "seed", "cat", "c0.png"), os.path.join(root, "pool", "copy_of_c0.png"))
    labeled = os.path.join(workspace, "labeled.jsonl")

    # Round 1: the labeled seed set, model version 1, a queue of 4 (the renamed copy of a labeled image left out).
    assert lossal("manifest", "from-folders", os.path.join(root, "seed"), "-o", labeled).stdout == (
        f"wrote 8 labeled image(s) in 2 class(es) (cat: 4, dog: 4) to {labeled}\n"
    )
    seed_records = read_jsonl(labeled)
    triage1 = train_export_triage(workspace, root, 1, top_k=4)
    queue1 = [record["id"] for record in read_jsonl(os.path.join(triage1, "queue.jsonl"))]
    assert len(queue1) == 4 and "copy_of_c0.png" not in queue1

    # Only now: the server started with the test and came up while it trained (a fixture argument would wait first).
    token = request.getfixturevalue("personal_access_token")  # what Label Studio 1.23 hands out by default
    connection = ("--url", server.url)
    pushed = lossal("labelstudio", "push", triage1, "--project", PROJECT, *connection, "--document-root", root,
                    token=token).stdout  # fmt: skip
    project_id = int(pushed.split("(id ")[1].split(")")[0])
    storage_id = int(pushed.splitlines()[1].split("storage ")[1].split()[0])
    assert pushed == (
        f"created project {PROJECT!r} (id {project_id}): {server.url}/projects/{project_id}/\n"
        f"created local-files storage {storage_id} covering {os.path.join(root, 'pool')}\n"
        "imported 4 task(s) with their predictions; 0 already in the project (same data.sha256 or image URL), "
        "not imported again\n"
    )
    tasks = {task["data"]["item_id"]: task for task in project_tasks(server, project_id)}
    assert sorted(tasks) == sorted(queue1)
    for task in tasks.values():  # the prediction (model version 1 and its score) came along; the image is served
        (prediction,) = server.call("GET", f"/api/predictions?task={task['id']}")
        assert prediction["model_version"] == "lossal/1" and prediction["score"] == task["data"]["predicted_loss"]
        assert server.send("GET", task["data"]["image"])[0] == 200

    # People label: two agree, one types a label outside the config, two disagree with no majority.
    admin, second, third = (
        server.current_user(),
        server.create_user("b@example.com"),
        server.create_user("c@example.com"),
    )
    agreed, bad, tied, single = queue1
    server.annotate(tasks[agreed]["id"], admin, ["cat"])
    server.annotate(tasks[agreed]["id"], second, ["cat"])
    server.annotate(tasks[bad]["id"], admin, ["NotAClass"])  # Label Studio accepts it through its API
    server.annotate(tasks[tied]["id"], second, ["cat"])
    server.annotate(tasks[tied]["id"], third, ["dog"])
    server.annotate(tasks[single]["id"], third, ["dog"])

    export = os.path.join(workspace, f"labelstudio_project_{project_id}.json")
    pull = ("labelstudio", "pull", "--project", PROJECT, "-o", labeled, "--known-items", triage1, *connection)
    pulled = lossal(*pull, token=token, ok=(3,)).stdout  # 3: completed with rejects
    assert pulled == (
        f"exported project {PROJECT!r} (id {project_id}) to {export}\n"
        "Read 6 annotation(s): added 2 item(s) to the labeled set, 0 already present with the same label, "
        "rejected 2 (1 label not in the class list, 1 tie between annotators). "
        f"Rejects: {export}.rejects.jsonl\n"
    )
    pool = os.path.join(root, "pool")
    added = [
        {"id": agreed, "path": os.path.join(pool, agreed), "label": "cat", "annotators": sorted([str(admin), str(second)])},
        {"id": single, "path": os.path.join(pool, single), "label": "dog", "annotators": [str(third)]},
    ]  # fmt: skip
    added = [{**record, "source": os.path.basename(export), "sha256": sha256(record["path"])} for record in added]
    after_round1 = read_jsonl(labeled)
    assert [{k: v for k, v in r.items() if k != "ingested_at"} for r in after_round1] == seed_records + sorted(
        added, key=lambda record: record["id"]
    )
    rejects = read_jsonl(f"{export}.rejects.jsonl")
    assert [(reject["id"], reject["reason"]) for reject in rejects] == [
        (bad, "label not in the class list: NotAClass"),
        (tied, "tie between annotators: cat (1), dog (1)"),
    ]

    # Round 2: model version 2 on 10 labels; the whole pool but what is labeled is queued, by content.
    triage2 = train_export_triage(workspace, root, 2, top_k=0)
    queue2 = read_jsonl(os.path.join(triage2, "queue.jsonl"))
    labeled_hashes = {record["sha256"] for record in read_jsonl(labeled)}
    assert {record["sha256"] for record in queue2}.isdisjoint(labeled_hashes)
    assert sorted(record["id"] for record in queue2) == sorted(set(pool_names) - {agreed, single})
    pushed = lossal("labelstudio", "push", triage2, "--project", PROJECT, *connection, token=token,
                    env={"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": root}).stdout  # fmt: skip
    assert pushed.splitlines()[:2] == [
        f"found project {PROJECT!r} (id {project_id}): {server.url}/projects/{project_id}/",
        f"found local-files storage {storage_id} covering {pool}",
    ]
    assert pushed.splitlines()[2].startswith("imported 6 task(s) with their predictions; 2 already in the project")
    assert len(project_tasks(server, project_id)) == 10  # the 2 rejected items were not imported again

    # A second push of both queues and a second pull change nothing.
    before = open(labeled, "rb").read()
    for triage in (triage1, triage2):
        again = lossal("labelstudio", "push", triage, "--project", PROJECT, *connection, "--document-root", root,
                       token=token).stdout  # fmt: skip
        assert "imported 0 task(s)" in again
    assert len(project_tasks(server, project_id)) == 10
    pulled = lossal(*pull, "--known-items", triage2, token=token, ok=(3,)).stdout
    assert "added 0 item(s) to the labeled set, 2 already present with the same label, rejected 2" in pulled
    assert open(labeled, "rb").read() == before


def fake_triage(root, names, folder, out, classes=CLASSES):
    """A triage output directory `out` for images `names` written to `root/folder`, without a model."""
    write_images(os.path.join(root, folder), names, seed=len(names))
    os.makedirs(out, exist_ok=True)
    tasks = [
        {"data": {"image": f"/data/local-files/?d={folder}/{item}", "item_id": item, "predicted_loss": 1.0,
                  "sha256": sha256(os.path.join(root, folder, item))}}
        for item in names
    ]  # fmt: skip
    with open(os.path.join(out, "label_studio_tasks.json"), "w") as handle:
        json.dump(tasks, handle)
    with open(os.path.join(out, "label_config.xml"), "w") as handle:
        handle.write(label_config(classes))
    return out


@pytest.mark.slow  # starts a real Label Studio (1-3 min cold), unless the module's other test did
@pytest.mark.labelstudio
def test_push_is_idempotent_and_matches_a_renamed_copy_by_content(server, tmp_path):
    server.wait_until_up()
    token = server.token  # the legacy token: this server enables them (--enable-legacy-api-token)
    root = server.document_root
    first = fake_triage(root, ["a.png", "b.png"], "idempotent/x", str(tmp_path / "triage"))
    argv = ("labelstudio", "push", first, "--project", "idempotence", "--url", server.url, "--document-root", root)
    out = lossal(*argv, token=token).stdout
    assert "created project 'idempotence'" in out and "imported 2 task(s)" in out
    out = lossal(*argv, token=token).stdout
    assert "found project 'idempotence'" in out and "found local-files storage" in out
    assert "imported 0 task(s) with their predictions; 2 already in the project" in out
    # A later queue: a renamed copy of a.png (the same bytes) and a new image, in a sibling folder.
    second_root = os.path.join(root, "idempotent", "y")
    os.makedirs(second_root)
    shutil.copy(os.path.join(root, "idempotent", "x", "a.png"), os.path.join(second_root, "a-renamed.png"))
    write_images(second_root, ["c.png"], seed=7)
    tasks = [
        {"data": {"image": f"/data/local-files/?d=idempotent/y/{item}", "item_id": item,
                  "sha256": sha256(os.path.join(second_root, item))}}
        for item in ("a-renamed.png", "c.png")
    ]  # fmt: skip
    with open(os.path.join(first, "label_studio_tasks.json"), "w") as handle:
        json.dump(tasks, handle)
    out = lossal(*argv, token=token).stdout.splitlines()
    assert out[1].startswith("created local-files storage") and out[1].endswith(os.path.join(root, "idempotent", "y"))
    assert out[2].startswith("imported 1 task(s) with their predictions; 1 already in the project")
    (project,) = [
        p for p in server.call("GET", "/api/projects?page_size=100")["results"] if p["title"] == "idempotence"
    ]
    images = sorted(task["data"]["image"] for task in project_tasks(server, project["id"]))
    assert images == ["/data/local-files/?d=idempotent/x/a.png", "/data/local-files/?d=idempotent/x/b.png",
                      "/data/local-files/?d=idempotent/y/c.png"]  # fmt: skip
    for image in images:
        assert server.send("GET", image)[0] == 200
    # A project of other classes is refused, nothing imported.
    other = fake_triage(root, ["z.png"], "idempotent/z", str(tmp_path / "other"), classes=["car", "bus"])
    refused = lossal("labelstudio", "push", other, *argv[3:], token=token, ok=(2,)).stderr
    assert refused.startswith(
        f"lossal labelstudio push: project 'idempotence' (id {project['id']}) labels ['cat', 'dog'], "
    )
    assert len(project_tasks(server, project["id"])) == 3


@pytest.mark.slow  # starts a real Label Studio (1-3 min cold), unless the module's other tests did
@pytest.mark.labelstudio
def test_a_refused_token_is_one_line_saying_which_fix_applies(server, personal_access_token, tmp_path):
    server.wait_until_up()
    triage_dir = fake_triage(server.document_root, ["t.png"], "tokens", str(tmp_path / "triage"))
    argv = ("labelstudio", "push", triage_dir, "--project", "tokens", "--url", server.url,
            "--document-root", server.document_root)  # fmt: skip
    personal = personal_access_token
    access = refresh(server, personal)
    # Legacy tokens off for the organisation: what a Label Studio 1.23 started without --enable-legacy-api-token does.
    set_legacy_tokens(server, access, enabled=False)
    try:
        assert server.send("GET", "/api/projects")[0] == 401  # the test's own Token header too
        err = lossal(*argv, token=server.token, ok=(2,)).stderr
        assert err == (
            f"lossal labelstudio push: Label Studio at {server.url} refused the legacy token (401: Authentication token "
            "no longer valid: legacy token authentication has been disabled for this organization). Label Studio 1.23 "
            "accepts legacy tokens only if the organisation enables them: Organization > API Tokens Settings > Legacy "
            "Tokens, or `label-studio start --enable-legacy-api-token` on the first start (when it creates the "
            "organisation); or use a personal access token from the account page (Account & Settings > Personal "
            "Access Token).\n"
        )
        assert "created project 'tokens'" in lossal(*argv, token=personal).stdout  # Bearer, after the refresh
    finally:
        set_legacy_tokens(server, refresh(server, personal), enabled=True)
    err = lossal(*argv, token=FOREIGN_TOKEN, ok=(2,)).stderr
    assert err == (
        f"lossal labelstudio push: Label Studio at {server.url} refused the personal access token (401: Token is "
        "invalid). It is expired, revoked, cut short or from another server: create a new one on the account page "
        "(Account & Settings > Personal Access Token) and pass it with --token or LABEL_STUDIO_API_KEY.\n"
    )
    err = lossal("labelstudio", "pull", "--project", "tokens", "-o", str(tmp_path / "m.jsonl"), "--url", server.url,
                 token="wrong-token", ok=(2,)).stderr  # fmt: skip
    assert err.startswith(
        f"lossal labelstudio pull: Label Studio at {server.url} refused the legacy token (401: Invalid"
    )
    assert err.count("\n") == 1 and not os.path.exists(tmp_path / "m.jsonl")


def refresh(server, token):
    request = urllib.request.Request(
        server.url + "/api/token/refresh/", data=json.dumps({"refresh": token}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["access"]


def set_legacy_tokens(server, access, enabled):
    body = {"api_tokens_enabled": True, "legacy_api_tokens_enabled": enabled, "api_token_ttl_days": 73000}
    request = urllib.request.Request(
        server.url + "/api/jwt/settings", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {access}"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status in (200, 201)
