"""The labeling side: what is labeled, and the Label Studio formats and API that people label through.

- `manifest`: the labeled-set manifest (`id, path, label`, the `sha256` of the
  bytes), the single source of truth of what is labeled; `keras_lossal.data`
  reads it for training (layer "data" in `scripts/check_layers.py`).
- `labelstudio`: the label config, image URLs, the export readers and the
  majority rule that `lossal ingest` applies to the manifest.
- `labelstudio_api`: `push` and `pull` through Label Studio's REST API
  (extra `labelstudio`).

The last two sit in the production layer, beside `serving` and
`labelstudio_backend`, which use them. Importing this package imports none of
its modules, and no TensorFlow.
"""
