"""`LabelStudioBackend`: what each ML backend endpoint does, HTTP aside (the web layer is `app.py`).

It owns the served model, the predictor, the label store and the retraining
worker, and remembers the project's label config (`label_config.xml` in the
state directory) so that a restarted backend can merge logged labels before
Label Studio calls again.
"""

from __future__ import annotations

import fcntl
import logging
import os
from typing import Any

from keras_lossal.files import atomic_write
from keras_lossal.labeling.labelstudio import ImageSources
from keras_lossal.labelstudio_backend.config import BackendConfig
from keras_lossal.labelstudio_backend.labels import LabelStore
from keras_lossal.labelstudio_backend.predictor import ImageLimits, Predictor, ServedModel
from keras_lossal.labelstudio_backend.protocol import (
    AnnotationEvent,
    ChoicesTarget,
    ProtocolError,
    choices_target,
    parse_webhook,
    project_id,
)
from keras_lossal.labelstudio_backend.retraining import Retrainer, RoundCommands
from keras_lossal.records import LABEL_CONFIG_FILE
from keras_lossal.serving.labeling import prediction_model_version
from keras_lossal.serving.scorers import ServerScorer

__all__ = ["LabelStudioBackend", "RequestRefused", "make_scorer"]

logger = logging.getLogger(__name__)

LOCK_FILE = "backend.lock"


class RequestRefused(ProtocolError):
    """A well-formed request the backend does not serve; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def make_scorer(config: BackendConfig):
    """The scorer `config` names: an `InProcessScorer` over `model_dir`, or a `ServerScorer` for `server`."""
    from keras_lossal.serving import InProcessScorer, ServerScorer, TFServingClient

    if config.model_dir is not None:
        return InProcessScorer(config.model_dir)
    client = TFServingClient(config.server, config.model_name, protocol=None, batch_size=config.batch_size)
    return ServerScorer(client, labels=config.labels)


class LabelStudioBackend:
    """The ML backend: predictions by learning loss, labels from webhooks, retraining in the background.

    Args:
        config: the validated settings.
        scorer: the scorer to start with (default: `make_scorer(config)`).
        commands: a retraining round's subprocesses (default: `lossal train` + `lossal export`).

    Example:

    >>> backend = LabelStudioBackend(BackendConfig(model_dir="models/lossal", document_root="/srv"))  # doctest: +SKIP
    >>> backend.setup({"project": "1.1733300000", "schema": label_config})  # doctest: +SKIP
    {'model_version': 'lossal/1'}
    """

    def __init__(self, config: BackendConfig, scorer=None, commands: RoundCommands | None = None):
        self.config = config
        self.labels: LabelStore | None = None
        self.retrainer: Retrainer | None = None
        self.served: ServedModel | None = None
        self._lock_descriptor = _lock_state_dir(config.state_dir) if config.state_dir else None
        try:
            self.served = ServedModel(scorer if scorer is not None else make_scorer(config))
            sources = ImageSources(config.document_root, config.allow_paths_outside_root, config.url_schemes)
            self.predictor = Predictor(self.served, sources, _image_limits(config), config.batch_size)
            if config.manifest is not None:
                self.labels = LabelStore(config.state_dir, config.manifest, sources, config.id_field)
            if config.retrain_every is not None:
                commands = commands or RoundCommands(config.train_args, config.model_name)
                on_published = self._load_version if config.model_dir is not None else None
                self.retrainer = Retrainer(config.state_dir, config.manifest, config.export_base_path,
                                           config.retrain_every, commands, on_published)  # fmt: skip
            self._catch_up()
        except BaseException:
            self.close()  # a backend that did not start leaves its state directory free
            raise
        if self.retrainer is not None:
            self.retrainer.start()

    # ------------------------------------------------------------------ endpoints
    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "keras_lossal.LossLearningModel"}

    def setup(self, body: Any) -> dict[str, Any]:
        """`{"model_version": ...}` for the project's label config; refuses a model whose classes are not its choices."""
        body = _object(body, "setup request")
        self._check_project(body.get("project"))
        target = self._target(body.get("schema"))
        labels = self.served.current().labels or []
        missing = [label for label in labels if label not in target.choices]
        if missing:
            raise RequestRefused(
                f"The model's classes {missing} are not choices of the project's <Choices name="
                f"{target.from_name!r}> (choices: {list(target.choices)})",
                422,
            )
        return {"model_version": self.served.version_name()}

    def predict(self, body: Any, deadline: float) -> dict[str, Any]:
        """`{"results": [one entry per task]}`; tasks beyond `max_tasks` are refused whole (HTTP 413)."""
        body = _object(body, "predict request")
        self._check_project(body.get("project"))
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise ProtocolError(f"Expected `tasks` to be a list. Received: {type(tasks).__name__}")
        if len(tasks) > self.config.max_tasks:
            raise RequestRefused(
                f"{len(tasks)} tasks in one request, more than max_tasks={self.config.max_tasks}: select fewer tasks "
                "(Label Studio sends all selected tasks at once) or raise --max-tasks",
                413,
            )
        target = self._target(body.get("label_config"))
        return {"results": self.predictor.predict(tasks, target, deadline)}

    def webhook(self, body: Any) -> dict[str, Any]:
        """Merges the labels of annotation events into the manifest; "Start training" asks for a round now."""
        webhook = parse_webhook(body)
        if self.config.project is not None and webhook.project not in (None, self.config.project):
            return {"status": "ignored", "reason": f"project {webhook.project} is not the backend's"}
        if not webhook.events and not webhook.starts_training:
            return {"status": "ignored", "action": webhook.action}
        return self._apply(webhook.action, webhook.events, webhook.label_config, webhook.starts_training)

    def train(self, body: Any) -> dict[str, Any]:
        """The older `/train` call: every annotated task of the project, as a JSON export holds them."""
        body = _object(body, "train request")
        self._check_project(body.get("project"))
        tasks = body.get("annotations")
        if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
            raise ProtocolError("Expected `annotations` to be a list of tasks (a Label Studio JSON export)")
        events = [AnnotationEvent(annotation["id"], {"id": task.get("id"), "data": task.get("data")}, annotation)
                  for task in tasks for annotation in task.get("annotations") or []
                  if isinstance(annotation, dict) and isinstance(annotation.get("id"), int)]  # fmt: skip
        return self._apply("TRAIN", tuple(events), body.get("label_config"), True)

    def versions(self) -> dict[str, Any]:
        """The versions under the base path (Label Studio's model version menu); the served one without a base path."""
        from keras_lossal.export.versions import existing_versions

        base = self.config.export_base_path
        if base is None:
            return {"versions": [self.served.version_name()]}
        description = self.served.current().description
        return {"versions": [prediction_model_version(description, version) for version in existing_versions(base)]}

    def status(self) -> dict[str, Any]:
        """What `/status` shows: the served version, the labels heard and merged, the retraining rounds."""
        status: dict[str, Any] = {"model_version": self.served.version_name()}
        if self.labels is not None:
            status["tasks_heard"] = self.labels.tasks_heard
        if self.retrainer is not None:
            status["retraining"] = self.retrainer.status()
        return status

    def close(self) -> None:
        if self.retrainer is not None:
            self.retrainer.stop()
        if self.labels is not None:
            self.labels.close()
        scorer = self.served.current() if self.served is not None else None
        if isinstance(scorer, ServerScorer):
            scorer.client.close()
        if self._lock_descriptor is not None:
            os.close(self._lock_descriptor)
            self._lock_descriptor = None

    # ------------------------------------------------------------------ steps
    def _apply(self, action: str, events, label_config: str | None, starts_training: bool) -> dict[str, Any]:
        if self.labels is None:
            return {"status": "ignored", "action": action, "reason": "no manifest (--manifest) to merge labels into"}
        update = self.labels.apply(events, self._target(label_config)) if events else None
        answer = {"status": "ok", "action": action, **(update.as_json() if update else {})}
        if starts_training:
            answer["training"] = self.retrainer.start_training() if self.retrainer else "off (--retrain-every N)"
        elif self.retrainer is not None and update is not None and update.added:
            self.retrainer.notify()
        return answer

    def _target(self, label_config: Any) -> ChoicesTarget:
        """The classification target of `label_config` (remembered for restarts), or of the last one seen."""
        if isinstance(label_config, str) and label_config.strip():
            target = choices_target(label_config)
            self._remember_config(label_config)
            return target
        remembered = self._remembered_config()
        if remembered is None:
            raise ProtocolError("Expected the project's label config in the request (`label_config` / `schema`)")
        return choices_target(remembered)

    def _remember_config(self, label_config: str) -> None:
        if self.config.state_dir is not None and label_config != self._remembered_config():
            atomic_write(os.path.join(self.config.state_dir, LABEL_CONFIG_FILE), label_config)

    def _remembered_config(self) -> str | None:
        path = os.path.join(self.config.state_dir, LABEL_CONFIG_FILE) if self.config.state_dir else None
        if path is None or not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return handle.read()

    def _catch_up(self) -> None:
        """Merges logged labels a killed backend had not merged yet (needs the remembered label config)."""
        remembered = self._remembered_config()
        if self.labels is None or remembered is None:
            return
        update = self.labels.catch_up(choices_target(remembered))
        if update.added:
            logger.info(
                "labels: %d label(s) logged before a restart merged into %s", update.added, self.config.manifest
            )

    def _check_project(self, value: Any) -> None:
        if self.config.project is not None and project_id(value) != self.config.project:
            raise RequestRefused(f"This backend serves project {self.config.project}; received project {value!r}", 403)

    def _load_version(self, version: int) -> None:
        from keras_lossal.serving import InProcessScorer

        self.served.swap(InProcessScorer(self.config.model_dir, version=version))
        logger.info("serving version %d", version)


def _image_limits(config: BackendConfig) -> ImageLimits:
    defaults = ImageLimits()
    return ImageLimits(
        max_bytes=config.max_image_bytes or defaults.max_bytes,
        max_pixels=config.max_image_pixels or defaults.max_pixels,
        timeout=config.image_timeout,
    )


def _object(body: Any, name: str) -> dict:
    if not isinstance(body, dict):
        raise ProtocolError(f"Expected the {name} to be a JSON object. Received: {type(body).__name__}")
    return body


def _lock_state_dir(state_dir: str) -> int:
    """Holds `backend.lock` for the process's life: one backend per state directory."""
    os.makedirs(state_dir, exist_ok=True)
    descriptor = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise ValueError(
            f"Another ML backend uses the state directory {state_dir!r}; one backend per directory"
        ) from None
    return descriptor
