"""Serving: a TF Serving client, scorers and the triage job that builds labeling queues.

Importing it (or `keras_lossal.serving.client`) loads NumPy but not TensorFlow
or Keras: TensorFlow loads when something needs it (an `InProcessScorer`, a
gRPC client, a TFRecord or object-store read). The names are imported eagerly
because the submodule `triage` and the function `triage` share a name, which
a lazy (PEP 562) attribute would let an `import keras_lossal.serving.triage`
overwrite.

Example:

>>> from keras_lossal.serving import TFServingClient, InProcessScorer, read_items, triage
>>> result = triage(read_items("unlabeled/"), InProcessScorer("models/lossal"), "triage_out")  # doctest: +SKIP
"""

from keras_lossal.contracts import Scorer, TriageSettings
from keras_lossal.serving.client import ServingError, TFServingClient
from keras_lossal.serving.readers import Item, UnsafePathError, read_items
from keras_lossal.serving.scorers import InProcessScorer, InvalidInputError, ServerScorer
from keras_lossal.serving.triage import TopK, TriageResult, triage

__all__ = [
    "InProcessScorer",
    "InvalidInputError",
    "Item",
    "Scorer",
    "ServerScorer",
    "ServingError",
    "TFServingClient",
    "TopK",
    "TriageResult",
    "TriageSettings",
    "UnsafePathError",
    "read_items",
    "triage",
]
