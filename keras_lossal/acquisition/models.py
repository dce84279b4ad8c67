"""What acquisition needs from a model: class outputs, embeddings, an MC-dropout twin.

Works for plain Keras classifiers and for `LossLearningModel` (whose
`"output"` and `backbone` are used).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_lossal.outputs import graph_model, outputs_are_probabilities
from keras_lossal.outputs import has_graph as _has_graph

__all__ = [
    "graph_model",
    "classifier_outputs",
    "outputs_are_probabilities",
    "embedding_model",
    "loss_and_embedding",
    "mc_dropout_model",
]

_STOCHASTIC_LAYERS = (keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _model_name(model) -> str:
    return f"{type(model).__name__} '{getattr(model, 'name', '?')}'"


def classifier_outputs(model, features):
    """The model's class outputs `(batch, classes)` for `features`, in inference mode."""
    outputs = model(features, training=False)
    if isinstance(outputs, dict):
        if "output" not in outputs:
            raise ValueError(
                f"Expected a classifier returning a tensor or a dict with an 'output' key. Received: {_model_name(model)} "
                f"returning keys {sorted(outputs)}"
            )
        outputs = outputs["output"]
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        outputs = outputs[0]
    if isinstance(outputs, (list, tuple, dict)):
        raise ValueError(
            f"Expected a classifier with a single output tensor. Received: {_model_name(model)} with "
            f"{len(outputs)} outputs"
        )
    return outputs


def _last_dense(graph: keras.Model):
    for layer in reversed(graph.layers):
        if getattr(layer, "kernel", None) is not None and len(layer.kernel.shape) == 2:
            return layer
    return None


def embedding_model(model, layer: str | None = None) -> keras.Model:
    """A model returning `[embedding, class outputs]` and sharing the model's weights.

    The embedding is the named layer's output, or by default the input of the
    last Dense layer (the penultimate features: the pooled features of
    `resnet18_cifar`). Spatial embeddings are flattened by the caller.

    Args:
        model: a functional/Sequential classifier or a LossLearningModel.
        layer: name of the layer whose output is the embedding, or `None`.
    """
    graph = graph_model(model)
    if not _has_graph(graph):
        raise ValueError(
            "Expected a functional or Sequential model (or a LossLearningModel) to take embeddings from. "
            f"Received: {_model_name(model)}, whose layers are not part of a graph"
        )
    if layer is not None:
        names = [item.name for item in graph.layers]
        if layer not in names:
            raise ValueError(
                f"Expected `layer` to name a layer of '{graph.name}'. Received: layer={layer!r}; available: {names}"
            )
        embedding = graph.get_layer(layer).output
    else:
        dense = _last_dense(graph)
        if dense is None:
            raise ValueError(
                f"Could not find a final Dense layer in '{graph.name}' to take penultimate features from. "
                "Pass `layer=<name>` explicitly."
            )
        embedding = dense.input
    output = graph.outputs[0] if len(graph.outputs) == 1 else graph.outputs
    return keras.Model(graph.inputs, [embedding, output], name=f"{graph.name}_embedding")


def loss_and_embedding(model, layer: str | None = None):
    """`fn(features) -> (predicted loss (batch,) float32, embedding (batch, d))` from one backbone pass.

    For a `LossLearningModel`: its head runs on the feature taps of the same
    forward pass that gives the embedding (as in `model(features)`, where the
    head reads the backbone's taps), so the backbone runs once per batch, not
    twice. `None` for a model without a loss-prediction head.
    """
    if not all(hasattr(model, name) for name in ("backbone", "head", "feature_layers")):
        return None
    embedding = embedding_model(model, layer).outputs[0]
    backbone = model.backbone
    taps = [backbone.get_layer(name).output for name in model.feature_layers]
    combined = keras.Model(backbone.inputs, [embedding, taps], name=f"{backbone.name}_embedding_and_taps")

    def fn(features):
        embedded, features_for_head = combined(features, training=False)
        predicted = ops.cast(model.head(features_for_head, training=False), "float32")
        return ops.reshape(predicted, (-1,)), flatten_batch(embedded)

    return fn


def loss_embedding_and_outputs(model, layer: str | None = None):
    """`fn(features) -> (predicted loss (batch,), embedding (batch, d), class outputs)` from one backbone pass.

    For a `LossLearningModel` only (`None` otherwise): the embedding, the
    backbone's outputs and the head's taps come from the same forward pass.
    """
    if not all(hasattr(model, name) for name in ("backbone", "head", "feature_layers")):
        return None
    embedder = embedding_model(model, layer)
    backbone = model.backbone
    taps = [backbone.get_layer(name).output for name in model.feature_layers]
    combined = keras.Model(backbone.inputs, [embedder.outputs, taps], name=f"{backbone.name}_embedding_outputs_taps")

    def fn(features):
        (embedded, outputs), features_for_head = combined(features, training=False)
        predicted = ops.cast(model.head(features_for_head, training=False), "float32")
        return ops.reshape(predicted, (-1,)), flatten_batch(embedded), outputs

    return fn


def flatten_batch(tensor):
    """`(batch, ...)` -> `(batch, features)` in float32."""
    return ops.reshape(ops.cast(tensor, "float32"), (ops.shape(tensor)[0], -1))


def _always_on(layer, seed: int | None):
    cls = type(layer)
    config = layer.get_config()
    if seed is not None and "seed" in config:
        config["seed"] = seed
    mc_class = type(
        f"MonteCarlo{cls.__name__}",
        (cls,),
        {"call": lambda self, inputs, training=None: cls.call(self, inputs, training=True)},
    )
    return mc_class.from_config(config)


def mc_dropout_model(model, seed: int | None = None) -> keras.Model:
    """A twin of the classifier whose dropout layers stay on at inference; all other layers are shared.

    Only dropout is stochastic: batch normalisation and the rest run in
    inference mode, so MC sampling neither uses batch statistics nor updates
    the model's moving averages.

    Args:
        model: a functional/Sequential classifier or a LossLearningModel with
            at least one Dropout/GaussianDropout/AlphaDropout layer.
        seed: seed for the dropout masks, or `None`.
    """
    graph = graph_model(model)
    if not _has_graph(graph):
        raise ValueError(
            "Expected a functional or Sequential model (or a LossLearningModel) for MC dropout. "
            f"Received: {_model_name(model)}"
        )
    found = []

    def clone(layer):
        if isinstance(layer, _STOCHASTIC_LAYERS):
            found.append(layer.name)
            return _always_on(layer, None if seed is None else seed + len(found))
        return layer

    twin = keras.models.clone_model(graph, clone_function=clone, recursive=True)
    if not found:
        raise ValueError(
            f"Expected a model with dropout layers for MC-dropout sampling (BALD). Received: {_model_name(model)} "
            "with none; add keras.layers.Dropout before the classifier or use another strategy"
        )
    return twin
