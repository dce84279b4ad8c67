"""Live active learning inside Label Studio: an ML backend that predicts by learning loss and retrains itself.

`lossal labelstudio backend` runs it. Label Studio asks it for predictions
(`/predict`): each task's image, read as `lossal ingest` reads task images, is
scored with the exported model (in-process or through TF Serving) and comes
back as the project's choice with `score` = the predicted loss, so the Data
Manager sorts the tasks worth labeling first. Annotations reach it through
Label Studio's webhook (`/webhook`) and are merged into the labeled-set
manifest by ingest's rules before the webhook answers; with `retrain_every`,
enough new labels start a round of `lossal train` + `lossal export` in the
background, and predictions switch to the new version once it is published.

Modules: `config` (settings; no TensorFlow, what the CLI reads), `protocol`
(the request and answer shapes), `predictor`, `labels`, `retraining`,
`service` (the endpoints' behaviour) and `app` (Starlette + uvicorn).

Importing this package loads neither TensorFlow nor the web framework; `serve`
does (install the `labelstudio` extra: `pip install keras-lossal[labelstudio]`).

Example:

>>> from keras_lossal.labelstudio_backend import BackendConfig, serve
>>> config = BackendConfig(model_dir="models/lossal", document_root="/srv", manifest="labeled.jsonl",
...                        state_dir="backend_state", retrain_every=50)  # doctest: +SKIP
>>> serve(config)  # doctest: +SKIP
"""

from __future__ import annotations

from keras_lossal.labelstudio_backend.config import BackendConfig

__all__ = ["BackendConfig", "serve"]


def serve(config: BackendConfig, ready=None) -> None:
    """Runs the ML backend over HTTP until interrupted (see `keras_lossal.labelstudio_backend.app.serve`)."""
    from keras_lossal.labelstudio_backend.app import serve as serve_app

    serve_app(config, ready)
