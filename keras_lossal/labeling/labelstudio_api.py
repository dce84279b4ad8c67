"""Label Studio through its REST API, with the official client `label-studio-sdk` (extra `labelstudio`).

`push` puts a triage output into a project: it finds the project by title or
creates it with triage's `label_config.xml`, connects a local-files storage
covering the folder of the queue's images (found or created), and imports the
tasks of `label_studio_tasks.json` with their predictions, leaving out every
task whose `data.sha256` or image URL the project already holds, so pushing
twice adds nothing. `pull` exports a project's annotations (JSON export) to a
file for `keras_lossal.labeling.labelstudio.ingest`.

Label Studio has two kinds of token, and the SDK sends either:

- a personal access token (the account page, *Account & Settings → Personal
  Access Token*), the default: a JWT refresh token, exchanged at
  `POST /api/token/refresh/` for an access token sent as `Authorization: Bearer A`;
- a legacy token (`Authorization: Token T`): on Label Studio 1.23 answered 401
  unless legacy tokens are enabled for the organisation (*Organization → API
  Tokens Settings*, or `label-studio start --enable-legacy-api-token` on the
  first start, which creates the organisation; the flag changes nothing later).

Every failure is a `LabelStudioError` with one line for people; a refused token
says which fix applies (`unauthorized_message`).

Example:

>>> token_kind("0123456789abcdef0123456789abcdef01234567")
'legacy token'
>>> storage_folders(["/data/local-files/?d=pool/cat/a.png", "/data/local-files/?d=pool/b%20b.png"], "/srv/data")
['/srv/data/pool']
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from keras_lossal.labeling.labelstudio import CONTENT_FIELD, IMAGE_FIELD, LOCAL_FILES_PREFIX, label_config_classes
from keras_lossal.records import LABEL_CONFIG_FILE, LABEL_STUDIO_FILE

__all__ = [
    "DEFAULT_URL",
    "DOCUMENT_ROOT_VARIABLE",
    "TOKEN_VARIABLE",
    "URL_VARIABLE",
    "LabelStudioClient",
    "LabelStudioError",
    "Project",
    "PushSummary",
    "default_export_path",
    "new_tasks",
    "pull",
    "push",
    "storage_folders",
    "token_kind",
    "unauthorized_message",
]

# What Label Studio's own tools read (the SDK's `LabelStudio(api_key=...)` defaults to LABEL_STUDIO_API_KEY).
URL_VARIABLE = "LABEL_STUDIO_URL"
TOKEN_VARIABLE = "LABEL_STUDIO_API_KEY"
# The server's local-files document root; the storage's path is a folder below it.
DOCUMENT_ROOT_VARIABLE = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
DEFAULT_URL = "http://localhost:8080"  # `label-studio start`'s port
PERSONAL_ACCESS_TOKEN, LEGACY_TOKEN = "personal access token", "legacy token"
ACCOUNT_PAGE = "the account page (Account & Settings > Personal Access Token)"
LEGACY_SETTING = "Organization > API Tokens Settings > Legacy Tokens"
# Tasks per import request (Label Studio takes up to 250,000 or 200 MB in one) and per page of the task list.
IMPORT_BATCH = 500
PAGE_SIZE = 1000
REQUEST_TIMEOUT_SECONDS = 120.0
EXPORT_TIMEOUT_SECONDS = 900


class LabelStudioError(Exception):
    """Label Studio refused, failed or could not be reached; the message is one line for people."""


# --------------------------------------------------------------------------- tokens
def token_kind(token: str) -> str:
    """`"personal access token"` for a JWT (what the account page creates), else `"legacy token"`.

    Example:

    >>> header = base64.urlsafe_b64encode(b'{"alg": "HS256", "typ": "JWT"}').decode().rstrip("=")
    >>> token_kind(header + ".eyJ0b2tlbl90eXBlIjogInJlZnJlc2gifQ.signature")
    'personal access token'
    """
    header = token.split(".")[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error):
        return LEGACY_TOKEN
    return PERSONAL_ACCESS_TOKEN if isinstance(decoded, dict) and "alg" in decoded and "." in token else LEGACY_TOKEN


def unauthorized_message(url: str, token: str, detail: str) -> str:
    """What to do about a 401: the fix for a legacy token, or for a personal access token.

    Example:

    >>> unauthorized_message("http://localhost:8080", "abc", "Invalid token.")  # doctest: +NORMALIZE_WHITESPACE
    'Label Studio at http://localhost:8080 refused the legacy token (401: Invalid token.). Label Studio 1.23
    accepts legacy tokens only if the organisation enables them: Organization > API Tokens Settings > Legacy
    Tokens, or `label-studio start --enable-legacy-api-token` on the first start (when it creates the
    organisation); or use a personal access token from the account page (Account & Settings > Personal Access
    Token).'
    """
    kind = token_kind(token)
    refused = f"Label Studio at {url} refused the {kind} (401: {detail.rstrip()})."
    if kind == LEGACY_TOKEN:
        return (
            f"{refused} Label Studio 1.23 accepts legacy tokens only if the organisation enables them: "
            f"{LEGACY_SETTING}, or `label-studio start --enable-legacy-api-token` on the first start (when it "
            f"creates the organisation); or use a personal access token from {ACCOUNT_PAGE}."
        )
    return (
        f"{refused} It is expired, revoked, cut short or from another server: create a new one on {ACCOUNT_PAGE} "
        f"and pass it with --token or {TOKEN_VARIABLE}."
    )


def _detail(body: Any) -> str:
    """The useful part of an error body: Label Studio's `detail` and `validation_errors`, or the start of the text."""
    if isinstance(body, Mapping):
        detail = str(body.get("detail") or "")
        errors = body.get("validation_errors")
        return f"{detail} {json.dumps(errors)}".strip() if errors else detail or json.dumps(body)[:200]
    text = " ".join(str(body or "").split())
    if text.startswith("<"):
        return "an HTML page"
    return text[:120] + ("..." if len(text) > 120 else "")


# --------------------------------------------------------------------------- the client
@dataclasses.dataclass(frozen=True)
class Project:
    """A Label Studio project: its id, title and label config."""

    id: int
    title: str
    label_config: str


class LabelStudioClient:
    """The few Label Studio API calls `push` and `pull` make, through `label_studio_sdk.LabelStudio`.

    Args:
        url: the server (default: `LABEL_STUDIO_URL`, else `DEFAULT_URL`).
        token: a personal access token or a legacy token (default: `LABEL_STUDIO_API_KEY`).

    Example:

    >>> LabelStudioClient(url="http://localhost:8080", token="")
    Traceback (most recent call last):
    ...
    keras_lossal.labeling.labelstudio_api.LabelStudioError: no Label Studio token: pass --token or set LABEL_STUDIO_API_KEY to a personal access token from the account page (Account & Settings > Personal Access Token), or to a legacy token
    """

    def __init__(self, url: str | None = None, token: str | None = None):
        self.url = (url or os.environ.get(URL_VARIABLE) or DEFAULT_URL).rstrip("/")
        self.token = (os.environ.get(TOKEN_VARIABLE, "") if token is None else token).strip()
        if not self.token:
            raise LabelStudioError(
                f"no Label Studio token: pass --token or set {TOKEN_VARIABLE} to a personal access token from "
                f"{ACCOUNT_PAGE}, or to a legacy token"
            )
        if not self.url.startswith(("http://", "https://")):
            raise LabelStudioError(f"Expected a Label Studio URL starting with http:// or https://. Received: {url!r}")
        try:
            from label_studio_sdk import LabelStudio
        except ImportError:
            raise LabelStudioError(
                "label-studio-sdk is not installed: pip install 'keras-lossal[labelstudio]' (label-studio-sdk==2.1.2)"
            ) from None
        from label_studio_sdk.core.api_error import ApiError

        try:
            self._sdk = LabelStudio(base_url=self.url, api_key=self.token, timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiError as error:  # the SDK reads a personal access token's expiry before any request
            raise LabelStudioError(
                f"the personal access token has expired ({_detail(error.body)}): create a new one on {ACCOUNT_PAGE} "
                f"and pass it with --token or {TOKEN_VARIABLE}"
            ) from None

    @contextlib.contextmanager
    def _calls(self, doing: str) -> Iterator[None]:
        """Turns the SDK's and httpx's errors into a `LabelStudioError` that names the server and the step."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            yield
        except ApiError as error:
            if error.status_code == 401:
                raise LabelStudioError(unauthorized_message(self.url, self.token, _detail(error.body))) from None
            status = "no answer" if error.status_code is None else f"HTTP {error.status_code}"
            hint = f" (is {self.url} a Label Studio server?)" if error.status_code == 404 else ""
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {status} while {doing}: {_detail(error.body)}{hint}"
            ) from None
        except httpx.HTTPError as error:
            raise LabelStudioError(f"Label Studio at {self.url} could not be reached while {doing}: {error}") from None

    def find_project(self, title: str) -> Project | None:
        """The project titled exactly `title`, or None; several of that title are an error naming their ids."""
        with self._calls(f"looking for project {title!r}"):
            found = [project for project in self._sdk.projects.list(title=title) if project.title == title]
        if len(found) > 1:
            ids = ", ".join(str(project.id) for project in found)
            raise LabelStudioError(
                f"several projects at {self.url} are titled {title!r} (ids {ids}): rename all but one"
            )
        return Project(found[0].id, title, found[0].label_config or "") if found else None

    def create_project(self, title: str, label_config: str) -> Project:
        with self._calls(f"creating project {title!r}"):
            project = self._sdk.projects.create(title=title, label_config=label_config)
        return Project(project.id, title, label_config)

    def local_storages(self, project_id: int) -> list[tuple[int, str]]:
        """`(storage id, path)` of the project's local-files import storages."""
        with self._calls(f"listing the local-files storages of project {project_id}"):
            return [
                (storage.id, storage.path or "") for storage in self._sdk.import_storage.local.list(project=project_id)
            ]

    def create_local_storage(self, project_id: int, path: str) -> int:
        """Connects a local-files storage (not synced: only pushed tasks become tasks); returns its id."""
        with self._calls(f"connecting a local-files storage for {path} to project {project_id}"):
            storage = self._sdk.import_storage.local.create(
                project=project_id, path=path, title=posixpath.basename(path) or path, use_blob_urls=False
            )
        return storage.id

    def task_data(self, project_id: int) -> Iterator[Mapping[str, Any]]:
        """The `data` of every task of the project (page by page)."""
        with self._calls(f"listing the tasks of project {project_id}"):
            for task in self._sdk.tasks.list(project=project_id, fields="task_only", page_size=PAGE_SIZE):
                yield task.data or {}

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> int:
        """Imports tasks (with their predictions) in batches; returns how many Label Studio created."""
        created = 0
        with self._calls(f"importing tasks into project {project_id}"):
            for start in range(0, len(tasks), IMPORT_BATCH):
                response = self._sdk.projects.import_tasks(
                    project_id, request=list(tasks[start : start + IMPORT_BATCH])
                )
                created += response.task_count or 0
        return created

    def export_json(self, project_id: int) -> bytes:
        """The project's JSON export (annotated tasks, each with its `data` and `annotations`)."""
        with self._calls(f"exporting project {project_id}"):
            chunks = self._sdk.projects.exports.download_sync(
                project_id, export_type="JSON", request_options={"timeout_in_seconds": EXPORT_TIMEOUT_SECONDS}
            )
            return b"".join(chunks)


# --------------------------------------------------------------------------- push
def storage_folders(image_urls: Iterable[str], document_root: str | None) -> list[str]:
    """The server folders a local-files storage must cover for these task images: their common folder below the
    document root (or one per top-level folder when they have none in common).

    Cloud and web URLs (`gs://`, `s3://`, `https://`, ...) need no local-files storage and are skipped; a plain
    path is an error (Label Studio cannot load it), as is an image directly in the document root (Label Studio
    refuses a storage on the root itself).

    Args:
        image_urls: the tasks' `data.image`.
        document_root: the server's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT` (an absolute path on the server).
    """
    folders = set()
    for url in image_urls:
        if "://" in url:
            continue
        if not url.startswith(LOCAL_FILES_PREFIX.split("?")[0]):
            raise LabelStudioError(
                f"task image {url!r} is no URL Label Studio serves: run `lossal triage` with "
                "--label-studio-document-root (local files) or --label-studio-url-prefix (cloud storage)"
            )
        relative = posixpath.normpath((parse_qs(urlsplit(url).query).get("d") or [""])[0])
        folder = posixpath.dirname(relative)
        if not folder or relative.startswith(("/", "..")):
            raise LabelStudioError(
                f"task image {url!r} is not in a folder below the document root; Label Studio serves local files "
                "only through a storage on such a folder (put the pool in a subfolder of the document root)"
            )
        folders.add(folder)
    if not folders:
        return []
    if not document_root or not posixpath.isabs(document_root):
        raise LabelStudioError(
            "the tasks name local files (/data/local-files/?d=...): pass --document-root or set "
            f"{DOCUMENT_ROOT_VARIABLE} to the server's document root (an absolute path; received {document_root!r})"
        )
    common = posixpath.commonpath(sorted(folders))
    covering = [common] if common else sorted({folder.split("/")[0] for folder in folders})
    return [posixpath.join(posixpath.normpath(document_root), folder) for folder in covering]


def new_tasks(
    tasks: Sequence[Mapping[str, Any]], present: Iterable[Mapping[str, Any]]
) -> tuple[list[Mapping[str, Any]], int]:
    """The tasks whose `data.sha256` and image URL are not among `present` tasks' data (nor an earlier task's);
    returns `(new tasks, how many were left out)`.

    Example:

    >>> task = {"data": {"image": "/data/local-files/?d=pool/a.png", "sha256": "ab"}}
    >>> moved = {"data": {"image": "/data/local-files/?d=pool/renamed.png", "sha256": "ab"}}
    >>> new_tasks([task, moved], present=[]) == ([task], 1), new_tasks([task], present=[task["data"]])
    (True, ([], 1))
    """
    hashes, images = set(), set()
    for data in present:
        hashes.add(data.get(CONTENT_FIELD))
        images.add(data.get(IMAGE_FIELD))
    hashes.discard(None)
    images.discard(None)
    new, skipped = [], 0
    for task in tasks:
        content, image = task["data"].get(CONTENT_FIELD), task["data"].get(IMAGE_FIELD)
        if (content is not None and content in hashes) or (image is not None and image in images):
            skipped += 1
            continue
        new.append(task)
        hashes.add(content)
        images.add(image)
    return new, skipped


@dataclasses.dataclass(frozen=True)
class PushSummary:
    """What `push` did.

    Args:
        url: the server.
        project: the project pushed to.
        project_created: whether push created it.
        storages: `(storage id, path, created)` of the local-files storages covering the images.
        imported: tasks imported.
        present: tasks left out because the project holds them already (same `data.sha256` or image URL).
    """

    url: str
    project: Project
    project_created: bool
    storages: tuple[tuple[int, str, bool], ...]
    imported: int
    present: int

    def describe(self) -> str:
        """One line per step, for people."""
        project = f"project {self.project.title!r} (id {self.project.id}): {self.url}/projects/{self.project.id}/"
        lines = [("created " if self.project_created else "found ") + project]
        for storage_id, path, created in self.storages:
            lines.append(f"{'created' if created else 'found'} local-files storage {storage_id} covering {path}")
        lines.append(
            f"imported {self.imported} task(s) with their predictions; {self.present} already in the project "
            "(same data.sha256 or image URL), not imported again"
        )
        return "\n".join(lines)


def push(client: LabelStudioClient, triage_dir: str, title: str, document_root: str | None = None) -> PushSummary:
    """Pushes a triage output (`label_studio_tasks.json`, `label_config.xml`) into the project titled `title`.

    The project is found by title or created with the label config; a found project must label the same classes.
    A local-files storage covering the images' folder is found or connected. Tasks the project holds already
    (same `data.sha256` or image URL) are not imported again, so pushing twice adds nothing.

    Args:
        client: the server.
        triage_dir: `lossal triage`'s output directory.
        title: the project's title.
        document_root: the server's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT` (needed for local-files images).
    """
    tasks, config = _triage_files(triage_dir)
    classes = label_config_classes(config, source=repr(os.path.join(triage_dir, LABEL_CONFIG_FILE)))
    folders = storage_folders([task["data"].get(IMAGE_FIELD, "") for task in tasks], document_root)
    project, created = client.find_project(title), False
    if project is None:
        project, created = client.create_project(title, config), True
    else:
        _check_same_classes(project, classes, triage_dir)
    storages = tuple(_local_storage(client, project.id, folder) for folder in folders)
    new, present = new_tasks(tasks, client.task_data(project.id))
    imported = client.import_tasks(project.id, new) if new else 0
    return PushSummary(client.url, project, created, storages, imported, present)


def _triage_files(triage_dir: str) -> tuple[list[dict], str]:
    tasks_path, config_path = (os.path.join(triage_dir, name) for name in (LABEL_STUDIO_FILE, LABEL_CONFIG_FILE))
    for path in (tasks_path, config_path):
        if not os.path.isfile(path):
            raise LabelStudioError(
                f"{path} not found: expected a `lossal triage` output directory. Received: {triage_dir!r}"
            )
    with open(tasks_path, encoding="utf-8") as handle:
        try:
            tasks = json.load(handle)
        except ValueError as error:
            raise LabelStudioError(f"Expected a JSON list of tasks in {tasks_path}: {error}") from None
    if not isinstance(tasks, list) or not all(
        isinstance(task, dict) and isinstance(task.get("data"), dict) for task in tasks
    ):
        raise LabelStudioError(f"Expected a JSON list of tasks, each with a `data` object, in {tasks_path}")
    with open(config_path, encoding="utf-8") as handle:
        return tasks, handle.read()


def _check_same_classes(project: Project, classes: Sequence[str], triage_dir: str) -> None:
    try:
        labeled = label_config_classes(project.label_config, source=f"of project {project.title!r}")
    except ValueError as error:
        raise LabelStudioError(f"project {project.title!r} (id {project.id}) is no lossal project: {error}") from None
    if set(labeled) != set(classes):
        raise LabelStudioError(
            f"project {project.title!r} (id {project.id}) labels {labeled}, but {triage_dir}/{LABEL_CONFIG_FILE} "
            f"labels {list(classes)}: push to a new project (--project), or paste that label config into the "
            "project's Settings > Labeling Interface first"
        )


def _local_storage(client: LabelStudioClient, project_id: int, folder: str) -> tuple[int, str, bool]:
    """The project's local-files storage covering `folder` (its path is the folder or one above it), or a new one."""
    for storage_id, path in client.local_storages(project_id):
        path = posixpath.normpath(path)
        if folder == path or folder.startswith(path.rstrip("/") + "/"):
            return storage_id, path, False
    return client.create_local_storage(project_id, folder), folder, True


# --------------------------------------------------------------------------- pull
def default_export_path(manifest_path: str, project: Project) -> str:
    """Where `pull` keeps a project's export by default: beside the manifest, one file per project (rewritten)."""
    return os.path.join(os.path.dirname(os.path.abspath(manifest_path)), f"labelstudio_project_{project.id}.json")


def pull(client: LabelStudioClient, title: str, export_path: str | None, manifest_path: str) -> tuple[Project, str]:
    """Exports the annotations of the project titled `title` (JSON) to `export_path` (atomically); returns the
    project and the path. Default path: `default_export_path(manifest_path, project)`."""
    from keras_lossal.files import atomic_open

    project = client.find_project(title)
    if project is None:
        raise LabelStudioError(f"no project titled {title!r} at {client.url}: `lossal labelstudio push` creates it")
    export = client.export_json(project.id)
    path = export_path or default_export_path(manifest_path, project)
    with atomic_open(path, binary=True) as handle:
        handle.write(export)
    return project, path
