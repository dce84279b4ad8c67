"""Scale-out pool scoring on Apache Beam (`pip install 'keras-lossal[beam]'`).

`ScorePool` reads unlabeled items (image files by glob, TFRecords of
`tf.Example`, JSONL manifests), scores them with an exported SavedModel
through `apache_beam.ml.inference.RunInference`, and returns every score,
the global top-K labeling queue and the items that could not be scored.
The same pipeline runs on DirectRunner, Flink, Spark or Dataflow; see
`docs/beam.md`.
"""

try:
    import apache_beam  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised by a test that hides apache_beam
    raise ImportError(
        "keras_lossal.beam needs Apache Beam, which is an optional dependency. "
        "Install it with: pip install 'keras-lossal[beam]'"
    ) from error

from keras_lossal.beam.pipeline import (
    LossalModelHandler,
    ReadPool,
    ScorePool,
    WriteScorePool,
    score_pool,
)

__all__ = ["LossalModelHandler", "ReadPool", "ScorePool", "WriteScorePool", "score_pool"]
