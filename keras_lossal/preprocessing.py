"""Preprocessing shared by training input pipelines and the serving graph: images, or inputs used as they are.

One object describes how raw pixels become model input (`ImagePreprocessing`);
`IdentityPreprocessing` is its counterpart for features and signals. Training pipelines
map it over `tf.data`; `export_for_serving` builds the same ops into the
SavedModel and records the object's config beside it, so serving cannot
silently differ from training.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = [
    "IDENTITY",
    "IdentityPreprocessing",
    "ImagePreprocessing",
    "infer_preprocessing",
    "preprocessing_from_config",
]

# The `preprocessing=` shorthand for "use the inputs as they are" (any rank).
IDENTITY = "identity"

# Raw pixel dtypes whose range is known, so the scale to [0, 1] can be inferred.
PIXEL_SCALES = {np.dtype(np.uint8): 1.0 / 255.0, np.dtype(np.uint16): 1.0 / 65535.0}


@dataclasses.dataclass(frozen=True)
class ImagePreprocessing:
    """Resize (when needed) and normalise images: `((pixels * scale) - mean) / std`.

    Args:
        height: model input height.
        width: model input width.
        channels: model input channels (1 = grayscale, 3 = RGB).
        scale: multiplier applied to raw pixel values first (1/255 for uint8).
        mean: per-channel mean subtracted after scaling (one value or one per channel).
        std: per-channel standard deviation divided by after subtracting the mean.

    Example:

    >>> import numpy as np
    >>> prep = ImagePreprocessing(2, 2, 1, mean=(0.5,), std=(0.5,))
    >>> prep(np.full((1, 2, 2, 1), 255, np.uint8)).numpy().ravel().tolist()
    [1.0, 1.0, 1.0, 1.0]
    """

    height: int
    width: int
    channels: int
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if min(self.height, self.width, self.channels) <= 0:
            raise ValueError(
                "Expected positive height, width and channels. Received: "
                f"height={self.height}, width={self.width}, channels={self.channels}"
            )
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) not in (1, self.channels):
                raise ValueError(f"Expected `{name}` to have 1 or {self.channels} values. Received: {name}={value}")
            object.__setattr__(self, name, value)
        if any(v <= 0 for v in self.std):
            raise ValueError(f"Expected std > 0. Received: std={self.std}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def __call__(self, images) -> tf.Tensor:
        """Maps raw images `[..., H0, W0, C]` (any numeric dtype) to float32 model input."""
        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        if images.shape[-3:-1] != (self.height, self.width):
            images = tf.image.resize(images, (self.height, self.width))
        images = images * self.scale
        return (images - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)

    def describe(self) -> str:
        """What the preprocessing does, in one line (for logs).

        Example:

        >>> ImagePreprocessing(28, 28, 1, mean=(0.286,), std=(0.353,)).describe()
        'x / 255, then (x - 0.286) / 0.353, at 28x28x1'
        """
        steps = []
        if self.scale != 1.0:
            divisor = 1.0 / self.scale
            steps.append(f"x / {divisor:.6g}" if abs(divisor - round(divisor)) < 1e-6 else f"x * {self.scale:.6g}")
        if any(self.mean) or any(s != 1.0 for s in self.std):
            mean, std = (", ".join(f"{v:.6g}" for v in values) for values in (self.mean, self.std))
            steps.append(
                f"(x - {mean}) / {std}" if len(self.mean) == len(self.std) == 1 else f"(x - [{mean}]) / [{std}]"
            )
        return ", then ".join(steps or ["x unchanged"]) + f", at {self.height}x{self.width}x{self.channels}"

    def get_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImagePreprocessing:
        return cls(**{**config, "mean": tuple(config["mean"]), "std": tuple(config["std"])})

    def to_json(self) -> str:
        return json.dumps(self.get_config(), sort_keys=True)


def infer_preprocessing(images, name: str = "images") -> ImagePreprocessing:
    """The preprocessing raw `images` `(N, H, W, C)` get when none is given, decided by their dtype.

    uint8 pixels are divided by 255 and uint16 by 65535; float inputs are taken as already scaled and
    left unchanged (standardised data stays standardised). Other dtypes are ambiguous and refused.

    Args:
        images: the raw images (an array with `.dtype` and `.shape`).
        name: what to call them in an error.

    Example:

    >>> import numpy as np
    >>> infer_preprocessing(np.zeros((2, 4, 4, 1), np.uint8)).scale == 1 / 255
    True
    >>> infer_preprocessing(np.zeros((2, 4, 4, 3), np.float32)).describe()
    'x unchanged, at 4x4x3'
    """
    dtype = np.dtype(images.dtype)
    height, width, channels = (int(size) for size in images.shape[1:])
    if dtype.kind == "f":
        scale = 1.0
    elif dtype in PIXEL_SCALES:
        scale = PIXEL_SCALES[dtype]
    else:
        raise ValueError(
            f"Expected uint8 or uint16 pixels, or float inputs, to infer the preprocessing of `{name}`. Received "
            f"dtype {dtype}. Pass preprocessing=ImagePreprocessing({height}, {width}, {channels}, scale=...) "
            "(scale=1/255 for 0-255 pixel values, 1.0 for inputs already scaled), or cast the images."
        )
    return ImagePreprocessing(height, width, channels, scale=scale)


@dataclasses.dataclass(frozen=True)
class IdentityPreprocessing:
    """Inputs used as they are, cast to float32: the preprocessing of non-image data (features, signals).

    Args:
        input_shape: the shape of one item, e.g. `(20,)` for 20 tabular features or
            `(128, 1)` for a one-channel signal of 128 samples.

    Example:

    >>> import numpy as np
    >>> prep = IdentityPreprocessing((3,))
    >>> prep(np.array([[1, 2, 3]], np.int64)).numpy().tolist(), prep.describe()
    ([[1.0, 2.0, 3.0]], 'x unchanged, input (3,)')
    >>> preprocessing_from_config(prep.get_config()) == prep
    True
    """

    input_shape: tuple[int, ...]

    def __post_init__(self):
        shape = tuple(int(size) for size in self.input_shape)
        if not shape or min(shape) <= 0:
            raise ValueError(f"Expected a non-empty input_shape of positive sizes. Received: {self.input_shape}")
        object.__setattr__(self, "input_shape", shape)

    def __call__(self, inputs) -> tf.Tensor:
        """`inputs` `(batch, *input_shape)` as float32."""
        return tf.cast(tf.convert_to_tensor(inputs), tf.float32)

    def describe(self) -> str:
        return f"x unchanged, input {self.input_shape}"

    def get_config(self) -> dict[str, Any]:
        # `kind` tells it apart from an ImagePreprocessing config, which has no such key.
        return {"kind": IDENTITY, "input_shape": list(self.input_shape)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> IdentityPreprocessing:
        return cls(tuple(config["input_shape"]))

    def to_json(self) -> str:
        return json.dumps(self.get_config(), sort_keys=True)


def preprocessing_from_config(config: dict[str, Any]) -> ImagePreprocessing | IdentityPreprocessing:
    """The preprocessing a `get_config()` (or a `preprocessing.json`) describes, image or identity."""
    if config.get("kind") == IDENTITY:
        return IdentityPreprocessing.from_config(config)
    return ImagePreprocessing.from_config(config)
