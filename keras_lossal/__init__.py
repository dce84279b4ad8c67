"""keras-lossal: Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019) for Keras 3.

`kl.LossLearningModel` trains a backbone with a loss-prediction head through
`fit`; `kl.acquisition` scores unlabeled pools; `kl.ActiveLearningLoop` runs the
paper's protocol; `kl.export_for_serving` writes a TF Serving SavedModel. The
TF Serving client and triage job live in `keras_lossal.serving` (extra
`serving`), the Beam transform in `keras_lossal.beam` (extra `beam`).

Names load on first use (PEP 562), so `import keras_lossal.serving.client`
or `lossal --help` does not pay for TensorFlow and Keras.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it (a submodule when the name is the module itself).
_LAZY_NAMES = {
    "ActiveLearningLoop": "keras_lossal.loop",
    "ImagePreprocessing": "keras_lossal.preprocessing",
    "LoopConfig": "keras_lossal.loop",
    "LossLearningModel": "keras_lossal.model",
    "LossPredictionHead": "keras_lossal.head",
    "export_for_serving": "keras_lossal.export",
    "acquisition": "keras_lossal.acquisition",
    "backbones": "keras_lossal.backbones",
    "data": "keras_lossal.data",
    "losses": "keras_lossal.losses",
}

__all__ = [
    "ActiveLearningLoop",
    "ImagePreprocessing",
    "LoopConfig",
    "LossLearningModel",
    "LossPredictionHead",
    "acquisition",
    "backbones",
    "data",
    "export_for_serving",
    "losses",
    "__version__",
]

if TYPE_CHECKING:
    from keras_lossal import acquisition, backbones, data, losses
    from keras_lossal.export import export_for_serving
    from keras_lossal.head import LossPredictionHead
    from keras_lossal.loop import ActiveLearningLoop, LoopConfig
    from keras_lossal.model import LossLearningModel
    from keras_lossal.preprocessing import ImagePreprocessing


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        module = importlib.import_module(_LAZY_NAMES[name])
        value = module if module.__name__.endswith(f".{name}") else getattr(module, name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # any submodule, e.g. `kl.export`
    else:
        raise AttributeError(f"module 'keras_lossal' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
