"""keras_lossal.labelstudio_backend: the protocol against recorded Label Studio requests, bad tasks, limits, labels, retraining.

`tests/data/labelstudio/ml_backend/requests.json` holds what a real Label Studio 1.23.2 sent to the
backend in `tests/test_labelstudio_backend_live.py` (secrets redacted); they are replayed here.
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from starlette.testclient import TestClient

sys.path.insert(0, os.path.dirname(__file__))
from labelstudio_backend_helpers import CLASSES, LABEL_CONFIG, fake_commands, write_png  # noqa: E402
from serving_fixtures import lossal_export  # noqa: E402, F401 - pytest fixture

from keras_lossal.labelstudio_backend import protocol  # noqa: E402
from keras_lossal.labelstudio_backend.app import create_app  # noqa: E402
from keras_lossal.labelstudio_backend.config import BackendConfig  # noqa: E402
from keras_lossal.labelstudio_backend.labels import ANNOTATION_LOG, REJECTS_LOG  # noqa: E402
from keras_lossal.labelstudio_backend.retraining import BASELINE_FILE, Round, RoundCommands  # noqa: E402
from keras_lossal.labelstudio_backend.service import LABEL_CONFIG_FILE, LabelStudioBackend  # noqa: E402
from keras_lossal.serving import InProcessScorer, read_items, triage  # noqa: E402
from keras_lossal.serving.labeling import LabelStudioOptions  # noqa: E402

RECORDINGS = os.path.join(os.path.dirname(__file__), "data", "labelstudio", "ml_backend", "requests.json")
SECRET = "test-secret"
HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def model_dir(lossal_export, tmp_path):  # noqa: F811
    """A writable TF Serving base path holding version 1 of the shared export."""
    base = str(tmp_path / "models" / "lossal")
    shutil.copytree(lossal_export["base"], base)
    return base


@pytest.fixture
def root(tmp_path):
    """A document root with bright and dark images, a text file named like an image, and one image outside it."""
    folder = tmp_path / "root"
    for index in range(4):
        write_png(str(folder / "pool" / f"b{index}.png"), 200 + index)
        write_png(str(folder / "pool" / f"d{index}.png"), 40 + index)
    (folder / "pool" / "not_an_image.png").write_text("not an image")
    write_png(str(tmp_path / "outside" / "x.png"), 128)
    return str(folder)


def make_backend(model_dir, root, tmp_path, **settings):
    settings.setdefault("manifest", str(tmp_path / "labeled.jsonl"))
    settings.setdefault("state_dir", str(tmp_path / "state"))
    commands = settings.pop("commands", None)
    config = BackendConfig(model_dir=model_dir, document_root=root, secret=SECRET, **settings)
    return LabelStudioBackend(config, commands=commands)


def client_for(backend) -> TestClient:
    return TestClient(create_app(backend), headers={"X-Lossal-Secret": SECRET})


def task(task_id, image, item_id=None):
    return {"id": task_id, "data": {"image": image, "item_id": item_id or image.rsplit("=", 1)[-1]}, "project": 1}


def local(name):
    return f"/data/local-files/?d=pool/{name}"


def annotation_event(annotation_id, task_, user, choices, action="ANNOTATION_CREATED", cancelled=False):
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": choices}}]
    annotation = {"id": annotation_id, "task": task_["id"], "completed_by": user, "was_cancelled": cancelled,
                  "result": result}  # fmt: skip
    return {
        "action": action,
        "annotation": annotation,
        "task": task_,
        "project": {"id": 1, "label_config": LABEL_CONFIG},
    }


def manifest_labels(path):
    if not os.path.exists(path):
        return {}
    return {record["id"]: record["label"] for record in map(json.loads, open(path))}


def wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


# --------------------------------------------------------------------------- the protocol, pure
def test_choices_target_is_the_classification_over_an_image():
    config = (
        '<View><Text name="note" value="$text"/><Choices name="mood" toName="note"><Choice value="x"/></Choices>'
        '<Image name="photo" value="$img"/><Choices name="kind" toName="photo,note">'
        '<Choice value="cat"/><Choice value="Dog" alias="dog"/></Choices></View>'
    )
    assert protocol.choices_target(config) == protocol.ChoicesTarget("kind", "photo", "img", ("cat", "dog"))
    assert protocol.choices_target(LABEL_CONFIG) == protocol.ChoicesTarget("label", "image", "image", tuple(CLASSES))


@pytest.mark.parametrize(
    "config, message",
    [
        ("", "Expected a label config"),
        ("<View><Image", "Expected a label config (XML)"),
        ('<View><Image name="i" value="$i"/><Labels name="l" toName="i"/></View>', "Expected a <Choices"),
        ('<View><Image name="i" value="i"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>', "$name"),
        ('<View><Image name="i" value="$i"/><Choices name="c" toName="i"></Choices></View>', "Expected Choice values"),
    ],
)
def test_choices_target_refuses_configs_without_an_image_classification(config, message):
    with pytest.raises(
        protocol.ProtocolError, match=message.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")
    ):
        protocol.choices_target(config)


def test_webhooks_parse_into_annotation_events():
    created = protocol.parse_webhook(annotation_event(7, task(3, local("b0.png")), 1, ["cat"]))
    assert created.project == 1 and created.label_config == LABEL_CONFIG
    (event,) = created.events
    assert (event.annotation_id, event.task["id"], event.annotation["completed_by"], event.deleted) == (7, 3, 1, False)
    bulk = {"action": "ANNOTATIONS_CREATED", "project": {"id": 2},
            "annotation": [{"id": 8, "task": 4, "result": []}, {"id": 9, "task": 5, "result": []}],
            "task": [{"id": 5, "data": {"image": "b"}}, {"id": 4, "data": {"image": "a"}}]}  # fmt: skip
    assert [(e.annotation_id, e.task["data"]["image"]) for e in protocol.parse_webhook(bulk).events] == [
        (8, "a"),
        (9, "b"),
    ]
    deleted = protocol.parse_webhook({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 7}, {"id": 8}]})
    assert [(e.annotation_id, e.deleted) for e in deleted.events] == [(7, True), (8, True)]
    training = protocol.parse_webhook({"action": "START_TRAINING", "project": {"id": 2, "label_config": "<View/>"}})
    assert training.starts_training and training.events == () and training.project == 2
    assert protocol.parse_webhook({"action": "TASKS_CREATED", "tasks": [{"id": 1}]}).events == ()
    for payload in ({"annotation": {}}, {"action": "ANNOTATION_CREATED", "annotation": {"id": "x"}, "task": {"id": 1}},
                    {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 2}, "task": {"id": 3, "data": {}}}):  # fmt: skip
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_webhook(payload)


def test_project_ids_of_label_studio():
    assert [protocol.project_id(v) for v in ("12.1733300000", 12, {"id": 12}, "x.1", None, True)] == [
        12,
        12,
        12,
        None,
        None,
        None,
    ]


# --------------------------------------------------------------------------- recorded requests, replayed
def recorded_requests():
    with open(RECORDINGS) as handle:
        return json.load(handle)


def test_recordings_are_what_label_studio_sends():
    """The shapes read from Label Studio's source, as the live server sent them."""
    recorded = recorded_requests()
    by_path = {}
    for record in recorded:
        by_path.setdefault(record["path"], []).append(record)
    assert all(record["headers"]["authorization"] == "<redacted>" for record in by_path["/setup"] + by_path["/predict"])
    setup = by_path["/setup"][0]["body"]
    assert sorted(setup) == ["access_token", "extra_params", "hostname", "project", "schema"]
    assert protocol.project_id(setup["project"]) is not None and setup["access_token"] == "<redacted>"
    (predict,) = [record for record in by_path["/predict"] if len(record["body"]["tasks"]) > 1][:1]
    assert sorted(predict["body"]) == ["label_config", "params", "project", "tasks"]
    assert {"id", "data", "project"} <= set(predict["body"]["tasks"][0])
    assert len(predict["response"]["results"]) == len(predict["body"]["tasks"])
    hooks = [record["body"] for record in by_path["/webhook"]]
    assert "ANNOTATION_CREATED" in [hook["action"] for hook in hooks]
    created = next(hook for hook in hooks if hook["action"] == "ANNOTATION_CREATED")
    assert {"id", "result", "completed_by", "was_cancelled"} <= set(created["annotation"])
    assert {"id", "data"} <= set(created["task"]) and "label_config" in created["project"]
    assert "x-lossal-secret" in [key for record in by_path["/webhook"] for key in record["headers"]]


def test_recorded_requests_replay(model_dir, tmp_path):
    """Every request Label Studio sent, sent again: the same status and the same shapes come back."""
    root = tmp_path / "root"
    recorded = recorded_requests()
    for record in recorded:
        for item in (record["body"] or {}).get("tasks", []) if isinstance(record["body"], dict) else []:
            url = item["data"]["image"]
            if url.startswith("/data/local-files/?d=pool/") and "missing" not in url and "not_an" not in url:
                write_png(str(root / url.split("?d=", 1)[1]), 100)
    (root / "pool").mkdir(parents=True, exist_ok=True)
    (root / "pool" / "not_an_image.png").write_text("not an image")
    backend = make_backend(model_dir, str(root), tmp_path)
    client = client_for(backend)
    try:
        for record in recorded:
            send = client.get if record["method"] == "GET" else client.post
            answer = send(record["path"], json=record["body"]) if record["method"] == "POST" else send(record["path"])
            assert answer.status_code == record["status"] == 200, (record["path"], answer.text[:300])
            _assert_same_shape(record, answer.json())
    finally:
        backend.close()


def _assert_same_shape(record, answer):
    recorded = record["response"]
    if record["path"] == "/setup":
        assert set(answer) == {"model_version"} and answer["model_version"].endswith("/1")
    elif record["path"] == "/predict":
        assert len(answer["results"]) == len(recorded["results"]) == len(record["body"]["tasks"])
        for mine, theirs in zip(answer["results"], recorded["results"]):
            assert ("result" in mine) == ("result" in theirs), (mine, theirs)
            if "result" in mine:
                assert set(mine) == set(theirs) == {"result", "score", "model_version"}
                (result,) = mine["result"]
                assert {key: result[key] for key in ("from_name", "to_name", "type")} == {
                    key: theirs["result"][0][key] for key in ("from_name", "to_name", "type")
                }
                assert result["value"]["choices"][0] in CLASSES and isinstance(mine["score"], float)
            else:
                assert mine["error"].split(":")[0] == theirs["error"].split(":")[0]
    elif record["path"] == "/webhook":
        assert answer["status"] == recorded["status"] and answer.get("action") == recorded.get("action")
        assert answer.get("added") == recorded.get("added")
        assert [r["reason"] for r in answer.get("rejects", [])] == [r["reason"] for r in recorded.get("rejects", [])]
    else:
        assert set(answer) == set(recorded)


# --------------------------------------------------------------------------- predictions
def test_bad_tasks_get_their_own_error_and_the_rest_are_predicted(model_dir, root, tmp_path):
    good = [task(1, local("b0.png")), task(2, local("d1.png")), task(9, "pool/b2.png")]
    bad = {
        3: (task(3, local("missing.png")), "not found: No such file"),
        4: (task(4, local("not_an_image.png")), "corrupt image: Unsupported image format"),
        5: (task(5, str(tmp_path / "outside" / "x.png")), "image refused: outside the document root"),
        6: (task(6, "/data/local-files/?d=../outside/x.png"), "image refused: a local-files URL without a path inside"),
        7: (task(7, "https://example.com/a.png"), "image refused: URL scheme 'https' not allowed"),
        8: ({"id": 8, "data": {"text": "no image"}}, "task has no image URL in data.image"),
        10: ({"id": 10}, "malformed task"),
    }
    tasks = good[:2] + [pair[0] for pair in bad.values()] + good[2:]
    backend = make_backend(model_dir, root, tmp_path, batch_size=3)
    try:
        answer = client_for(backend).post(
            "/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG, "project": "1.2"}
        )
    finally:
        backend.close()
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert len(results) == len(tasks)
    by_task = {(t.get("id")): result for t, result in zip(tasks, results)}
    for task_id, (_, reason) in bad.items():
        assert "result" not in by_task[task_id] and by_task[task_id]["error"].startswith(reason), by_task[task_id]
        assert by_task[task_id]["task"] == task_id
    scorer = InProcessScorer(model_dir)
    paths = [os.path.join(root, "pool", name) for name in ("b0.png", "d1.png", "b2.png")]
    expected = scorer.score("image", [open(path, "rb").read() for path in paths])
    for row, task_id in enumerate((1, 2, 9)):
        prediction = by_task[task_id]
        assert prediction["score"] == pytest.approx(float(expected["predicted_loss"][row]), abs=1e-6)
        assert prediction["result"][0]["value"]["choices"] == [scorer.labels[int(expected["class_id"][row])]]
        assert prediction["model_version"] == f"{os.path.basename(model_dir)}/1"
    # The same model version name as the predictions triage writes into its tasks for `lossal labelstudio push`.
    out = str(tmp_path / "triage")
    triage(read_items(os.path.join(root, "pool")), scorer, out, top_k=3, label_studio=LabelStudioOptions(root))
    with open(os.path.join(out, "label_studio_tasks.json")) as stream:
        (pushed,) = {prediction["model_version"] for task in json.load(stream) for prediction in task["predictions"]}
    assert pushed == by_task[1]["model_version"]


def test_https_images_only_when_allowed(model_dir, root, tmp_path, monkeypatch):
    from keras_lossal.labelstudio_backend import predictor

    served = {"https://images.example/b0.png": open(os.path.join(root, "pool", "b0.png"), "rb").read()}
    monkeypatch.setattr(predictor, "read_url", lambda url, limits: served[url])
    backend = make_backend(model_dir, root, tmp_path, url_schemes=("https",))
    try:
        results = backend.predict(
            {"tasks": [task(1, "https://images.example/b0.png")], "label_config": LABEL_CONFIG}, 1e12
        )
    finally:
        backend.close()
    assert "result" in results["results"][0]


def test_read_url_refuses_redirects_and_large_files(tmp_path):
    import http.server

    from keras_lossal.labelstudio_backend.predictor import ImageLimits, read_url

    class Handler(http.server.BaseHTTPRequestHandler):  # a test double of a web server, on 127.0.0.1
        def do_GET(self):
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 100)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert read_url(url + "/a", ImageLimits(max_bytes=100)) == b"x" * 100
        with pytest.raises(OSError, match="HTTP 302"):
            read_url(url + "/moved", ImageLimits())
        with pytest.raises(OSError, match="file too large: 100 bytes > max_image_bytes=99"):
            read_url(url + "/a", ImageLimits(max_bytes=99))
    finally:
        server.shutdown()


def test_setup_answers_the_served_version_and_refuses_a_model_outside_the_choices(model_dir, root, tmp_path):
    backend = make_backend(model_dir, root, tmp_path)
    client = client_for(backend)
    try:
        answer = client.post("/setup", json={"project": "1.5", "schema": LABEL_CONFIG})
        assert answer.json() == {"model_version": f"{os.path.basename(model_dir)}/1"}
        narrow = LABEL_CONFIG.replace('<Choice value="bird"/>', "")
        refused = client.post("/setup", json={"project": "1.5", "schema": narrow})
        assert refused.status_code == 422 and "['bird'] are not choices" in refused.json()["error"]
        assert client.get("/versions").json() == {"versions": [f"{os.path.basename(model_dir)}/1"]}
        assert client.get("/").json()["status"] == "UP"
    finally:
        backend.close()


def test_out_of_time_tasks_get_an_error_to_ask_again(model_dir, root, tmp_path):
    backend = make_backend(model_dir, root, tmp_path)
    try:
        body = {"tasks": [task(1, local("b0.png"))], "label_config": LABEL_CONFIG}
        (result,) = backend.predict(body, deadline=time.monotonic() - 1)["results"]
    finally:
        backend.close()
    assert result == {"task": 1, "error": "not predicted: out of time (ask again)"}


# --------------------------------------------------------------------------- limits and the secret
def test_limits_and_the_shared_secret(model_dir, root, tmp_path):
    backend = make_backend(model_dir, root, tmp_path, max_tasks=2, max_request_bytes=2000, project=1)
    client = client_for(backend)
    bare = TestClient(create_app(backend))
    body = {"tasks": [task(i, local("b0.png")) for i in range(3)], "label_config": LABEL_CONFIG, "project": "1.1"}
    try:
        assert client.post("/predict", json=body).status_code == 413  # 3 tasks > max_tasks
        big = client.post("/predict", content=b"[" + b"0," * 2000 + b"0]", headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and "max_request_bytes=2000" in big.json()["error"]
        assert client.post("/predict", content=b"{not json").status_code == 400
        assert client.post("/predict", json={"tasks": "x", "project": "1.1"}).status_code == 400
        refused = bare.get("/health")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert bare.get("/health", headers={"X-Lossal-Secret": "wrong"}).status_code == 401
        for user in ("label-studio", ""):
            token = base64.b64encode(f"{user}:{SECRET}".encode()).decode()
            assert bare.get("/health", headers={"Authorization": f"Basic {token}"}).status_code == 200
        wrong = base64.b64encode(b"label-studio:nope").decode()
        assert bare.get("/health", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        other = client.post("/predict", json={**body, "tasks": body["tasks"][:1], "project": "2.1"})
        assert other.status_code == 403 and "serves project 1" in other.json()["error"]
        hook = client.post(
            "/webhook", json={**annotation_event(1, task(1, local("b0.png")), 1, ["cat"]), "project": {"id": 2}}
        )
        assert hook.json()["status"] == "ignored" and not os.path.exists(str(tmp_path / "labeled.jsonl"))
    finally:
        backend.close()


def test_predictions_beyond_the_concurrency_limit_wait_then_get_503(model_dir, root, tmp_path):
    backend = make_backend(model_dir, root, tmp_path, max_concurrent_predictions=1, queue_timeout=0.5)
    release, started = threading.Event(), threading.Event()
    original = backend.predictor.predict

    def slow_predict(*args):
        started.set()
        release.wait(30)
        return original(*args)

    backend.predictor.predict = slow_predict
    body = {"tasks": [task(1, local("b0.png"))], "label_config": LABEL_CONFIG}
    statuses = []
    with client_for(backend) as client:
        first = threading.Thread(target=lambda: statuses.append(client.post("/predict", json=body).status_code))
        first.start()
        assert started.wait(30)
        second = client.post("/predict", json=body)
        assert client.get("/health").status_code == 200  # never blocked by scoring
        release.set()
        first.join(30)
    backend.close()
    assert second.status_code == 503 and "busy" in second.json()["error"]
    assert statuses == [200]


# --------------------------------------------------------------------------- labels through webhooks
def test_webhooks_merge_labels_by_ingest_rules(model_dir, root, tmp_path):
    manifest = str(tmp_path / "labeled.jsonl")
    backend = make_backend(model_dir, root, tmp_path)
    client = client_for(backend)
    a, b, c, d, e = (
        task(n, local(name)) for n, name in enumerate(["b0.png", "b1.png", "d0.png", "d1.png", "b2.png"], 1)
    )
    try:
        assert client.post("/webhook", json=annotation_event(1, a, 1, ["cat"])).json()["added"] == 1
        assert manifest_labels(manifest) == {"pool/b0.png": "cat"}  # merged before the webhook answered
        second = client.post("/webhook", json=annotation_event(2, a, 2, ["cat"])).json()
        assert (second["added"], second["present"]) == (0, 1)
        bulk = {"action": "ANNOTATIONS_CREATED", "project": {"id": 1, "label_config": LABEL_CONFIG},
                "annotation": [annotation_event(3, b, 1, ["cat"])["annotation"],
                               annotation_event(4, b, 2, ["dog"])["annotation"]], "task": [b]}  # fmt: skip
        tie = client.post("/webhook", json=bulk).json()
        assert tie["added"] == 0 and tie["rejects"][0]["reason"] == "tie between annotators: cat (1), dog (1)"
        invalid = [client.post("/webhook", json=annotation_event(5, c, 1, ["NotAClass"])).json(),
                   client.post("/webhook", json=annotation_event(6, d, 1, ["cat", "dog"])).json(),
                   client.post("/webhook", json=annotation_event(7, e, 1, ["cat"], cancelled=True)).json()]  # fmt: skip
        assert [r["reason"] for answer in invalid for r in answer["rejects"]] == [
            "label not in the class list: NotAClass", "several choices: cat, dog"]  # fmt: skip
        updated = client.post("/webhook", json=annotation_event(1, a, 1, ["dog"], "ANNOTATION_UPDATED")).json()
        assert [r["reason"] for r in updated["rejects"]] == ["tie between annotators: cat (1), dog (1)"]
        deleted = client.post("/webhook", json={"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 2}]}).json()
        assert [r["reason"] for r in deleted["rejects"]] == ["conflicts with the labeled set: it has 'cat'"]
        conflict = client.post("/webhook", json=annotation_event(8, a, 3, ["dog"])).json()
        assert conflict["rejects"][0]["reason"] == "conflicts with the labeled set: it has 'cat'"
        assert (
            client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}).json()["status"]
            == "ignored"
        )
    finally:
        backend.close()
    assert manifest_labels(manifest) == {"pool/b0.png": "cat"}
    record = json.loads(open(manifest).readline())
    assert record["path"] == os.path.relpath(os.path.join(root, "pool", "b0.png"), str(tmp_path))
    assert record["source"] == "label_studio_ml_backend.json" and record["annotators"] == ["1"]
    rejects = [json.loads(line)["reason"] for line in open(tmp_path / "state" / REJECTS_LOG)]
    assert len(rejects) == 6 and rejects[-1].startswith("conflicts")


def test_the_older_train_call_merges_an_export_as_lossal_ingest_does(model_dir, root, tmp_path):
    """`POST /train` carries every annotated task as a JSON export: the same labels and rejects as `lossal ingest`."""
    from keras_lossal.labeling import labelstudio

    export = os.path.join(HERE, "data", "labelstudio", "export.json")
    config = LABEL_CONFIG.replace('<Choice value="bird"/>', "")
    write_png(os.path.join(root, "pool", "a.png"), 90)  # the export's image: ingest records only files that exist
    backend = make_backend(model_dir, root, tmp_path)
    try:
        answer = client_for(backend).post(
            "/train", json={"annotations": json.load(open(export)), "project": "1.1", "label_config": config}
        )
    finally:
        backend.close()
    reference = labelstudio.ingest(export, str(tmp_path / "reference.jsonl"), ["cat", "dog"],
                                   image_sources=labelstudio.ImageSources(document_root=root))  # fmt: skip
    assert answer.status_code == 200 and answer.json()["added"] == reference.added == 3
    assert sorted(r["reason"] for r in answer.json()["rejects"]) == sorted(r["reason"] for r in reference.rejects)
    kept = ("id", "path", "label", "annotators")
    mine, theirs = ([{key: record[key] for key in kept} for record in map(json.loads, open(path))]
                    for path in (tmp_path / "labeled.jsonl", tmp_path / "reference.jsonl"))  # fmt: skip
    assert mine == theirs
    assert answer.json()["training"] == "off (--retrain-every N)"


def test_a_project_with_other_tag_names_is_translated(model_dir, root, tmp_path):
    config = ('<View><Image name="photo" value="$img"/><Choices name="kind" toName="photo">'
              + "".join(f'<Choice value="{name}"/>' for name in CLASSES) + "</Choices></View>")  # fmt: skip
    backend = make_backend(model_dir, root, tmp_path)
    client = client_for(backend)
    the_task = {"id": 1, "data": {"img": local("b3.png"), "item_id": "b3"}}
    event = annotation_event(1, the_task, 1, ["dog"])
    event["annotation"]["result"][0].update(from_name="kind", to_name="photo")
    event["project"]["label_config"] = config
    try:
        assert client.post("/webhook", json=event).json()["added"] == 1
        (prediction,) = client.post("/predict", json={"tasks": [the_task], "label_config": config}).json()["results"]
    finally:
        backend.close()
    assert manifest_labels(tmp_path / "labeled.jsonl") == {"b3": "dog"}
    assert (prediction["result"][0]["from_name"], prediction["result"][0]["to_name"]) == ("kind", "photo")


def test_labels_logged_before_a_kill_are_merged_at_the_next_start(model_dir, root, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / LABEL_CONFIG_FILE).write_text(LABEL_CONFIG)
    event = annotation_event(11, task(4, local("d3.png")), 2, ["dog"])
    line = json.dumps({"task": event["task"], "annotation": event["annotation"]})
    (state / ANNOTATION_LOG).write_text(line + "\n" + line[:25])  # the kill tore the last line
    backend = make_backend(model_dir, root, tmp_path)
    try:
        assert manifest_labels(tmp_path / "labeled.jsonl") == {"pool/d3.png": "dog"}
        assert backend.status()["tasks_heard"] == 1
        with pytest.raises(ValueError, match="Another ML backend uses the state directory"):
            make_backend(model_dir, root, tmp_path)
    finally:
        backend.close()
    assert (state / ANNOTATION_LOG).read_text() == line + "\n"


def test_a_backend_that_fails_to_start_leaves_its_state_directory_free(model_dir, root, tmp_path):
    with pytest.raises(FileNotFoundError, match="No such model directory"):
        make_backend(str(tmp_path / "no_model"), root, tmp_path)
    make_backend(model_dir, root, tmp_path).close()


# --------------------------------------------------------------------------- retraining
def test_round_commands_are_lossal_train_then_lossal_export(tmp_path):
    round_ = Round(str(tmp_path / "round-0001"), 1, 7, 10)
    commands = RoundCommands(["--epochs", "2"], model_name="pets", python="python3")
    assert commands.train(round_) == ["python3", "-m", "keras_lossal.cli", "train", "--data",
                                      round_.path("labeled.jsonl"), "--out", round_.path("train"), "--quiet",
                                      "--epochs", "2"]  # fmt: skip
    assert commands.export(round_, "models/pets")[3:] == ["export", round_.path("train/model.keras"), "--base-path",
                                                          "models/pets", "--version", "7", "--model-name", "pets"]  # fmt: skip


@pytest.mark.parametrize("recorded, expected", [(1, (1, "export")), (None, (3, "manifest")), (9, (3, "export"))])
def test_labels_the_served_export_was_not_trained_on_count_as_new(model_dir, root, tmp_path, recorded, expected):
    from keras_lossal.export.config import read_export_config, write_export_config

    version_dir = os.path.join(model_dir, "1")
    config = read_export_config(version_dir)
    if recorded is not None:  # what `lossal export` records from `lossal train`'s training.json
        config["training"] = {"num_items": recorded}
    write_export_config(version_dir, config)
    with open(tmp_path / "labeled.jsonl", "w") as stream:
        for name, label in (("b0.png", "cat"), ("b1.png", "cat"), ("d0.png", "dog")):
            path = os.path.join(root, "pool", name)
            stream.write(json.dumps({"id": f"pool/{name}", "path": path, "label": label}) + "\n")
    backend = make_backend(model_dir, root, tmp_path, retrain_every=5, commands=fake_commands(version_dir))
    try:
        status = client_for(backend).get("/status").json()["retraining"]
        # A version trained and exported by hand later, on the whole manifest: its labels count as trained.
        shutil.copytree(version_dir, os.path.join(model_dir, "2"))
        write_export_config(os.path.join(model_dir, "2"), {**config, "training": {"num_items": 3}})
        later = client_for(backend).get("/status").json()["retraining"]
    finally:
        backend.close()
    assert (status["labels"], status["labels_trained"]) == (3, expected[0])
    assert later["labels_trained"] == 3
    recorded_baseline = json.loads((tmp_path / "state" / BASELINE_FILE).read_text())
    assert (recorded_baseline["baseline_labels"], recorded_baseline["from"]) == expected


def test_new_labels_start_a_round_and_predictions_switch_once_published(model_dir, root, tmp_path):
    version_one = os.path.join(model_dir, "1")
    backend = make_backend(model_dir, root, tmp_path, retrain_every=2, commands=fake_commands(version_one))
    client = client_for(backend)
    body = {"tasks": [task(1, local("d2.png"))], "label_config": LABEL_CONFIG}
    try:
        client.post("/webhook", json=annotation_event(1, task(1, local("b0.png")), 1, ["cat"]))
        assert backend.retrainer.rounds() == []  # one label: not yet
        client.post("/webhook", json=annotation_event(2, task(2, local("d0.png")), 1, ["dog"]))
        assert wait_until(lambda: [r.status for r in backend.retrainer.rounds()] == ["published"])
        assert client.post("/setup", json={"schema": LABEL_CONFIG}).json()["model_version"].endswith("/2")
        (result,) = client.post("/predict", json=body).json()["results"]
        assert result["model_version"] == f"{os.path.basename(model_dir)}/2"
        (round_,) = backend.retrainer.rounds()
        assert (round_.number, round_.version, round_.labels) == (1, 2, 2)
        snapshot = [json.loads(line) for line in open(round_.path("labeled.jsonl"))]
        assert all(os.path.isabs(record["path"]) and os.path.isfile(record["path"]) for record in snapshot)
        status = client.get("/status").json()["retraining"]
        assert (status["labels"], status["labels_trained"], status["last_round"]["status"]) == (2, 2, "published")
        assert client.get("/versions").json()["versions"][-1].endswith("/2")
    finally:
        backend.close()


def test_start_training_starts_a_round_on_any_new_label(model_dir, root, tmp_path):
    backend = make_backend(model_dir, root, tmp_path, retrain_every=50,
                           commands=fake_commands(os.path.join(model_dir, "1")))  # fmt: skip
    client = client_for(backend)
    start = {"action": "START_TRAINING", "project": {"id": 1, "label_config": LABEL_CONFIG}}
    try:
        assert client.post("/webhook", json=start).json()["training"].startswith("nothing new to train on")
        client.post("/webhook", json=annotation_event(1, task(1, local("b0.png")), 1, ["cat"]))
        assert client.post("/webhook", json=start).json()["training"] == "starting a round on 1 labels (1 new)"
        assert wait_until(lambda: [r.status for r in backend.retrainer.rounds()] == ["published"])
        assert backend.served.version() == 2
    finally:
        backend.close()
    off = make_backend(model_dir, root, tmp_path / "off")
    try:
        assert (
            TestClient(create_app(off))
            .post("/webhook", json=start, headers={"X-Lossal-Secret": SECRET})
            .json()["training"]
            == "off (--retrain-every N)"
        )
    finally:
        off.close()


def test_a_failed_round_keeps_the_served_version_and_waits_for_more_labels(model_dir, root, tmp_path):
    class FailingTrain(RoundCommands):
        def train(self, round_):
            return [sys.executable, "-c", "import sys; print('no luck'); sys.exit(3)"]

    backend = make_backend(model_dir, root, tmp_path, retrain_every=1, commands=FailingTrain())
    client = client_for(backend)
    try:
        client.post("/webhook", json=annotation_event(1, task(1, local("b0.png")), 1, ["cat"]))
        assert wait_until(lambda: [r.status for r in backend.retrainer.rounds()] == ["failed"])
        (failed,) = backend.retrainer.rounds()
        assert failed.error.startswith("train exited with code 3") and "no luck" in failed.error
        backend.retrainer.notify(force=True)
        time.sleep(1)
        assert len(backend.retrainer.rounds()) == 1  # no new label: not tried again
        assert backend.served.version() == 1
        client.post("/webhook", json=annotation_event(2, task(2, local("d0.png")), 1, ["dog"]))
        assert wait_until(lambda: len(backend.retrainer.rounds()) == 2)
    finally:
        backend.close()


def test_through_tf_serving_a_published_version_is_served_once_the_server_loads_it(model_dir, root, tmp_path):
    from tfserving_standin import start_grpc_standin

    server, target, service = start_grpc_standin(model_dir, "lossal")
    config = BackendConfig(server=f"grpc://{target}", base_path=model_dir, labels=tuple(CLASSES), document_root=root,
                           manifest=str(tmp_path / "labeled.jsonl"), state_dir=str(tmp_path / "state"), retrain_every=1)  # fmt: skip
    backend = LabelStudioBackend(config, commands=fake_commands(os.path.join(model_dir, "1")))
    client = TestClient(create_app(backend))
    body = {"tasks": [task(1, local("d2.png")), task(2, local("missing.png"))], "label_config": LABEL_CONFIG}
    try:
        assert client.post("/setup", json={"schema": LABEL_CONFIG}).json() == {"model_version": "lossal/1"}
        first, missing = client.post("/predict", json=body).json()["results"]
        expected = InProcessScorer(model_dir).score("image", [open(os.path.join(root, "pool", "d2.png"), "rb").read()])
        assert first["score"] == pytest.approx(float(expected["predicted_loss"][0]), abs=1e-5)
        assert first["model_version"] == "lossal/1" and missing["error"].startswith("not found")
        client.post("/webhook", json=annotation_event(1, task(1, local("b0.png")), 1, ["cat"]))
        assert wait_until(lambda: [r.status for r in backend.retrainer.rounds()] == ["published"])
        assert client.post("/predict", json=body).json()["results"][0]["model_version"].endswith("/1")
        service.repository.poll(latest_only=True)  # TF Serving loads the version that appeared under its base path
        assert client.post("/setup", json={"schema": LABEL_CONFIG}).json() == {"model_version": "lossal/2"}
        assert client.post("/predict", json=body).json()["results"][0]["model_version"] == "lossal/2"
    finally:
        backend.close()
        server.stop(None)


def _start_driver(model_dir, tmp_path, go_file):
    """A backend's retraining worker in a process of its own, with an export step that pauses at `go_file`."""
    manifest = tmp_path / "labeled.jsonl"
    image = os.path.join(str(tmp_path / "root"), "pool", "b0.png")
    manifest.write_text(json.dumps({"id": "b0", "path": image, "label": "cat"}) + "\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / BASELINE_FILE).write_text('{"baseline_labels": 0}')
    (state / LABEL_CONFIG_FILE).write_text(LABEL_CONFIG)
    source = str(tmp_path / "version_source")
    shutil.copytree(os.path.join(model_dir, "1"), source)
    command = [sys.executable, os.path.join(HERE, "labelstudio_backend_driver.py"), str(state), str(manifest),
               model_dir, source, str(go_file)]  # fmt: skip
    environment = dict(
        os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])
    )
    driver = subprocess.Popen(command, env=environment, start_new_session=True)
    round_file = state / "rounds" / "round-0001" / "round.json"
    staged = lambda: [n for n in os.listdir(model_dir) if n.startswith(".tmp-export-")]  # noqa: E731
    assert wait_until(lambda: round_file.exists() and json.loads(round_file.read_text())["status"] == "exporting"
                      and staged() and os.path.isdir(os.path.join(model_dir, staged()[0], "variables")), 120)  # fmt: skip
    return driver, source


@pytest.mark.parametrize("kill", ["whole process group", "backend only (its export step runs on)"])
def test_a_backend_killed_mid_export_resumes_and_never_serves_a_half_written_version(model_dir, root, tmp_path, kill):
    go = tmp_path / "go"
    driver, source = _start_driver(model_dir, tmp_path, go)
    if kill == "whole process group":
        os.killpg(driver.pid, signal.SIGKILL)
    else:
        os.kill(driver.pid, signal.SIGKILL)
    driver.wait(30)
    (staging,) = [name for name in os.listdir(model_dir) if name.startswith(".tmp-export-")]
    assert not os.path.exists(os.path.join(model_dir, staging, "saved_model.pb"))  # half written, and hidden
    backend = make_backend(
        model_dir, root, tmp_path, retrain_every=1, commands=fake_commands(source, wait_export=str(go))
    )
    client = client_for(backend)
    body = {"tasks": [task(1, local("d2.png"))], "label_config": LABEL_CONFIG}
    try:
        time.sleep(2)  # the resumed round runs (or waits for the orphaned step): version 1 is still what is served
        assert sorted(n for n in os.listdir(model_dir) if not n.startswith(".")) == ["1"]
        assert backend.retrainer.rounds()[0].status == "exporting"
        assert client.post("/predict", json=body).json()["results"][0]["model_version"].endswith("/1")
        go.write_text("")
        assert wait_until(lambda: backend.retrainer.rounds()[0].status == "published", 120)
        assert client.post("/setup", json={"schema": LABEL_CONFIG}).json()["model_version"].endswith("/2")
        assert client.post("/predict", json=body).json()["results"][0]["model_version"].endswith("/2")
    finally:
        backend.close()
        if kill != "whole process group":
            try:
                os.killpg(driver.pid, signal.SIGKILL)  # the orphaned step, if still there (it has exited by now)
            except ProcessLookupError:
                pass
    exports = open(tmp_path / "state" / "rounds" / "round-0001" / "export.log").read().count("$ ")
    # The group's export died with it and ran again; an orphaned export was waited for, never run twice.
    assert exports == (2 if kill == "whole process group" else 1)
    assert sorted(n for n in os.listdir(model_dir) if not n.startswith(".")) == ["1", "2"]


# --------------------------------------------------------------------------- the command line
def test_lossal_help_stays_light_and_lists_labelstudio():
    code = (
        "import sys, contextlib, io\nfrom keras_lossal import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try: cli.main(['--help'])\n    except SystemExit: pass\n"
        "print('labelstudio' in out.getvalue(), 'tensorflow' in sys.modules, 'starlette' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, PYTHONPATH=os.path.dirname(HERE)))  # fmt: skip
    assert completed.stdout.split() == ["True", "False", "False"], completed.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "Subcommands: push"),
        (["backend", "--model", "m", "--retrain-every", "5"], "Expected a manifest to retrain on"),
        (["backend", "--model", "m", "--manifest", "l.jsonl"], "Expected state_dir"),
        (["backend", "--model", "m", "--train-args", "--epochz 3"], "--train-args: not valid lossal train arguments"),
        (["backend", "--model", "m", "--train-args", "--data x"], "not valid|without ['--data']"),
        (["backend", "--model", "m", "--secret-env", "LOSSAL_NO_SUCH_VARIABLE"], "is not set or empty"),
        (["backend", "--model", "m", "--labels", "a,b"], "--labels is for --server"),
    ],
)
def test_backend_command_errors_name_the_flag(arguments, message, capsys):
    from keras_lossal import cli

    code = cli.main(["labelstudio", *arguments])
    captured = capsys.readouterr()
    assert code == 2
    assert any(part in captured.out + captured.err for part in message.split("|")), captured
