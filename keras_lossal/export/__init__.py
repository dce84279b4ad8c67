"""Export a `LossLearningModel` as a SavedModel that TensorFlow Serving runs.

The artifact follows TF Serving's layout, `<base_path>/<integer version>/`,
and carries several signatures over one set of weights (see
`keras_lossal.export.signatures`): `serving_default` (model input tensor),
`score_image_bytes` (encoded images, decoded and preprocessed in the graph),
`score_examples` (`tf.Example`s), and TF Serving's `classify` / `regress`.

`assets.extra/lossal.json` records the preprocessing, labels, task and
signature contracts; `assets.extra/tf_serving_warmup_requests` holds warmup
requests for every signature.

Modules: `savedmodel` (the `export_for_serving` job), `signatures` (the
traced serving functions and their checks), `config` (`lossal.json`),
`warmup` (warmup requests), `versions` (version directories and publishing).
"""

from keras_lossal.export.config import EXPORT_CONFIG_FILE, read_export_config
from keras_lossal.export.config import EXPORT_FORMAT_VERSION as EXPORT_FORMAT_VERSION
from keras_lossal.export.savedmodel import TASKS as TASKS
from keras_lossal.export.savedmodel import export_for_serving
from keras_lossal.export.signatures import CLASSIFY_METHOD_NAME as CLASSIFY_METHOD_NAME
from keras_lossal.export.signatures import EXAMPLE_ENCODINGS as EXAMPLE_ENCODINGS
from keras_lossal.export.signatures import PREDICT_METHOD_NAME as PREDICT_METHOD_NAME
from keras_lossal.export.signatures import REGRESS_METHOD_NAME as REGRESS_METHOD_NAME
from keras_lossal.export.versions import resolve_version_dir
from keras_lossal.export.warmup import WARMUP_FILE
from keras_lossal.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS

# The `NAME as NAME` imports keep the other constants of the former single module importable from here.
__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "EXPORT_CONFIG_FILE",
    "WARMUP_FILE",
    "export_for_serving",
    "read_export_config",
    "resolve_version_dir",
]
