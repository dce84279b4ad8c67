"""The ML backend in a real Label Studio 1.23.2: connected through Label Studio's API, asked by Label Studio, retrained.

One live round: `lossal labelstudio backend` (started by the test, behind a proxy that records what Label
Studio sends) is connected to a project with `POST /api/ml` (basic auth); Label Studio's "Retrieve
predictions" action makes Label Studio call /setup and /predict; the tasks sort by the backend's score;
annotations posted through the API reach /webhook and the manifest; four new labels start a round of
`lossal train` + `lossal export` (small_cnn, one epoch, 8x8 images) and the next predictions carry version 2.

Set LOSSAL_RECORD_ML_BACKEND=1 to write the recorded requests to tests/data/labelstudio/ml_backend/, where
`tests/test_labelstudio_backend.py` replays them.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from labelstudio_backend_helpers import CLASSES, LABEL_CONFIG, RecordingProxy, write_png  # noqa: E402
from labelstudio_server import LabelStudioServer, free_port, label_studio_executable  # noqa: E402

RECORDINGS = os.path.join(os.path.dirname(__file__), "data", "labelstudio", "ml_backend", "requests.json")
SECRET = "lossal-live-test-secret"
BRIGHT, DARK = [f"pool/b{index}.png" for index in range(6)], [f"pool/d{index}.png" for index in range(6)]
BAD = {
    "pool/missing.png": "not found",
    "pool/not_an_image.png": "corrupt image",
    "outside": "outside the document root",
}
TRAIN_ARGS = "--backbone small_cnn --width 4 --epochs 1 --batch-size 4 --image-size 8x8 --validation-fraction 0"
ROUND_TIMEOUT = 240


@pytest.fixture(scope="module")
def live_label_studio(tmp_path_factory):
    """A Label Studio that may call a backend and a webhook on 127.0.0.1 (its SSRF guards block local addresses)."""
    root = str(tmp_path_factory.mktemp("backend_root"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ML_BLOCK_LOCAL_IP", "false")
        patch.setenv("SSRF_PROTECTION_ENABLED", "false")
        server = LabelStudioServer(label_studio_executable(), root, str(tmp_path_factory.mktemp("backend_ls_data")))
    try:
        yield server  # still starting: the test prepares its model meanwhile
    finally:
        server.stop()


def _initial_model(root: str, work: str) -> tuple[str, str]:
    """Writes the pool, a labeled manifest of four items and version 1 trained on it; returns (manifest, base)."""
    from keras_lossal import cli

    for index, name in enumerate(BRIGHT + DARK):
        write_png(os.path.join(root, name), (200 + index) if name in BRIGHT else (40 + index))
    write_png(os.path.join(work, "outside", "x.png"), 128)
    with open(os.path.join(root, "pool", "not_an_image.png"), "w") as handle:
        handle.write("not an image")
    seeds = [(f"seed/b{index}.png", 210 + index, "cat") for index in range(2)]
    seeds += [(f"seed/d{index}.png", 30 + index, "dog") for index in range(2)]
    manifest = os.path.join(work, "labeled.jsonl")
    with open(manifest, "w") as handle:
        for name, level, label in seeds:
            path = write_png(os.path.join(root, name), level)
            handle.write(json.dumps({"id": name, "path": path, "label": label}) + "\n")
    train_out, base = os.path.join(work, "train_v1"), os.path.join(work, "models", "lossal")
    assert cli.main(["train", "--data", manifest, "--out", train_out, "--quiet", *TRAIN_ARGS.split()]) == 0
    assert cli.main(["export", os.path.join(train_out, "model.keras"), "--base-path", base]) == 0
    return manifest, base


def _start_backend(
    work: str, manifest: str, base: str, root: str, project: int, secret: bool = True
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [
        sys.executable, "-m", "keras_lossal.cli", "labelstudio", "backend", "--model", base,
        "--document-root", root, "--manifest", manifest, "--state-dir", os.path.join(work, "state"),
        "--project", str(project), "--retrain-every", "4", "--train-args", TRAIN_ARGS, "--port", str(port),
    ] + (["--secret-env", "LOSSAL_BACKEND_SECRET"] if secret else [])  # fmt: skip
    environment = dict(os.environ, LOSSAL_BACKEND_SECRET=SECRET)
    log = open(os.path.join(work, "backend.log"), "wb")
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, open(os.path.join(work, "backend.log")).read()[-3000:]
        try:
            _backend_get(port, "/health")
            return process, port
        except OSError:
            time.sleep(0.5)
    pytest.fail("the backend did not answer /health within 120 s")


def _backend_get(port: int, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-Lossal-Secret": SECRET})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _tasks(root: str, work: str) -> list[dict]:
    names = BRIGHT + DARK + ["pool/missing.png", "pool/not_an_image.png"]
    tasks = [{"data": {"image": f"/data/local-files/?d={name}", "item_id": name}} for name in names]
    return tasks + [{"data": {"image": os.path.join(work, "outside", "x.png"), "item_id": "outside"}}]


def _ordered(server, project: int) -> list[tuple[str, float | None]]:
    """The project's tasks as the Data Manager sorts them by prediction score, highest first."""
    query = urllib.parse.quote(json.dumps({"ordering": ["-tasks:predictions_score"]}))
    listed = server.call("GET", f"/api/tasks?project={project}&fields=all&page_size=100&query={query}")
    return [(task["data"]["item_id"], task["predictions_score"]) for task in listed["tasks"]]


def _predictions(server, project: int) -> dict[str, dict]:
    """The latest prediction per item id."""
    tasks = {
        task["id"]: task["data"]["item_id"]
        for task in server.call("GET", f"/api/tasks?project={project}&page_size=100")["tasks"]
    }
    latest = {}
    for prediction in sorted(server.call("GET", f"/api/predictions?project={project}"), key=lambda p: p["id"]):
        latest[tasks[prediction["task"]]] = prediction
    return latest


def _retrieve_predictions(server, project: int) -> None:
    """Label Studio's own "Retrieve predictions" action: Label Studio calls the backend's /setup and /predict."""
    body = {"selectedItems": {"all": True, "excluded": []}}
    server.call("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}", body)


def _expected_scores(base: str, root: str, version: int) -> dict[str, float]:
    from keras_lossal.serving import InProcessScorer

    scorer = InProcessScorer(base, version=version)
    names = BRIGHT + DARK
    payloads = [open(os.path.join(root, name), "rb").read() for name in names]
    return dict(zip(names, (float(loss) for loss in scorer.score("image", payloads)["predicted_loss"])))


@pytest.mark.slow  # Label Studio's cold start (1-2 min) + one retraining round (1-2 min) on 2 cores
@pytest.mark.labelstudio
def test_live_round_in_label_studio(live_label_studio, tmp_path, capsys):
    server, root, work = live_label_studio, live_label_studio.document_root, str(tmp_path)
    manifest, base = _initial_model(root, work)
    server.startup_seconds = server.wait_until_up()
    project = server.create_project("live active learning", LABEL_CONFIG)
    server.connect_local_storage(project, os.path.join(root, "pool"))
    task_ids = server.import_tasks(project, _tasks(root, work))
    backend, port = _start_backend(work, manifest, base, root, project)
    proxy = RecordingProxy(f"http://127.0.0.1:{port}", free_port())
    with open(os.path.join(work, "backend.log")) as log:
        transcript = ["$ lossal labelstudio backend --model models/lossal ... --retrain-every 4"]
        transcript += [line.rstrip() for line in log if line.startswith(("lossal labelstudio backend", "  "))]
    try:
        backend_id = _round_one(server, project, proxy, base, root, transcript)
        annotations = _label_and_retrain(server, project, proxy, task_ids, manifest, port, transcript)
        _round_two(server, project, proxy, base, root, transcript)
        _edit_delete_and_start_training(server, backend_id, annotations, manifest, proxy, transcript)
    finally:
        proxy.stop()
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait(60)
    _check_and_keep_recordings(proxy.recorded, transcript)
    with capsys.disabled():
        print("\n" + "\n".join(transcript))


def _round_one(server, project, proxy, base, root, transcript) -> int:
    backend = server.call(
        "POST", "/api/ml",
        {"project": project, "url": proxy.url, "title": "lossal", "auth_method": "BASIC_AUTH",
         "basic_auth_user": "label-studio", "basic_auth_pass": SECRET},
        expected=201,
    )  # fmt: skip
    assert backend["state"] == "CO", backend
    assert backend["model_version"].endswith("/1")
    (hook,) = server.call("GET", f"/api/webhooks?project={project}")  # Label Studio made it for the backend
    assert hook["url"] == proxy.url + "/webhook" and hook["send_for_all_actions"]
    server.call("PATCH", f"/api/webhooks/{hook['id']}", {"headers": {"X-Lossal-Secret": SECRET}})
    _retrieve_predictions(server, project)
    predictions = _predictions(server, project)
    expected = _expected_scores(base, root, 1)
    assert sorted(predictions) == sorted(expected)  # the three bad tasks have none, the rest one each
    for name, prediction in predictions.items():
        assert prediction["model_version"] == backend["model_version"]
        assert prediction["score"] == pytest.approx(expected[name], abs=1e-5)
        assert prediction["result"][0]["value"]["choices"][0] in CLASSES
    (answer,) = [record["response"] for record in proxy.recorded if record["path"] == "/predict"]
    errors = [entry["error"] for entry in answer["results"] if "result" not in entry]
    assert len(errors) == 3 and all(any(reason in error for reason in BAD.values()) for error in errors), errors
    # The Data Manager's score column averages the predictions of the project's model version; connecting
    # the backend set that to the backend's title ("lossal"), so choose the served version (Settings -> Annotation).
    assert server.call("GET", f"/api/projects/{project}")["model_version"] == "lossal"
    assert {score for _, score in _ordered(server, project)} == {None}
    server.call("PATCH", f"/api/projects/{project}", {"model_version": backend["model_version"]})
    ordered = _ordered(server, project)
    assert [name for name, _ in ordered[:12]] == sorted(expected, key=expected.get, reverse=True)
    transcript.append(f"POST /api/ml -> state {backend['state']}, model_version {backend['model_version']}")
    transcript += _queue(
        f"Data Manager, sorted by prediction score ({backend['model_version']}):", ordered, predictions
    )
    transcript += ["the backend's answers for the three bad tasks (no `result`: Label Studio skips them):"]
    transcript += [f"  {error}" for error in errors]
    return backend["id"]


def _queue(title: str, ordered, predictions) -> list[str]:
    lines = [title]
    for name, score in ordered:
        label = predictions[name]["result"][0]["value"]["choices"][0] if name in predictions else "-"
        lines.append(f"  {'none' if score is None else f'{score:.4f}':>8}  {label:<4}  {name}")
    return lines


def _label_and_retrain(server, project, proxy, task_ids, manifest, port, transcript) -> dict[str, int]:
    user = server.current_user()
    plan = [(BRIGHT[0], "cat"), (DARK[0], "dog"), (BRIGHT[1], "cat"), (DARK[1], "NotAClass"), (DARK[2], "dog")]
    before, annotations = sum(1 for _ in open(manifest)), {}
    for name, label in plan:
        annotations[name] = server.annotate(task_ids[name], user, [label])
        lines = [json.loads(line) for line in open(manifest)]
        # The webhook answered after the merge, and Label Studio waited for it: the label is there already.
        assert (name in {line["id"] for line in lines}) == (label != "NotAClass"), (name, label)
    assert sum(1 for _ in open(manifest)) == before + 4
    started, deadline, status = time.monotonic(), time.monotonic() + ROUND_TIMEOUT, {}
    while time.monotonic() < deadline:
        status = _backend_get(port, "/status")
        last = status.get("retraining", {}).get("last_round")
        if last and last["status"] in ("published", "failed"):
            break
        time.sleep(2)
    assert status["retraining"]["last_round"]["status"] == "published", status
    assert status["model_version"].endswith("/2")
    transcript.append(f"annotations posted through the API: {', '.join(f'{n} {label}' for n, label in plan)}")
    transcript += [f"  /webhook -> {json.dumps(answer)}" for answer in _webhook_answers(proxy)[-len(plan) :]]
    transcript.append(f"GET /status {time.monotonic() - started:.0f} s later -> {json.dumps(status)}")
    return annotations


def _webhook_answers(proxy) -> list[dict]:
    answers = [record["response"] for record in proxy.recorded if record["path"] == "/webhook"]
    return [{key: value for key, value in answer.items() if key != "status"} for answer in answers]


def _round_two(server, project, proxy, base, root, transcript) -> None:
    _retrieve_predictions(server, project)
    (backend,) = server.call("GET", f"/api/ml?project={project}")
    assert backend["model_version"].endswith("/2")  # /setup answered the new version
    predictions = _predictions(server, project)
    expected = _expected_scores(base, root, 2)
    for name, prediction in predictions.items():
        assert prediction["model_version"] == backend["model_version"], name
        assert prediction["score"] == pytest.approx(expected[name], abs=1e-5)
    server.call("PATCH", f"/api/projects/{project}", {"model_version": backend["model_version"]})
    ordered = _ordered(server, project)
    assert [name for name, _ in ordered[:12]] == sorted(expected, key=expected.get, reverse=True)
    transcript += _queue(f"after Retrieve predictions again ({backend['model_version']}):", ordered, predictions)


def _edit_delete_and_start_training(server, backend_id, annotations, manifest, proxy, transcript) -> None:
    """An annotation changed and one deleted (a label once merged stays), then Label Studio's "Start training"."""
    before = open(manifest).read()
    changed = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]
    server.call("PATCH", f"/api/annotations/{annotations[DARK[2]]}", {"result": changed})
    server.request("DELETE", f"/api/annotations/{annotations[DARK[1]]}", expected=204)
    server.call("POST", f"/api/ml/{backend_id}/train", {})
    assert open(manifest).read() == before
    answers = [record["response"] for record in proxy.recorded if record["path"] == "/webhook"][-3:]
    assert [answer["action"] for answer in answers] == ["ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"]
    assert answers[0]["rejects"][0]["reason"] == "conflicts with the labeled set: it has 'dog'"
    transcript += [f"{DARK[2]} changed to cat, {DARK[1]}'s annotation deleted, Start training:"]
    transcript += [f"  /webhook -> {json.dumps(answer)}" for answer in answers]


def _check_and_keep_recordings(recorded: list[dict], transcript: list[str]) -> None:
    paths = [record["path"] for record in recorded]
    for path in ("/health", "/setup", "/predict", "/webhook"):
        assert path in paths, path
    actions = [record["body"]["action"] for record in recorded if record["path"] == "/webhook"]
    assert actions.count("ANNOTATION_CREATED") == 5, actions
    assert all(record["status"] == 200 for record in recorded), [(r["path"], r["status"]) for r in recorded]
    for record in recorded:
        if isinstance(record["body"], dict) and "access_token" in record["body"]:
            record["body"]["access_token"] = RecordingProxy.REDACTED  # the project owner's Label Studio token
    transcript.append(
        "requests Label Studio sent: " + ", ".join(f"{path} x{paths.count(path)}" for path in sorted(set(paths)))
    )
    if os.environ.get("LOSSAL_RECORD_ML_BACKEND"):
        os.makedirs(os.path.dirname(RECORDINGS), exist_ok=True)
        with open(RECORDINGS, "w") as handle:
            json.dump(recorded, handle, indent=1)


@pytest.mark.slow  # shares the Label Studio above; trains a one-epoch model
@pytest.mark.labelstudio
def test_a_backend_without_a_secret_connects_with_no_auth_fields(live_label_studio, tmp_path):
    # docs/labeling.md's no-secret body: no auth_method (NONE) and no basic_auth_* fields.
    server, work = live_label_studio, str(tmp_path)
    root = os.path.join(work, "root")
    manifest, base = _initial_model(root, work)
    server.wait_until_up()
    project = server.create_project("no secret", LABEL_CONFIG)
    backend, port = _start_backend(work, manifest, base, root, project, secret=False)
    try:
        connected = server.call(
            "POST", "/api/ml", {"project": project, "url": f"http://127.0.0.1:{port}", "title": "lossal"}, expected=201
        )
    finally:
        os.killpg(backend.pid, signal.SIGTERM)
        backend.wait(60)
    assert connected["state"] == "CO" and connected["auth_method"] == "NONE", connected
    assert connected["model_version"] == "lossal/1"
