"""A real Label Studio on localhost for the ingest tests: started once per test module, stopped at its end.

The executable comes from `LOSSAL_LABEL_STUDIO` (default: the repository's
`.venv-labelstudio/bin/label-studio`, which `make labelstudio` creates, else `label-studio` on PATH); without one the tests fail and
say how to install it. The server gets a free port, its own data directory,
local-files serving of a temporary document root, and a legacy API token
(`Authorization: Token ...`), the setup `docs/labeling.md` describes.

Use it from a test module:

    from labelstudio_server import label_studio  # noqa: F401  (the fixture)

    @pytest.mark.labelstudio
    def test_x(label_studio):
        project = label_studio.create_project("triage", label_config(["cat", "dog"]))
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

EXECUTABLE_VARIABLE = "LOSSAL_LABEL_STUDIO"
DEFAULT_EXECUTABLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-labelstudio", "bin", "label-studio"
)
INSTALL_HINT = (
    "Label Studio is needed for the `labelstudio` tests: run `make labelstudio` (a venv of its own, "
    ".venv-labelstudio, with `pip install label-studio`), or set LOSSAL_LABEL_STUDIO to a label-studio executable"
)
# A cold start (Django migrations on an empty data directory) took 55-140 s on a busy 2-core machine.
START_TIMEOUT_SECONDS = 480
USERNAME = "lossal@example.com"
PASSWORD = "lossal-test-password"
TOKEN = "lossaltesttoken0123456789abcdef01234567"


def label_studio_executable() -> str:
    """The label-studio executable to start, or a test failure saying how to install one."""
    configured = os.environ.get(EXECUTABLE_VARIABLE)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            pytest.fail(f"{EXECUTABLE_VARIABLE}={configured!r} is not an executable file. {INSTALL_HINT}")
        return configured
    if os.path.isfile(DEFAULT_EXECUTABLE):
        return DEFAULT_EXECUTABLE
    found = shutil.which("label-studio")
    if not found:
        pytest.fail(f"label-studio not found. {INSTALL_HINT}")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LabelStudioServer:
    """A Label Studio subprocess and the few REST calls the tests make.

    Args:
        executable: the label-studio executable.
        document_root: `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`.
        data_dir: the server's data directory (its SQLite database, logs).
    """

    def __init__(self, executable: str, document_root: str, data_dir: str):
        self.document_root = document_root
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = TOKEN
        self.log_path = os.path.join(data_dir, "server.log")
        environment = dict(
            os.environ,
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=document_root,
        )
        command = [
            executable, "start", "--port", str(self.port), "--internal-host", "127.0.0.1", "--no-browser",
            "--data-dir", data_dir, "--username", USERNAME, "--password", PASSWORD,
            "--user-token", TOKEN, "--enable-legacy-api-token",
        ]  # fmt: skip
        self.log = open(self.log_path, "wb")
        # A session of its own: stop() signals the server's process group, whatever it spawned.
        self.process = subprocess.Popen(
            command, env=environment, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_until_up(self, timeout: float = START_TIMEOUT_SECONDS) -> float:
        """Polls `/health` until it answers; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                pytest.fail(f"label-studio exited with {self.process.returncode}. Log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200 and json.loads(response.read()).get("status") == "UP":
                        return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            time.sleep(1)
        self.stop()
        pytest.fail(f"label-studio did not answer /health within {timeout:.0f} s. Log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])

    def stop(self) -> None:
        """Terminates the server (its process group), waits, kills it if it does not exit."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
            except ProcessLookupError:
                pass
        self.log.close()

    # ----------------------------------------------------------------------- REST
    def send(self, method: str, path: str, body=None) -> tuple[int, bytes]:
        """One call with the token (local files need it too): `(HTTP status, body)`."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Authorization": f"Token {self.token}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def request(self, method: str, path: str, body=None, expected: int = 200) -> bytes:
        """One API call; fails the test (with the server's answer) on another status than `expected`."""
        status, content = self.send(method, path, body)
        if status != expected:
            pytest.fail(f"{method} {path}: expected HTTP {expected}, received {status}: {content[:500]!r}")
        return content

    def call(self, method: str, path: str, body=None, expected: int = 200):
        return json.loads(self.request(method, path, body, expected) or b"null")

    def create_user(self, email: str) -> int:
        user = self.call("POST", "/api/users/", {"email": email, "username": email.split("@")[0]}, expected=201)
        return user["id"]

    def current_user(self) -> int:
        (user,) = [user for user in self.call("GET", "/api/users/") if user["email"] == USERNAME]
        return user["id"]

    def create_project(self, title: str, label_config: str) -> int:
        project = self.call("POST", "/api/projects", {"title": title, "label_config": label_config}, expected=201)
        return project["id"]

    def connect_local_storage(self, project: int, folder: str) -> int:
        body = {"project": project, "path": folder, "use_blob_urls": False, "title": os.path.basename(folder)}
        return self.call("POST", "/api/storages/localfiles", body, expected=201)["id"]

    def import_tasks(self, project: int, tasks: list[dict]) -> dict[str, int]:
        """Imports tasks; returns Label Studio's task id per `data.item_id`."""
        self.call("POST", f"/api/projects/{project}/import", tasks, expected=201)
        listed = self.call("GET", f"/api/tasks?project={project}&page_size=1000")
        return {task["data"]["item_id"]: task["id"] for task in listed["tasks"]}

    def annotate(self, task: int, user: int, choices: list[str], cancelled: bool = False) -> int:
        """Posts an annotation by `user` (a single-choice result); returns its id."""
        result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": choices}}]
        body = {"result": result, "completed_by": user, "was_cancelled": cancelled}
        return self.call("POST", f"/api/tasks/{task}/annotations", body, expected=201)["id"]

    def export(self, project: int, export_type: str) -> bytes:
        return self.request("GET", f"/api/projects/{project}/export?exportType={export_type}")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A running Label Studio (module-scoped); its document root is `label_studio.document_root`."""
    executable = label_studio_executable()
    document_root = str(tmp_path_factory.mktemp("labelstudio_root"))
    server = LabelStudioServer(executable, document_root, str(tmp_path_factory.mktemp("labelstudio_data")))
    try:
        server.startup_seconds = server.wait_until_up()
        yield server
    finally:
        server.stop()
