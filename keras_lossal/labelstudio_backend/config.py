"""`BackendConfig`: every setting of the Label Studio ML backend, validated once; no TensorFlow, no web framework.

`lossal labelstudio backend` builds one from its flags and passes it whole to
`keras_lossal.labelstudio_backend.serve`; the defaults live here, beside the
checks, so the CLI's `--help` and the library say the same.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence

from keras_lossal.contracts import check_integer

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_HOST",
    "DEFAULT_MAX_CONCURRENT_PREDICTIONS",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_TASKS",
    "DEFAULT_PORT",
    "DEFAULT_PREDICT_TIMEOUT",
    "SECRET_HEADER",
    "BackendConfig",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
# Tasks scored per model call; Label Studio sends all selected tasks in one /predict request.
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_TASKS = 1000
# /predict requests scoring at once (the model is shared: more would only queue on it); others wait.
DEFAULT_MAX_CONCURRENT_PREDICTIONS = 2
DEFAULT_QUEUE_TIMEOUT = 30.0
# Label Studio gives /predict ML_TIMEOUT_PREDICT = 100 s: answer before it gives up.
DEFAULT_PREDICT_TIMEOUT = 90.0
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_IMAGE_TIMEOUT = 10.0
# Connections uvicorn serves at once; more are answered 503.
DEFAULT_MAX_CONNECTIONS = 64
# The header a client may send the shared secret in (Label Studio sends it as HTTP basic auth instead).
SECRET_HEADER = "X-Lossal-Secret"
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """What the ML backend serves, where its labels go, how it retrains, and its limits.

    Args:
        model_dir: the TF Serving base path to score with in-process (`InProcessScorer`);
            retrained versions are published here too.
        server: score through TF Serving instead: `grpc://host:8500` or `http://host:8501`.
        model_name: the model's name on the server, and in exported warmup requests.
        base_path: the server's base path, to publish retrained versions to (server mode).
        labels: class names in server mode (an export's own `lossal.json` names them in-process).
        manifest: the labeled-set manifest accepted labels are merged into (`None`: predictions only).
        state_dir: the backend's own files (annotation log, rejects, retraining rounds); needed with `manifest`.
        document_root: Label Studio's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT` (local-files URLs resolve there).
        allow_paths_outside_root: accept plain image paths outside the document root.
        url_schemes: image URL schemes read as they are (`"https"`, `"gs"`, ...; none by default).
        id_field: the task data field holding the item id (what the manifest records).
        project: the Label Studio project id served; requests of other projects are refused (`None`: any).
        retrain_every: train and export the next version after this many new labels (`None`: never).
        train_args: extra `lossal train` arguments of every round (`--backbone small_cnn --epochs 1`).
        secret: the shared secret every request must carry (basic-auth password or `SECRET_HEADER`).
        host, port: where to listen (`127.0.0.1`: this machine only).
        batch_size: tasks per model call.
        max_tasks: tasks per /predict request (more: HTTP 413).
        max_concurrent_predictions: /predict requests scoring at once.
        queue_timeout: seconds a /predict request waits for its turn (then 503).
        predict_timeout: seconds a /predict request may score; tasks not reached get a per-task error.
        max_request_bytes: the largest request body (more: 413).
        body_timeout: seconds to receive a request body (then 408).
        image_timeout: seconds to download one http(s) image.
        max_connections: connections served at once (more: 503).
        max_image_bytes, max_image_pixels: image guards (default: the export's, else the library's).

    Example:

    >>> BackendConfig(model_dir="models/lossal", retrain_every=0)
    Traceback (most recent call last):
    ...
    ValueError: Expected retrain_every to be an integer >= 1 or None. Received: retrain_every=0
    """

    model_dir: str | None = None
    server: str | None = None
    model_name: str = "lossal"
    base_path: str | None = None
    labels: tuple[str, ...] | None = None
    manifest: str | None = None
    state_dir: str | None = None
    document_root: str | None = None
    allow_paths_outside_root: bool = False
    url_schemes: tuple[str, ...] = ()
    id_field: str = "item_id"
    project: int | None = None
    retrain_every: int | None = None
    train_args: tuple[str, ...] = ()
    secret: str | None = dataclasses.field(default=None, repr=False)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    batch_size: int = DEFAULT_BATCH_SIZE
    max_tasks: int = DEFAULT_MAX_TASKS
    max_concurrent_predictions: int = DEFAULT_MAX_CONCURRENT_PREDICTIONS
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    predict_timeout: float = DEFAULT_PREDICT_TIMEOUT
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    image_timeout: float = DEFAULT_IMAGE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_image_bytes: int | None = None
    max_image_pixels: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "url_schemes", tuple(str(scheme).lower() for scheme in self.url_schemes))
        object.__setattr__(self, "train_args", tuple(self.train_args))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
        self._check_sources()
        self._check_labels_and_retraining()
        for name in ("port", "batch_size", "max_tasks", "max_concurrent_predictions", "max_request_bytes",
                     "max_connections", "max_image_bytes", "max_image_pixels"):  # fmt: skip
            _check_int(self, name, low=1, optional=name.startswith("max_image"))
        for name in ("queue_timeout", "predict_timeout", "body_timeout", "image_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Expected {name} to be a finite number of seconds > 0. Received: {name}={value!r}")
        if self.secret is not None and not self.secret.strip():
            raise ValueError("Expected a non-empty shared secret (or none). Received an empty one")

    def _check_sources(self) -> None:
        if (self.model_dir is None) == (self.server is None):
            raise ValueError(
                "Expected exactly one of model_dir (score in-process) or server (TF Serving). "
                f"Received: model_dir={self.model_dir!r}, server={self.server!r}"
            )
        if not _MODEL_NAME.fullmatch(self.model_name):
            raise ValueError(f"Expected a model name of letters, digits, '_', '.', '-'. Received: {self.model_name!r}")
        if self.document_root is not None and not os.path.isdir(self.document_root):
            raise ValueError(
                f"Expected the document root to be an existing directory. Received: {self.document_root!r}"
            )
        if self.project is not None:
            _check_int(self, "project", low=1)

    def _check_labels_and_retraining(self) -> None:
        if self.manifest is not None and self.state_dir is None:
            raise ValueError("Expected state_dir (the annotation log and retraining rounds) with a manifest")
        if self.retrain_every is not None:
            _check_int(self, "retrain_every", low=1, optional=True)
            if self.manifest is None:
                raise ValueError("Expected a manifest to retrain on (retrain_every needs the labels it merges)")
            if self.server is not None and self.base_path is None:
                raise ValueError("Expected base_path (the server's model base path) to publish retrained versions to")
        reserved = sorted({"--data", "--out"} & {arg.split("=")[0] for arg in self.train_args})
        if reserved:
            raise ValueError(
                f"Expected train_args without {reserved} (each round sets them). Received: {self.train_args}"
            )

    @property
    def export_base_path(self) -> str | None:
        """Where retrained versions are published: the in-process model directory or the server's base path."""
        return self.model_dir if self.model_dir is not None else self.base_path


def _check_int(config: BackendConfig, name: str, low: int, optional: bool = False) -> None:
    check_integer(name, getattr(config, name), low, optional=optional)


def parse_url_schemes(text: str) -> tuple[str, ...]:
    """`"https, gs"` -> `("https", "gs")`: the comma-separated form of the command line."""
    return tuple(scheme.strip().lower() for scheme in text.split(",") if scheme.strip())


def split_train_args(values: Sequence[str] | str | None) -> tuple[str, ...]:
    """`lossal train` arguments from a shell-quoted string (or a list, kept as it is)."""
    import shlex

    if values is None:
        return ()
    return tuple(shlex.split(values)) if isinstance(values, str) else tuple(values)
