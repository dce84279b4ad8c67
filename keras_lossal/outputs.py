"""What a model's outputs are: the functional graph to inspect, and whether it ends in probabilities.

Acquisition (uncertainty scores) and export (softmax in the serving graph or
not) both ask; neither layer owns the answer, so it lives here, below both.
"""

from __future__ import annotations

import keras

__all__ = ["graph_model", "has_graph", "outputs_are_probabilities"]

_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


def graph_model(model) -> keras.Model:
    """The functional graph to inspect: a LossLearningModel's backbone, else the model itself."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, keras.Model) else model


def has_graph(model) -> bool:
    """Whether `model` is a functional graph (inputs and outputs known), not a subclassed call."""
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def _activation_name(layer) -> str | None:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", str(activation))


def outputs_are_probabilities(model) -> bool:
    """Whether the classifier's last layer ends in softmax/sigmoid (else its outputs are taken as logits).

    Looks at the layer that produces the functional graph's output. Models
    without a graph (subclassed) are taken to output logits; pass
    `from_logits=False` to an uncertainty strategy if yours outputs probabilities.

    Example:

    >>> inputs = keras.Input((4,))
    >>> outputs_are_probabilities(keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs)))
    True
    >>> outputs_are_probabilities(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
    False
    """
    graph = graph_model(model)
    if not has_graph(graph) or len(graph.outputs) != 1:
        return False
    output = graph.outputs[0]
    layer = next((layer for layer in reversed(graph.layers) if _produces(layer, output)), graph.layers[-1])
    return _activation_name(layer) in _PROBABILITY_ACTIVATIONS


def _produces(layer, tensor) -> bool:
    """Whether `tensor` is `layer`'s output (a layer called more than once has no single output)."""
    try:
        return layer.output is tensor
    except (AttributeError, ValueError):
        return False
