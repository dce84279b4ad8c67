"""Predictions for Label Studio tasks: each task's image read under the image guards, scored, one answer per task.

A task whose image cannot be read (a missing file, not an image, a URL outside
the document root or of a scheme not allowed, too large) gets an error entry
of its own (`protocol.task_error`) and the others are predicted: the same
checks as triage (`serving.readers.precheck`) and ingest (`labelstudio.ImageSources`),
and the same scoring step (`serving.scorers.score_isolating`, which pins a
refusal of the model on the single item).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from keras_lossal.contracts import Item
from keras_lossal.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from keras_lossal.labeling.labelstudio import ImageSources, RefusedImage
from keras_lossal.labelstudio_backend.protocol import ChoicesTarget, prediction, task_error
from keras_lossal.serving.labeling import prediction_model_version
from keras_lossal.serving.readers import precheck, read_file
from keras_lossal.serving.scorers import ServerScorer, score_isolating

__all__ = ["ImageLimits", "Predictor", "ServedModel", "read_url"]

HTTP_SCHEMES = ("http", "https")


class ServedModel:
    """The scorer predictions use now; a retrained version replaces it whole, between two requests' batches.

    Each request takes the scorer once (`current`), so all its tasks carry one version.

    Args:
        scorer: an `InProcessScorer` or a `ServerScorer`.
    """

    def __init__(self, scorer):
        self._scorer = scorer
        self._lock = threading.Lock()

    def current(self):
        with self._lock:
            return self._scorer

    def swap(self, scorer) -> None:
        with self._lock:
            self._scorer = scorer

    def version(self) -> int | None:
        """The version answering now: the in-process export's, or what TF Serving says it serves."""
        scorer = self.current()
        if isinstance(scorer, ServerScorer) and scorer.version is None:
            return scorer.client.served_version()
        return scorer.version

    def version_name(self) -> str:
        """The version as Label Studio shows it (`/setup`'s `model_version`)."""
        return prediction_model_version(self.current().description, self.version())


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """How task images are read: the size guards and the download timeout of http(s) images."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    timeout: float = 10.0


class Predictor:
    """Turns a `/predict` request's tasks into one `results` entry per task.

    Args:
        served: the model to score with.
        sources: which image URLs are read (as `lossal ingest` accepts them).
        limits: image guards.
        batch_size: tasks per model call (a batch's images are in memory at once).

    Example:

    >>> predictor = Predictor(ServedModel(InProcessScorer("models/lossal")), ImageSources("/srv"), ImageLimits())  # doctest: +SKIP
    >>> predictor.predict(tasks, choices_target(label_config), deadline=time.monotonic() + 60)  # doctest: +SKIP
    """

    def __init__(self, served: ServedModel, sources: ImageSources, limits: ImageLimits, batch_size: int = 32):
        self.served, self.sources, self.limits, self.batch_size = served, sources, limits, int(batch_size)

    def predict(self, tasks: Sequence[Any], target: ChoicesTarget, deadline: float) -> list[dict[str, Any]]:
        """One entry per task, in order: a prediction, or an error when the task alone failed (or time ran out)."""
        scorer = self.served.current()
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        for start in range(0, len(tasks), self.batch_size):
            if time.monotonic() > deadline:
                for position in range(start, len(tasks)):
                    results[position] = task_error(_task_id(tasks[position]), "not predicted: out of time (ask again)")
                break
            batch = []
            for position in range(start, min(start + self.batch_size, len(tasks))):
                payload, failure = precheck(self._item(tasks[position], position, target), *self._guards(scorer))
                if failure is not None:
                    results[position] = task_error(_task_id(tasks[position]), failure["reason"])
                else:
                    batch.append((position, payload))
            self._score(scorer, batch, tasks, target, results)
        return results

    def _score(self, scorer, batch: list[tuple[int, bytes]], tasks, target: ChoicesTarget, results: list) -> None:
        if not batch:
            return
        items = [(Item(str(position), "", "image"), payload) for position, payload in batch]
        scored, failed = score_isolating(scorer, "image", items, scorer.labels)
        for record in failed:
            position = int(record["id"])
            results[position] = task_error(_task_id(tasks[position]), record["reason"])
        for record in scored:
            position = int(record["id"])
            results[position] = _answer(record, tasks[position], target, scorer.description)

    def _guards(self, scorer) -> tuple[int, int]:
        """`(max_pixels, max_bytes)`: the tighter of the export's limits and the backend's."""
        pixels = min(self.limits.max_pixels, scorer.max_image_pixels or self.limits.max_pixels)
        return pixels, min(self.limits.max_bytes, scorer.max_image_bytes or self.limits.max_bytes)

    def _item(self, task: Any, position: int, target: ChoicesTarget) -> Item:
        """The task's image as an `Item` whose loader reads it (or whose `error` says why it cannot be read)."""
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            return Item(str(position), "", "image", error="malformed task: expected an object with `data`")
        url = task["data"].get(target.image_field)
        if not isinstance(url, str) or not url:
            return Item(str(position), "", "image", error=f"task has no image URL in data.{target.image_field}")
        try:
            location = self.sources.path(url)
        except (RefusedImage, ValueError) as refused:
            return Item(str(position), url, "image", error=str(refused))
        scheme = location.split("://", 1)[0].lower() if "://" in location else ""
        if scheme in HTTP_SCHEMES:
            return Item(str(position), url, "image", functools.partial(read_url, location, self.limits))
        return Item(str(position), url, "image", functools.partial(read_file, location, self.limits.max_bytes))


def _answer(record: dict, task: dict, target: ChoicesTarget, description: str) -> dict[str, Any]:
    label = record.get("label")
    if label is None:
        return task_error(task.get("id"), "the model has no classes (exported without labels?)")
    if label not in target.choices:
        return task_error(
            task.get("id"),
            f"predicted class {label!r} is not a choice of the project (choices: {list(target.choices)})",
        )
    return prediction(
        target, label, record["predicted_loss"], prediction_model_version(description, record.get("model_version"))
    )


def _task_id(task: Any) -> Any:
    return task.get("id") if isinstance(task, dict) else None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect could lead anywhere (file://, an internal host): refused, the 3xx is the error


_OPENER = urllib.request.build_opener(_NoRedirects)


def read_url(url: str, limits: ImageLimits) -> bytes:
    """An http(s) image's bytes: no redirects, at most `limits.max_bytes`, within `limits.timeout`; `OSError` else."""
    try:
        with _OPENER.open(urllib.request.Request(url, method="GET"), timeout=limits.timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                raise OSError(f"file too large: {declared} bytes > max_image_bytes={limits.max_bytes}")
            data = response.read(limits.max_bytes + 1)
    except urllib.error.HTTPError as error:
        raise OSError(f"HTTP {error.code} from {url}") from None
    except (urllib.error.URLError, TimeoutError) as error:
        raise OSError(f"cannot download {url}: {getattr(error, 'reason', error)}") from None
    if len(data) > limits.max_bytes:
        raise OSError(f"file too large: more than max_image_bytes={limits.max_bytes} bytes")
    return data
