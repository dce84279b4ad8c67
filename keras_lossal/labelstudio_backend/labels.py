"""Labels from Label Studio's webhooks into the labeled-set manifest, by `lossal ingest`'s rules, before the webhook answers.

Every annotation event is first appended to `annotations.jsonl` in the state
directory (synced), then applied to the backend's picture of each task (all
the annotations it has heard of, the deleted ones gone), and the tasks it
touched go through `keras_lossal.labeling.labelstudio.ingest`, the very function behind
`lossal ingest`: cancelled annotations ignored, one vote per annotator (their
latest), votes outside the class list rejected, the majority wins, a tie is
rejected, and the manifest is merged under its lock (never overwriting a
label). So a label is in the manifest when the webhook returns, and a backend
killed between the log and the merge merges it when it starts again (it
ingests every task of the log once at start; ingesting twice changes nothing).

A label once merged stays: deleting its annotation, or outvoting it later,
does not change the manifest (ingest never overwrites; the later vote is
reported as a conflict in `rejects.jsonl`). Change a label by editing the manifest.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from keras_lossal.contracts import REJECTS_FILE
from keras_lossal.labeling.labelstudio import CHOICES_NAME, IMAGE_FIELD, ImageSources, ingest
from keras_lossal.labelstudio_backend.protocol import AnnotationEvent, ChoicesTarget
from keras_lossal.records import JsonlLog, read_jsonl_log

__all__ = ["ANNOTATION_LOG", "REJECTS_LOG", "LabelStore", "LabelUpdate"]

ANNOTATION_LOG = "annotations.jsonl"
REJECTS_LOG = REJECTS_FILE  # the images that could not be read, as `lossal train` names its own
# The export file name ingest records as each label's `source` in the manifest.
SOURCE_NAME = "label_studio_ml_backend.json"


@dataclasses.dataclass
class LabelUpdate:
    """What one webhook did to the labeled set.

    Args:
        added: items added to the manifest.
        present: items already in the manifest with the same label.
        rejects: rejected votes and items, each with a `reason` (as `lossal ingest` writes them).
    """

    added: int = 0
    present: int = 0
    rejects: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"added": self.added, "present": self.present, "rejects": self.rejects}


class LabelStore:
    """The annotations heard through webhooks, and their labels merged into the manifest.

    Args:
        state_dir: where `annotations.jsonl` and `rejects.jsonl` live.
        manifest: the labeled-set manifest.
        sources: which task image URLs give a manifest path (see `ImageSources`).
        id_field: the task data field holding the item id.

    Example:

    >>> store = LabelStore("backend_state", "labeled.jsonl", ImageSources("/srv"))  # doctest: +SKIP
    >>> store.catch_up(target)  # doctest: +SKIP
    >>> store.apply(parse_webhook(payload).events, target).added  # doctest: +SKIP
    1
    """

    def __init__(self, state_dir: str, manifest: str, sources: ImageSources, id_field: str = "item_id"):
        os.makedirs(state_dir, exist_ok=True)
        self.state_dir, self.manifest, self.sources, self.id_field = state_dir, manifest, sources, id_field
        self.log_path = os.path.join(state_dir, ANNOTATION_LOG)
        self._tasks: dict[int, dict[str, Any]] = {}  # task id -> {"data": ..., "annotations": {id: annotation}}
        self._owner: dict[int, int] = {}  # annotation id -> task id
        self._lock = threading.Lock()
        for record in read_jsonl_log(self.log_path):  # drops a line torn by a kill
            self._remember(_event(record))
        self._log = JsonlLog(self.log_path)

    @property
    def tasks_heard(self) -> int:
        return len(self._tasks)

    def apply(self, events: Sequence[AnnotationEvent], target: ChoicesTarget) -> LabelUpdate:
        """Logs the events (synced), then merges the labels of the tasks they touch into the manifest."""
        with self._lock:
            self._log.write([_record(event) for event in events])
            self._log.sync()
            touched = {task for event in events for task in self._remember(event)}
            return self._ingest(sorted(touched), target)

    def catch_up(self, target: ChoicesTarget) -> LabelUpdate:
        """Ingests every task of the log (after a restart: labels logged but not merged when the backend stopped).

        Its rejects are not logged again: `rejects.jsonl` has them from when their webhooks came.
        """
        with self._lock:
            return self._ingest(sorted(self._tasks), target, log_rejects=False)

    def close(self) -> None:
        self._log.close()

    def _remember(self, event: AnnotationEvent) -> list[int]:
        """Applies an event to the tasks; returns the task ids whose votes changed."""
        if event.deleted:
            task_id = self._owner.pop(event.annotation_id, None)
            if task_id is None:
                return []
            self._tasks[task_id]["annotations"].pop(event.annotation_id, None)
            return [task_id]
        task_id = event.task["id"]
        task = self._tasks.setdefault(task_id, {"data": event.task["data"], "annotations": {}})
        task["data"] = event.task["data"]
        task["annotations"][event.annotation_id] = event.annotation
        self._owner[event.annotation_id] = task_id
        return [task_id]

    def _ingest(self, task_ids: Iterable[int], target: ChoicesTarget, log_rejects: bool = True) -> LabelUpdate:
        tasks = [self._export_task(task_id, target) for task_id in task_ids]
        if not tasks:
            return LabelUpdate()
        with tempfile.TemporaryDirectory(dir=self.state_dir, prefix=".ingest-") as folder:
            export = os.path.join(folder, SOURCE_NAME)
            with open(export, "w", encoding="utf-8") as handle:
                json.dump(tasks, handle)
            try:
                summary = ingest(
                    export,
                    self.manifest,
                    target.choices,
                    rejects_path=os.path.join(folder, REJECTS_LOG),
                    export_type="JSON",
                    id_field=self.id_field,
                    image_sources=self.sources,
                )
            except ValueError as error:  # every annotation malformed: ingest refuses the "export" as a whole
                summary = None
                rejects = [{"task_ids": [task["id"] for task in tasks], "reason": str(error)}]
        if summary is not None:
            rejects = summary.rejects
        if rejects and log_rejects:
            now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
            log = JsonlLog(os.path.join(self.state_dir, REJECTS_LOG))
            log.write([{**reject, "rejected_at": now} for reject in rejects])
            log.close()
        return LabelUpdate(summary.added, summary.present, rejects) if summary else LabelUpdate(rejects=rejects)

    def _export_task(self, task_id: int, target: ChoicesTarget) -> dict[str, Any]:
        """The task as a Label Studio JSON export holds it, under the names ingest reads (`label`, `image`)."""
        task = self._tasks[task_id]
        data = {**task["data"], IMAGE_FIELD: task["data"].get(target.image_field)}
        annotations = []
        for annotation in task["annotations"].values():
            results = annotation.get("result")
            if isinstance(results, list):  # anything else stays as it is: ingest rejects the task and says why
                results = [_as_label_result(result, target) for result in results]
            annotations.append({**annotation, "result": results})
        return {"id": task_id, "data": data, "annotations": annotations}


def _as_label_result(result: Any, target: ChoicesTarget) -> Any:
    """The project's classification result under the name ingest reads (`label`); other results unchanged."""
    if isinstance(result, dict) and result.get("from_name") == target.from_name and result.get("type") == "choices":
        return {**result, "from_name": CHOICES_NAME}
    if isinstance(result, dict) and result.get("from_name") == CHOICES_NAME:
        return {**result, "from_name": f"{CHOICES_NAME}:other"}  # another tag named `label` is not the classification
    return result


def _record(event: AnnotationEvent) -> dict[str, Any]:
    if event.deleted:
        return {"deleted": event.annotation_id}
    return {"task": event.task, "annotation": event.annotation}


def _event(record: dict[str, Any]) -> AnnotationEvent:
    if "deleted" in record:
        return AnnotationEvent(int(record["deleted"]))
    return AnnotationEvent(int(record["annotation"]["id"]), record["task"], record["annotation"])
