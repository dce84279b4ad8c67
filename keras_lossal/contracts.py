"""Names, defaults and validators that the command line and the library share, without TensorFlow.

The one home of facts several layers need: recipe, backbone and optimizer
names, the files of a `lossal train` directory, the image size limits, the
`ModelSpec` and the checks every config runs. It imports only the standard
library, so `lossal --help` reads the same lists the library builds from.

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
import math
import numbers
from typing import Any

__all__ = [
    "BACKBONE_NAMES",
    "CLASSES_FILE",
    "CONTENT_FIELD",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_RECIPE",
    "EXPERIMENT_FILE",
    "MODEL_FILE",
    "ModelSpec",
    "OPTIMIZER_NAMES",
    "PREPROCESSING_FILE",
    "RECIPE_NAMES",
    "REJECTS_FILE",
    "TRAINING_FILE",
    "check_finite_non_negative",
    "check_integer",
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
# The field of a labeled-set or Label Studio record that holds the SHA-256 of the item's bytes.
CONTENT_FIELD = "sha256"

# 64 megapixels / 32 MiB: far above any labeling image, far below a decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024


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
