"""Label Studio's ML backend protocol: the shapes Label Studio 1.23 sends and accepts, as pure functions.

Read from Label Studio 1.23.2's own source (`label_studio/ml/api_connector.py`,
`label_studio/ml/models.py`, `label_studio/webhooks/`) and checked against
requests recorded from a live server (`tests/data/labelstudio/ml_backend/`):

- `GET /health` (timeout `ML_TIMEOUT_HEALTH`, 1 s): any JSON answer with HTTP 200.
- `POST /setup` (timeout `ML_TIMEOUT_SETUP`, 3 s), sent before every prediction round:
  `{"project": "<id>.<created timestamp>", "schema": <label config XML>, "hostname", "access_token",
  "extra_params"}` -> `{"model_version": "..."}`. Label Studio stores the version and asks only for
  tasks that have no prediction of that version yet.
- `POST /predict` (timeout `ML_TIMEOUT_PREDICT`, 100 s): `{"tasks": [{"id", "data", "project", ...}],
  "project", "label_config", "params": {"login", "password", "context"}}` -> `{"results": [...]}`, one
  entry per task in order: a prediction `{"result": [...], "score", "model_version"}`. An entry without
  `result` is skipped (Label Studio logs it): that is how one task fails while the others are predicted;
  a `results` list of another length than the tasks is dropped whole.
- `POST /webhook` (timeout `WEBHOOK_TIMEOUT`, 1 s): connecting a backend creates a project webhook to
  `<url>/webhook` for every action, with the payload: `{"action": "ANNOTATION_CREATED" |
  "ANNOTATION_UPDATED", "annotation": {...}, "task": {...}, "project": {...}}`, `ANNOTATIONS_CREATED`
  (lists), `{"action": "ANNOTATIONS_DELETED", "annotations": [{"id"}]}`; "Start training"
  (`POST /api/ml/{id}/train`) sends `{"action": "START_TRAINING", "project": {...}}`.
- `POST /train` (older servers, and 1.23 with the webhook flag off): `{"annotations": [tasks as a JSON
  export], "project", "label_config"}`.
- `GET /versions` -> `{"versions": [...]}` (the model version menu).

Example:

>>> target = choices_target('<View><Image name="img" value="$photo"/>'
...                         '<Choices name="kind" toName="img"><Choice value="cat"/><Choice value="dog"/></Choices></View>')
>>> target
ChoicesTarget(from_name='kind', to_name='img', image_field='photo', choices=('cat', 'dog'))
>>> prediction(target, "dog", 0.75, "lossal/2")["result"][0]["value"]
{'choices': ['dog']}
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ANNOTATION_ACTIONS",
    "DELETE_ACTIONS",
    "TRAIN_ACTIONS",
    "AnnotationEvent",
    "ChoicesTarget",
    "ProtocolError",
    "Webhook",
    "choices_target",
    "parse_webhook",
    "prediction",
    "project_id",
    "task_error",
]

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
DELETE_ACTIONS = ("ANNOTATIONS_DELETED",)
TRAIN_ACTIONS = ("START_TRAINING",)


class ProtocolError(ValueError):
    """A request that does not have the shape Label Studio sends (answered with HTTP 400 and the reason)."""


@dataclasses.dataclass(frozen=True)
class ChoicesTarget:
    """Where a classification goes in a project: a `Choices` tag over an `Image` tag of the label config.

    Args:
        from_name: the `Choices` tag's name (a result's `from_name`).
        to_name: the `Image` tag's name (a result's `to_name`).
        image_field: the task data field the image URL is in (`$image` -> `image`).
        choices: the choice values, in the config's order.
    """

    from_name: str
    to_name: str
    image_field: str
    choices: tuple[str, ...]


def choices_target(label_config: str) -> ChoicesTarget:
    """The first `Choices` tag whose `toName` is an `Image` tag of `label_config`; `ProtocolError` without one.

    A `Choice` with an `alias` stands for its alias (what Label Studio writes into results).
    """
    if not isinstance(label_config, str) or not label_config.strip():
        raise ProtocolError(f"Expected a label config (XML). Received: {_short(label_config)}")
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise ProtocolError(f"Expected a label config (XML): {error}") from None
    images = {tag.get("name"): tag.get("value", "") for tag in root.iter("Image")}
    for choices in root.iter("Choices"):
        targets = [name.strip() for name in choices.get("toName", "").split(",")]
        image = next((name for name in targets if name in images), None)
        if image is None or not choices.get("name"):
            continue
        field = images[image]
        if not field.startswith("$") or len(field) < 2:
            raise ProtocolError(
                f"Expected the Image tag {image!r} to read a task field ($name). Received: value={field!r}"
            )
        values = tuple(choice.get("alias") or choice.get("value", "") for choice in choices.iter("Choice"))
        if not values or any(not value for value in values):
            raise ProtocolError(
                f"Expected Choice values in the Choices tag {choices.get('name')!r}. Received: {values}"
            )
        return ChoicesTarget(choices.get("name"), image, field[1:], values)
    raise ProtocolError(
        "Expected a <Choices name=... toName=...> tag over an <Image name=... value=$field> tag in the label "
        "config (image classification)"
    )


def prediction(target: ChoicesTarget, label: str, score: float, model_version: str) -> dict[str, Any]:
    """One task's prediction: the class as the project's choice, `score` the predicted loss (the Data Manager sorts by it)."""
    result = {"from_name": target.from_name, "to_name": target.to_name, "type": "choices"}
    result["value"] = {"choices": [label]}
    return {"result": [result], "score": float(score), "model_version": model_version}


def task_error(task_id: Any, reason: str) -> dict[str, Any]:
    """The `results` entry of a task that could not be predicted: no `result`, so Label Studio skips (and logs) it."""
    return {"task": task_id, "error": reason}


def project_id(value: Any) -> int | None:
    """The project id of Label Studio's `"<id>.<created timestamp>"` (or an integer, or a project object)."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    head = str(value).split(".", 1)[0] if value is not None else ""
    return int(head) if head.isascii() and head.isdigit() else None


# --------------------------------------------------------------------------- webhooks
@dataclasses.dataclass(frozen=True)
class AnnotationEvent:
    """One annotation written or deleted in Label Studio.

    Args:
        annotation_id: Label Studio's annotation id (higher = later).
        task: `{"id", "data"}` of the annotated task (`None` for a deletion).
        annotation: the annotation (`id`, `result`, `completed_by`, `was_cancelled`; `None` for a deletion).
    """

    annotation_id: int
    task: dict[str, Any] | None = None
    annotation: dict[str, Any] | None = None

    @property
    def deleted(self) -> bool:
        return self.annotation is None


@dataclasses.dataclass(frozen=True)
class Webhook:
    """A webhook call: its action, the annotation events it carries, the project and its label config."""

    action: str
    events: tuple[AnnotationEvent, ...] = ()
    project: int | None = None
    label_config: str | None = None

    @property
    def starts_training(self) -> bool:
        return self.action in TRAIN_ACTIONS


def parse_webhook(payload: Any) -> Webhook:
    """The annotation events of a webhook payload; actions other than annotations and training carry none."""
    if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
        raise ProtocolError(f"Expected a webhook payload with an `action`. Received: {_short(payload)}")
    action = payload["action"]
    project = payload.get("project")
    config = project.get("label_config") if isinstance(project, dict) else None
    webhook = Webhook(action, (), project_id(project), config if isinstance(config, str) else None)
    if action in ANNOTATION_ACTIONS:
        return dataclasses.replace(webhook, events=_annotation_events(payload))
    if action in DELETE_ACTIONS:
        deleted = _objects(payload.get("annotations"), "annotations")
        return dataclasses.replace(
            webhook, events=tuple(AnnotationEvent(_id(item, "annotations[].id")) for item in deleted)
        )
    return webhook


def _annotation_events(payload: dict) -> tuple[AnnotationEvent, ...]:
    annotations = _objects(payload.get("annotation"), "annotation")
    tasks = {_id(task, "task.id"): task for task in _objects(payload.get("task"), "task")}
    events = []
    for annotation in annotations:
        task_id = annotation.get("task")
        task_id = task_id.get("id") if isinstance(task_id, dict) else task_id
        task = tasks.get(task_id) if task_id is not None else (next(iter(tasks.values())) if len(tasks) == 1 else None)
        if task is None or not isinstance(task.get("data"), dict):
            raise ProtocolError(
                f"Expected the task (with `data`) of annotation {annotation.get('id')!r} in the payload"
            )
        kept = {key: annotation.get(key) for key in ("id", "result", "completed_by", "was_cancelled")}
        events.append(AnnotationEvent(_id(annotation, "annotation.id"), {"id": task["id"], "data": task["data"]}, kept))
    return tuple(events)


def _objects(value: Any, name: str) -> list[dict]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(item, dict) for item in values):
        raise ProtocolError(f"Expected `{name}` to be an object or a list of objects. Received: {_short(value)}")
    return values


def _id(item: dict, name: str) -> int:
    value = item.get("id")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"Expected `{name}` to be an integer. Received: {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
