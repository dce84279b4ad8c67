"""Names, defaults and validators that the command line and the library share, without TensorFlow.

The one home of facts several layers need: recipe, backbone and optimizer
names, the files of a `lossal train` directory, the image size limits, the
queue selections, the `ModelSpec`, the `TriageSettings` that in-process triage
and Beam share, the unlabeled `Item`, the `Scorer` protocol and the checks
every config runs. It imports only the standard library, so `lossal --help`
reads the same lists the library builds from.

Example:

>>> RECIPE_NAMES
('recommended', 'paper', 'light_joint')
>>> check_integer("epochs", 2.0, minimum=0, integral_floats=True)
2
>>> check_integer("k", 0)
Traceback (most recent call last):
...
ValueError: Expected k to be an integer >= 1. Received: k=0
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "BACKBONE_NAMES",
    "BUDGET_SELECTION",
    "CLASSES_FILE",
    "COMMIT_SECONDS",
    "CONTENT_FIELD",
    "DEFAULT_CANDIDATES_FACTOR",
    "DEFAULT_LABELS_PER_CLASS",
    "DEFAULT_MIN_CANDIDATES",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_READ_THREADS",
    "DEFAULT_RECIPE",
    "DEFAULT_SELECTION",
    "DEFAULT_SELECTION_SEED",
    "IMAGE_EXTENSIONS",
    "EXPERIMENT_FILE",
    "Item",
    "MODEL_FILE",
    "ModelSpec",
    "OPTIMIZER_NAMES",
    "PREPROCESSING_FILE",
    "RECIPE_NAMES",
    "RECOMMENDED_STRATEGY",
    "REJECTS_FILE",
    "SCORER_ATTRIBUTES",
    "SELECTIONS",
    "STATE_FILE",
    "TRIAGE_SELECTIONS",
    "Scorer",
    "TRAINING_FILE",
    "TriageSettings",
    "check_finite_non_negative",
    "check_integer",
    "check_scorer",
    "is_content_hash",
    "labels_are_scarce",
    "trained_items",
]

# The `LossLearningModel` recipes (`keras_lossal.model.RECIPES` holds what each sets), the default first.
RECIPE_NAMES = ("recommended", "paper", "light_joint")
DEFAULT_RECIPE = RECIPE_NAMES[0]
# The built-in backbones, functions of `keras_lossal.backbones` of these names.
BACKBONE_NAMES = ("resnet18_cifar", "small_cnn")
OPTIMIZER_NAMES = ("sgd", "adam")

# What `lossal train` writes and `lossal export` reads beside the model.
MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
CLASSES_FILE = "classes.json"
TRAINING_FILE = "training.json"
# The images that could not be read, one JSON line each (`lossal train`, `lossal run`).
REJECTS_FILE = "rejects.jsonl"
# An experiment's settings, in its output directory (`lossal run`, read by `lossal report`).
EXPERIMENT_FILE = "experiment.json"
# The field of a labeled-set, triage or Label Studio record that holds the SHA-256 of the item's bytes.
CONTENT_FIELD = "sha256"
# A run's resume state in its output directory (an experiment arm's, a triage's).
STATE_FILE = "state.json"
# What `keras.utils.image_dataset_from_directory` reads, minus GIF (the header guard refuses it): the image
# files that triage, Beam, the training readers and the labeled-set manifest pick up from a folder.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# 64 megapixels / 32 MiB: far above any labeling image, far below a decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024

# How triage and Beam pick the labeling queue from the scored items (`keras_lossal.serving.queue.QueueRule`):
# the learning-loss selection (see `keras_lossal.acquisition`), BADGE weighted by predicted loss, plain top-K,
# plain BADGE on a uniform sample of the pool (the benchmarked `badge` strategy's protocol), or TypiClust on a
# uniform sample (the `typiclust` strategy, for small budgets).
SELECTIONS = ("learning_loss_clusters", "learning_loss_badge", "top_k", "badge", "typiclust")
# The budget-aware choice between two of them, like the `budget_switch` strategy: `typiclust` while fewer than
# `labels_per_class` labels per class are labeled, `badge` from there (`TriageSettings.resolved`, before scoring).
BUDGET_SELECTION = "budget_switch"
TRIAGE_SELECTIONS = SELECTIONS + (BUDGET_SELECTION,)
# The recommended strategy (benchmarks/RESULTS.md, "Recommendation check 3"): the first arm of `lossal run` and
# `make demo`, and, as a queue selection, the default of triage and Beam.
RECOMMENDED_STRATEGY = BUDGET_SELECTION
DEFAULT_SELECTION = RECOMMENDED_STRATEGY
# The budget switch's default point, in labeled items per class (the v6 pilots: TypiClust leads to about here).
DEFAULT_LABELS_PER_CLASS = 10
# Candidates kept while scoring, as a multiple of the queue length: memory is O(factor * K), never O(pool).
DEFAULT_CANDIDATES_FACTOR = 10
# The strategies' bounded step: at least this many candidates (`learning_loss_clusters`) or sampled items
# (`budget_switch`); pools up to this size are used whole.
DEFAULT_MIN_CANDIDATES = 10_000
DEFAULT_SELECTION_SEED = 0
# Triage's threads reading and checking items ahead of the scorer (file reads wait on disk, NFS or object stores).
DEFAULT_READ_THREADS = max(2, min(8, os.cpu_count() or 1))
# The longest triage's logs hold scored records in memory: a kill loses at most this much scoring, rescored on resume.
COMMIT_SECONDS = 1.0


def check_integer(
    name: str, value: Any, minimum: int = 1, *, optional: bool = False, integral_floats: bool = False
) -> int | None:
    """Returns `value` as an `int`, or raises `ValueError` naming it, unless it is an integer >= `minimum`.

    Args:
        name: the argument's name, as the message shows it.
        value: the value to check; booleans are refused.
        minimum: the smallest accepted value.
        optional: accept `None` (returned as is).
        integral_floats: accept floats with an integral value (`10.0`), as a size read from a file may be.

    Example:

    >>> check_integer("retrain_every", None, optional=True) is None
    True
    >>> check_integer("seed", -1, minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: Expected seed to be an integer >= 0. Received: seed=-1
    """
    if value is None and optional:
        return None
    accepted = isinstance(value, numbers.Integral) or (
        integral_floats and isinstance(value, numbers.Real) and math.isfinite(value) and int(value) == value
    )
    if isinstance(value, bool) or not accepted or value < minimum:
        suffix = " or None" if optional else ""
        raise ValueError(f"Expected {name} to be an integer >= {minimum}{suffix}. Received: {name}={value!r}")
    return int(value)


def is_content_hash(value: Any) -> bool:
    """Whether `value` is an item's content hash as records carry it: 64 lowercase hex digits (a SHA-256).

    Example:

    >>> is_content_hash("ab" * 32), is_content_hash("AB" * 32), is_content_hash(None)
    (True, False, False)
    """
    return isinstance(value, str) and len(value) == 64 and all(char in "0123456789abcdef" for char in value)


def check_finite_non_negative(name: str, value: Any) -> float:
    """Returns `value` as a `float`, or raises `ValueError` unless it is a finite number >= 0.

    Example:

    >>> check_finite_non_negative("learning_rate", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: Expected learning_rate to be a finite number >= 0. Received: learning_rate=nan
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"Expected {name} to be a finite number >= 0. Received: {name}={value!r}")
    return number


@dataclasses.dataclass
class ModelSpec:
    """How to build and compile a model: the backbone, the optimizer and the head's recipe.

    `keras_lossal.model_factory.build_model` builds it; `lossal train` and every
    run of an experiment use it.

    Args:
        backbone: a name in `BACKBONE_NAMES`, or your own backbone (see
            `keras_lossal.model_factory.backbone_builder`): a `.keras` file or an
            importable factory `"package.module:function"`.
        width: first-stage channels of `resnet18_cifar` (64 in the paper); the
            built-in backbones only.
        optimizer: `"sgd"` (momentum, weight decay: the paper) or `"adam"`.
        learning_rate: initial learning rate.
        momentum: SGD momentum.
        weight_decay: optimizer weight decay. Keras applies it decoupled from
            momentum (`w -= lr * wd * w`); PyTorch's SGD in the reference code adds
            it to the gradient, where momentum 0.9 amplifies it about 10x.
        batch_norm_momentum: moving-average momentum of every BatchNormalization
            layer of the backbone (yours too; `None` leaves them as built); 0.9
            equals PyTorch's default (0.1) used by the reference code, and lets
            short runs on small labeled sets evaluate sensibly.
        recipe: the `LossLearningModel` recipe, a name in `RECIPE_NAMES`;
            the head options below override it when not `None`.
        loss_weight: lambda of `LossLearningModel`.
        margin: xi of `LossLearningModel`.
        detach_after_epoch: stop head-to-backbone gradients from this epoch.
        detach_after_fraction: the same, as a fraction of each cycle's epochs.
        backbone_gradient_scale: factor on the head's gradient into the backbone.
        loss_weight_warmup_epochs: epochs of linear lambda warm-up per cycle.
        pairs: `"disjoint"` or `"all"` ranking pairs.
        normalize_head_inputs: layer-normalise the head's pooled inputs.
        head_units: units of each head branch.

    Example:

    >>> ModelSpec(width=8, recipe="paper").head_options()
    {'recipe': 'paper'}
    >>> ModelSpec(learning_rate=float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: Expected learning_rate to be a finite number >= 0. Received: learning_rate=nan
    """

    backbone: str = BACKBONE_NAMES[0]
    width: int = 16
    optimizer: str = OPTIMIZER_NAMES[0]
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_norm_momentum: float | None = 0.9
    recipe: str = DEFAULT_RECIPE
    loss_weight: float | None = None
    margin: float | None = None
    detach_after_epoch: int | None = None
    detach_after_fraction: float | None = None
    backbone_gradient_scale: float | None = None
    loss_weight_warmup_epochs: int | None = None
    pairs: str | None = None
    normalize_head_inputs: bool | None = None
    head_units: int = 128

    def __post_init__(self):
        # A NaN or negative rate trains to NaN weights without any error; refuse it before anything is built.
        for name in ("learning_rate", "momentum", "weight_decay"):
            check_finite_non_negative(name, getattr(self, name))

    def head_options(self) -> dict[str, Any]:
        """The `LossLearningModel` keyword arguments this spec sets (the recipe and its overrides)."""
        options = {
            "recipe": self.recipe,
            "loss_weight": self.loss_weight,
            "margin": self.margin,
            "detach_after_epoch": self.detach_after_epoch,
            "detach_after_fraction": self.detach_after_fraction,
            "backbone_gradient_scale": self.backbone_gradient_scale,
            "loss_weight_warmup_epochs": self.loss_weight_warmup_epochs,
            "pairs": self.pairs,
            "normalize_head_inputs": self.normalize_head_inputs,
        }
        return {key: value for key, value in options.items() if value is not None}


@dataclasses.dataclass
class Item:
    """One unlabeled item.

    Args:
        item_id: stable identifier (relative path, manifest id, or TFRecord id).
        path: where the item came from (shown in the queue).
        kind: `"image"` (encoded image bytes) or `"example"` (serialized `tf.Example`).
        loader: returns the payload bytes; may raise `OSError`.
        error: a reason the item cannot be read at all (it goes to the failures file).
        extra: manifest fields passed through to the labeling queue.
    """

    item_id: str
    path: str
    kind: str
    loader: Callable[[], bytes] | None = None
    error: str | None = None
    extra: dict | None = None

    def load(self) -> bytes:
        if self.error is not None or self.loader is None:
            raise OSError(self.error or "no loader")
        return self.loader()


@dataclasses.dataclass(frozen=True)
class TriageSettings:
    """How a pool is scored into a labeling queue: the settings `triage` and Beam's `ScorePool` share.

    Validated once, when built; `triage(..., settings=...)` and
    `ScorePool(..., settings=...)` take it whole, or build it from the same
    keyword arguments (`triage(..., top_k=100)`).

    Args:
        top_k: queue length, or `None` for every item at or above `threshold` (triage only).
        threshold: only items with at least this predicted loss, or `None`
            (triage only; a number some loss can reach, `-inf` for none).
        selection: how the queue's `top_k` items are chosen, one of
            `SELECTIONS` (see `keras_lossal.serving.queue`), or `"budget_switch"`
            (the default): `"typiclust"` while fewer than `labels_per_class`
            items per class are labeled, `"badge"` from there, resolved by
            `resolved` before scoring (triage and Beam do it).
        candidates_factor: the diverse selections choose among
            `candidates_factor * top_k` candidates (the highest predicted
            losses; for `"badge"` and `"typiclust"` a uniform sample), the most items held in
            memory with their features.
        seed: the seed of the diverse selections (the same seed, items and
            model: the same queue).
        max_image_pixels: header-declared size limit, or `None` for the
            export's limit, else `DEFAULT_MAX_IMAGE_PIXELS`.
        max_image_bytes: encoded size limit, or `None` likewise.
        labels_per_class: the `"budget_switch"` selection's switch point.

    Example:

    >>> TriageSettings(top_k=100).image_limits({"max_image_bytes": 1024})
    (64000000, 1024)
    >>> TriageSettings(selection="kmeans")
    Traceback (most recent call last):
    ...
    ValueError: Expected selection in ['learning_loss_clusters', 'learning_loss_badge', 'top_k', 'badge', \
'typiclust', 'budget_switch']. Received: selection='kmeans'
    """

    top_k: int | None = 1000
    threshold: float | None = None
    selection: str = DEFAULT_SELECTION
    candidates_factor: int = DEFAULT_CANDIDATES_FACTOR
    seed: int = DEFAULT_SELECTION_SEED
    max_image_pixels: int | None = None
    max_image_bytes: int | None = None
    labels_per_class: int = DEFAULT_LABELS_PER_CLASS

    def __post_init__(self):
        store = functools.partial(object.__setattr__, self)  # frozen: keep the checked values
        store("top_k", check_integer("top_k", self.top_k, optional=True))
        if self.threshold is not None:
            threshold = float(self.threshold) if isinstance(self.threshold, numbers.Real) else math.nan
            if isinstance(self.threshold, bool) or math.isnan(threshold) or threshold == math.inf:
                raise ValueError(
                    "Expected a threshold some predicted loss can reach (a number, or -inf for none). "
                    f"Received: threshold={self.threshold!r}"
                )
            store("threshold", threshold)
        if self.top_k is None and self.threshold is None:
            raise ValueError("Expected top_k and/or threshold; with neither the queue would hold every item.")
        if self.selection not in TRIAGE_SELECTIONS:
            raise ValueError(f"Expected selection in {list(TRIAGE_SELECTIONS)}. Received: selection={self.selection!r}")
        store("labels_per_class", check_integer("labels_per_class", self.labels_per_class, minimum=0))
        store("candidates_factor", check_integer("candidates_factor", self.candidates_factor))
        store("seed", check_integer("seed", self.seed, minimum=0))
        for name in ("max_image_pixels", "max_image_bytes"):
            store(name, check_integer(name, getattr(self, name), optional=True))

    @classmethod
    def of(cls, settings: TriageSettings | None = None, **fields: Any) -> TriageSettings:
        """`settings` with `fields` replaced, or new settings of `fields`; an unknown field is a `TypeError`.

        Example:

        >>> TriageSettings.of(TriageSettings(top_k=5), seed=3).seed
        3
        >>> TriageSettings.of(topk=5)
        Traceback (most recent call last):
        ...
        TypeError: Unknown triage settings ['topk']; expected any of ['top_k', 'threshold', 'selection', \
'candidates_factor', 'seed', 'max_image_pixels', 'max_image_bytes', 'labels_per_class']
        """
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise TypeError(f"Unknown triage settings {unknown}; expected any of {names}")
        if settings is not None and not isinstance(settings, cls):
            raise TypeError(f"Expected settings to be a TriageSettings. Received: {type(settings).__name__}")
        return dataclasses.replace(settings, **fields) if settings is not None else cls(**fields)

    def resolved(self, labeled: int | None, classes: int | None, counted: str = "") -> tuple[TriageSettings, str]:
        """These settings with `"budget_switch"` resolved to `"typiclust"` or `"badge"`, and a line saying why.

        `labeled`: items labeled so far, `classes`: the model's classes (`None`: not known, and then the
        switch takes `"badge"`, its side from `labels_per_class` per class on); `counted`: where the count
        came from, said after it (`" in the --exclude-labeled manifests"`). Other selections are returned
        unchanged, with `""`.

        Example:

        >>> TriageSettings(top_k=20).resolved(40, 10)
        (TriageSettings(top_k=20, threshold=None, selection='typiclust', candidates_factor=10, seed=0, \
max_image_pixels=None, max_image_bytes=None, labels_per_class=10), 'selection budget_switch: 40 labeled \
item(s), 10 classes, switch at 10 per class -> typiclust')
        >>> TriageSettings(top_k=20).resolved(None, 10)[1]
        'selection budget_switch: the number of labeled items is not known -> badge (the switch past 10 per class)'
        >>> TriageSettings(top_k=20, selection="top_k").resolved(None, None)[1]
        ''
        """
        if self.selection != BUDGET_SELECTION:
            return self, ""
        if labeled is None or not classes:
            unknown = "the number of labeled items" if labeled is None else "the number of classes"
            chosen = "badge"
            why = f"{unknown} is not known -> badge (the switch past {self.labels_per_class} per class)"
        else:
            chosen = "typiclust" if labels_are_scarce(labeled, classes, self.labels_per_class) else "badge"
            why = (
                f"{labeled} labeled item(s){counted}, {classes} classes, switch at {self.labels_per_class} per class "
                f"-> {chosen}"
            )
        return dataclasses.replace(self, selection=chosen), f"selection {BUDGET_SELECTION}: {why}"

    def image_limits(self, export: Mapping[str, Any] | Any | None = None) -> tuple[int, int]:
        """`(max_image_pixels, max_image_bytes)`: these settings, else `export`'s, else the defaults.

        `export` is an export config (a mapping) or a `Scorer` (its attributes), or `None`.
        """

        def export_limit(name):
            if export is None:
                return None
            return export.get(name) if isinstance(export, Mapping) else getattr(export, name, None)

        pixels = self.max_image_pixels or export_limit("max_image_pixels") or DEFAULT_MAX_IMAGE_PIXELS
        return int(pixels), int(self.max_image_bytes or export_limit("max_image_bytes") or DEFAULT_MAX_IMAGE_BYTES)


# What a `Scorer` carries besides `score`: the names every caller may read without probing.
SCORER_ATTRIBUTES = ("description", "version", "labels", "max_image_pixels", "max_image_bytes", "example_feature")


@runtime_checkable
class Scorer(Protocol):
    """What triage, Beam's model handler and the Label Studio backend score with.

    `keras_lossal.serving.InProcessScorer` (an exported SavedModel in this
    process) and `ServerScorer` (TF Serving) implement it; so can your own
    class, e.g. a wrapper that counts calls.

    Attributes:
        description: the model without its version (`"saved_model:<base path>"`,
            `"server:<name>"`): what triage's resume check compares.
        version: the model version scored with, or `None` when unknown until answered.
        labels: class names for the records' `label`, or `None`.
        max_image_pixels: the export's header-declared size limit, or `None`.
        max_image_bytes: the export's encoded size limit, or `None`.
        example_feature: the `tf.Example` feature holding the image, or `None`.

    Optional: `concurrent_calls`, how many batches triage may score with it at once (from as many
    threads, so `score` must then be thread-safe); without it, one at a time. `InProcessScorer` has 2.
    """

    description: str
    version: int | None
    labels: Sequence[str] | None
    max_image_pixels: int | None
    max_image_bytes: int | None
    example_feature: str | None

    def score(self, kind: str, payloads: Sequence[bytes]) -> Mapping[str, Any]:
        """Scores a batch of one kind (`"image"` bytes or serialized `"example"`s): at least `predicted_loss`."""
        ...


def check_scorer(scorer: Any) -> Scorer:
    """Returns `scorer`, or raises `TypeError` naming what it lacks of the `Scorer` protocol.

    Example:

    >>> class Half:
    ...     description, version, labels = "half", None, None
    ...     def score(self, kind, payloads): ...
    >>> check_scorer(Half())
    Traceback (most recent call last):
    ...
    TypeError: Expected a Scorer (keras_lossal.contracts.Scorer). Received: Half, without \
['max_image_pixels', 'max_image_bytes', 'example_feature']
    """
    missing = [name for name in SCORER_ATTRIBUTES if not hasattr(scorer, name)]
    if not callable(getattr(scorer, "score", None)):
        missing.insert(0, "score(kind, payloads)")
    if missing:
        raise TypeError(
            f"Expected a Scorer (keras_lossal.contracts.Scorer). Received: {type(scorer).__name__}, without {missing}"
        )
    return scorer


def trained_items(export: Mapping[str, Any] | Any | None) -> int | None:
    """How many items the exported model was trained on (`training.num_items`), or `None` when it does not say.

    `export` is an export config (a mapping) or a `Scorer` with one (`config`). `lossal export` of a
    `lossal train` output records the count; a model exported otherwise does not.

    Example:

    >>> trained_items({"training": {"num_items": 300}}), trained_items({"labels": ["a", "b"]}), trained_items(None)
    (300, None, None)
    """
    config = export if isinstance(export, Mapping) else getattr(export, "config", None)
    count = ((config or {}).get("training") or {}).get("num_items")
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


def labels_are_scarce(labeled: int, classes: int, labels_per_class: int = DEFAULT_LABELS_PER_CLASS) -> bool:
    """Whether `labeled` items are fewer than `labels_per_class` per class of `classes`: the switch's low side.

    The one rule of `strategies.BudgetSwitch` and of `TriageSettings.resolved` (triage and Beam).

    Example:

    >>> labels_are_scarce(99, 10), labels_are_scarce(100, 10), labels_are_scarce(0, 3, labels_per_class=0)
    (True, False, False)
    """
    return labeled < labels_per_class * classes
