"""Scorers for triage: in-process from a SavedModel, or through TF Serving.

`InProcessScorer` and `ServerScorer` implement the `keras_lossal.contracts.Scorer`
protocol, which triage, Beam's model handler and the Label Studio backend score
with. A scorer maps a list of payloads (encoded images or serialized
`tf.Example`s) to NumPy outputs by name (`predicted_loss`, `probabilities`,
`class_id`), plus `model_version` (`records.MODEL_VERSION`): per row, the
model version that computed it. Its `description` names the model without
the version (what scores depend on besides it) and its `version` is the
version it is fixed to (`None`: whatever the server serves). It raises `InvalidInputError` when the server/graph refuses the
batch's content (a corrupt image: triage then isolates the bad item), and
lets transient `ServingError`s (unavailable, timeout) through.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from keras_lossal.records import MODEL_VERSION, failure_record, non_finite_reason, scored_record
from keras_lossal.serving.client import RequestTooLargeError, ServingError, TFServingClient

if TYPE_CHECKING:
    from keras_lossal.contracts import Item

__all__ = [
    "InProcessScorer",
    "InvalidInputError",
    "KEPT_OUTPUTS",
    "MissingOutputError",
    "ServerScorer",
    "SIGNATURE_BY_KIND",
    "error_cause",
    "score_isolating",
]

SIGNATURE_BY_KIND = {"image": "score_image_bytes", "example": "score_examples"}
_INVALID_CODES = ("INVALID_ARGUMENT", "HTTP 400")


class InvalidInputError(ValueError):
    """The model refused the content of a batch (e.g. an image it cannot decode)."""


class MissingOutputError(ValueError):
    """The model does not return an output the caller needs (an export older than that output, or another task)."""

    def __init__(self, missing: Sequence[str], available: Sequence[str]):
        super().__init__(
            f"Expected the model's signature to return {sorted(missing)}; it returns {sorted(available)}. An export "
            "written before keras-lossal served `embedding` lacks it (export the model again), and only a "
            "classifier returns `probabilities`."
        )
        self.missing = list(missing)


# The record key under which `score_isolating` hands on the outputs named by `keep` (never written to a file).
KEPT_OUTPUTS = "kept_outputs"


# Lines TensorFlow puts before an op's message (a header, where the node was defined); `[[{{node ...}}]]` follows it.
_WRAPPER_LINES = ("Graph execution error", "Detected at node", 'File "', "<stack traces unavailable>")
_OP_SUFFIX = re.compile(r"\s*(\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\])")


def error_cause(message: str, limit: int = 500) -> str:
    """The op's own message inside a TensorFlow error (e.g. `Invalid PNG data, size 100`), on one line.

    Example:

    >>> error_cause("Graph execution error:\\n\\nDetected at node D defined at (most recent call last):\\n"
    ...             '  File "x.py", line 1, in f\\n\\nInvalid PNG data, size 100\\n\\t [[{{node D}}]]')
    'Invalid PNG data, size 100'
    """
    lines = [line.strip() for line in message.splitlines()]
    start = max((number + 1 for number, line in enumerate(lines) if line.startswith(_WRAPPER_LINES)), default=0)
    cause = []
    for line in lines[start:]:
        if line.startswith("[["):
            break
        cause.append(line)
    text = " ".join(" ".join(cause).split())
    text = _OP_SUFFIX.sub("", text).strip() or " ".join(message.split()) or "no message"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _signature_for(kind: str) -> str:
    if kind not in SIGNATURE_BY_KIND:
        raise ValueError(f"Expected item kind in {sorted(SIGNATURE_BY_KIND)}. Received: kind={kind!r}")
    return SIGNATURE_BY_KIND[kind]


class InProcessScorer:
    """Runs an exported SavedModel in this process (no server needed).

    Loads with `tf.saved_model.load`, which restores the traced graph only: no
    Keras deserialisation, so no arbitrary code from the artifact is run.

    Args:
        model_dir: a TF Serving base path (highest integer version is used) or
            a version directory written by `export_for_serving`.
        version: a specific version under a base path (or beside a version directory).

    Attributes:
        version: the version scored with (the version directory's name).
        description: `"saved_model:<base path>"`, the model without its version; the base path is absolute
            with symlinks resolved, so the same model typed two ways (`../models/lossal`, `/srv/models/lossal`)
            is one model to triage's resume check.

        concurrent_calls: how many batches triage scores with it at once (2). The model's ops share one
            thread pool, and two calls in flight keep it busier than one: on 2 CPU cores, 1.2x the
            throughput of calls one after another (`benchmarks/RESULTS.md`, issue 25).

    Example:

    >>> scorer = InProcessScorer("models/lossal")  # doctest: +SKIP
    >>> scorer.score("image", [open("cat.png", "rb").read()])["predicted_loss"]  # doctest: +SKIP
    """

    concurrent_calls = 2

    def __init__(self, model_dir: str, version: int | None = None):
        import tensorflow as tf

        from keras_lossal.export import read_export_config, resolve_version_dir

        version_dir = resolve_version_dir(model_dir, version)
        self.version_dir = version_dir if "://" in version_dir else os.path.realpath(version_dir)
        self.version = int(os.path.basename(self.version_dir))  # resolve_version_dir only returns integer names
        self.config = read_export_config(self.version_dir)
        self.labels = self.config.get("labels")
        self.max_image_pixels = self.config.get("max_image_pixels")
        self.max_image_bytes = self.config.get("max_image_bytes")
        self.example_feature = self.config.get("example_feature")
        self._loaded = tf.saved_model.load(self.version_dir)
        self._signatures = {}
        self.description = f"saved_model:{os.path.dirname(self.version_dir)}"

    def score(self, kind: str, payloads: Sequence[bytes]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        function, input_name = self._signature(_signature_for(kind))
        try:
            outputs = function(**{input_name: tf.constant(list(payloads), tf.string)})
        except tf.errors.InvalidArgumentError as error:
            raise InvalidInputError(error_cause(error.message)) from None
        results = {key: value.numpy() for key, value in outputs.items()}
        results[MODEL_VERSION] = np.full(len(payloads), self.version, np.int64)
        return results

    def _signature(self, name: str):
        """The signature's concrete function and its one input's name, looked up once per signature."""
        if name not in self._signatures:
            if name not in self._loaded.signatures:
                raise ValueError(
                    f"The export at {self.version_dir!r} has no {name!r} signature (exported without "
                    f"preprocessing?); available: {sorted(self._loaded.signatures)}"
                )
            function = self._loaded.signatures[name]
            (input_name,) = function.structured_input_signature[1].keys()
            self._signatures[name] = (function, input_name)
        return self._signatures[name]


class ServerScorer:
    """Scores through TF Serving with a `TFServingClient` (gRPC or REST).

    Args:
        client: the client; its signature is overridden per item kind.
        labels: class names (the server does not send them with Predict).

    Example:

    >>> client = TFServingClient("localhost:8500", "lossal")  # doctest: +SKIP
    >>> scorer = ServerScorer(client)  # doctest: +SKIP
    """

    def __init__(self, client: TFServingClient, labels: Sequence[str] | None = None):
        self.client = client
        self.labels = list(labels) if labels is not None else None
        self.max_image_pixels = None
        self.max_image_bytes = None
        self.example_feature = None  # not served: TFRecord items' images are named by LabelStudioOptions
        # What the scores depend on (not the protocol); the version is checked per answer (triage's resume rule).
        self.description = f"server:{client.model_name}"
        self.version = client.version

    def score(self, kind: str, payloads: Sequence[bytes]) -> dict[str, np.ndarray]:
        signature = _signature_for(kind)
        try:
            prediction = self.client.predict(list(payloads), signature=signature)
        except RequestTooLargeError as error:
            raise InvalidInputError(str(error)) from None  # triage splits the batch down to the large item
        except ServingError as error:
            if error.code in _INVALID_CODES:
                raise InvalidInputError(error_cause(error.cause)) from None
            raise
        return {**prediction.outputs, MODEL_VERSION: np.array(prediction.model_versions, dtype=object)}


def score_isolating(
    scorer, kind: str, batch: list[tuple[Item, bytes]], labels: Sequence[str] | None, keep: Sequence[str] = ()
) -> tuple[list[dict], list[dict]]:
    """Scores `batch` of `(item, payload)`; when the model refuses it, splits it to pin the refusal on single items.

    The one scoring step of triage and of the Beam model handler. Returns
    `(scored, failed)` records (`keras_lossal.records`): an item the model
    refuses fails alone, an item scored NaN/inf is a failure
    (`non_finite_reason`), and a server-side `ServingError` fails the whole
    batch as retryable, with the server's `code`.

    Args:
        scorer: anything with `score(kind, payloads)`, e.g. an `InProcessScorer` or `ServerScorer`.
        kind: the items' kind (`"image"` or `"example"`), the same for the whole batch.
        batch: the items and their payloads.
        labels: class names for the records' `label`, or `None`.
        keep: scorer outputs to hand on with each scored record, exactly as the scorer returned them
            (NumPy rows under `record[KEPT_OUTPUTS][name]`; the caller takes them off before writing the
            record). An output the scorer does not return raises `MissingOutputError`.
    """
    try:
        outputs = scorer.score(kind, [payload for _, payload in batch])
    except InvalidInputError as error:
        if len(batch) == 1:
            return [], [failure_record(batch[0][0], f"rejected by model: {error}")]
        middle = len(batch) // 2
        scored_a, failed_a = score_isolating(scorer, kind, batch[:middle], labels, keep)
        scored_b, failed_b = score_isolating(scorer, kind, batch[middle:], labels, keep)
        return scored_a + scored_b, failed_a + failed_b
    except ServingError as error:
        # Not the items' fault (their own faults arrive as InvalidInputError): a re-run retries them.
        kind_of_failure = "timeout" if error.is_timeout else "server error"
        failures = [failure_record(item, f"{kind_of_failure}: {error}", retryable=True) for item, _ in batch]
        return [], [{**failure, "code": error.code} for failure in failures]
    if len(outputs["predicted_loss"]) != len(batch):
        raise RuntimeError(f"Scorer returned {len(outputs['predicted_loss'])} scores for {len(batch)} items")
    missing = [name for name in keep if name not in outputs]
    if missing:
        raise MissingOutputError(missing, sorted(outputs))
    scored, failed = [], []
    for row, (item, _) in enumerate(batch):
        record = scored_record(item, outputs, row, labels)
        if math.isfinite(record["predicted_loss"]):
            if keep:
                record[KEPT_OUTPUTS] = {name: np.asarray(outputs[name][row]) for name in keep}
            scored.append(record)
        else:
            failed.append(failure_record(item, non_finite_reason(record["predicted_loss"])))
    return scored, failed
