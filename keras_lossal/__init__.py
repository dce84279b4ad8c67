"""keras-lossal: Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019) for Keras 3.

`kl.LossLearningModel` trains a backbone with a loss-prediction head through
`fit`; `kl.acquisition` scores unlabeled pools; `kl.ActiveLearningLoop` runs the
paper's protocol; `kl.export_for_serving` writes a TF Serving SavedModel. The
TF Serving client and triage job live in `keras_lossal.serving` (extra
`serving`), the Beam transform in `keras_lossal.beam` (extra `beam`).
"""

# First, before TensorFlow loads: the `lossal` command keeps TensorFlow's start-up lines off stderr.
from keras_lossal import _tensorflow_logs  # noqa: F401, I001 - imported for its effect
from keras_lossal import acquisition, backbones, data, losses
from keras_lossal.export import export_for_serving
from keras_lossal.head import LossPredictionHead
from keras_lossal.loop import ActiveLearningLoop
from keras_lossal.model import LossLearningModel
from keras_lossal.preprocessing import ImagePreprocessing

__version__ = "0.1.0"

__all__ = [
    "ActiveLearningLoop",
    "ImagePreprocessing",
    "LossLearningModel",
    "LossPredictionHead",
    "acquisition",
    "backbones",
    "data",
    "export_for_serving",
    "losses",
    "__version__",
]
