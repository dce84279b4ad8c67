"""`keras_lossal/outputs.py`: what a model's outputs are, asked by acquisition and export alike."""

import keras
import pytest

import keras_lossal as kl
from keras_lossal.outputs import graph_model, has_graph, outputs_are_probabilities


def _classifier(activation=None, softmax_layer=False):
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(3, activation=None if softmax_layer else activation, name="logits")(x)
    if softmax_layer:
        x = keras.layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, False),
        ({"activation": "softmax"}, True),
        ({"activation": "sigmoid"}, True),
        ({"activation": "relu"}, False),
        ({"softmax_layer": True}, True),
    ],
)
def test_last_layer_decides(kwargs, expected):
    assert outputs_are_probabilities(_classifier(**kwargs)) is expected


def test_a_loss_learning_model_is_judged_by_its_backbone():
    backbone = _classifier(activation="softmax")
    model = kl.LossLearningModel(backbone)
    assert graph_model(model) is backbone
    assert outputs_are_probabilities(model) is True


def test_subclassed_and_multi_output_models_are_taken_as_logits():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.dense(x)

    assert has_graph(Subclassed()) is False
    assert outputs_are_probabilities(Subclassed()) is False
    inputs = keras.Input((4,))
    two = keras.Model(inputs, [keras.layers.Dense(2, activation="softmax")(inputs), keras.layers.Dense(1)(inputs)])
    assert has_graph(two) is True
    assert outputs_are_probabilities(two) is False
