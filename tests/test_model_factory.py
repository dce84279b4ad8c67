"""`keras_lossal/model_factory.py`: one place builds a compiled model from a `ModelSpec`."""

import subprocess
import sys

import keras
import pytest

from keras_lossal import experiment, model_factory, training
from keras_lossal.contracts import ModelSpec
from keras_lossal.model import LossLearningModel


def test_build_model_compiles_the_spec_optimizer_and_head():
    spec = ModelSpec(backbone="small_cnn", width=4, optimizer="adam", learning_rate=0.02, recipe="paper")
    model = model_factory.build_model(spec, (8, 8, 1), 3, with_head=True)
    assert isinstance(model, LossLearningModel) and model.compiled
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.02)
    assert model.head.name == "loss_prediction_head"
    bare = model_factory.build_model(spec, (8, 8, 1), 3, with_head=False)
    assert not isinstance(bare, LossLearningModel) and bare.output.shape == (None, 3)


def test_batch_norm_momentum_is_set_on_every_batch_norm_layer():
    model = model_factory.build_model(
        ModelSpec(backbone="small_cnn", width=4, batch_norm_momentum=0.5), (8, 8, 1), 2, False
    )
    momenta = [layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert momenta and set(momenta) == {0.5}


def test_an_unknown_optimizer_fails_when_the_factory_is_made():
    with pytest.raises(ValueError, match=r"Expected optimizer in \('sgd', 'adam'\). Received: optimizer='rmsprop'"):
        model_factory.make_model_factory(ModelSpec(optimizer="rmsprop"), (8, 8, 1), 2, True)


def test_experiment_and_training_use_the_one_factory():
    assert experiment.make_model_factory is model_factory.make_model_factory
    assert experiment.backbone_builder is model_factory.backbone_builder
    for name in ("OPTIMIZERS", "KERAS_FILE_SUFFIX", "FACTORY_SEPARATOR", "backbone_fingerprint"):
        assert getattr(experiment, name) is getattr(model_factory, name)  # still importable from experiment
    assert training.model_factory is model_factory


def test_training_does_not_import_the_experiment_layer():
    script = "import sys, keras_lossal.training\nprint('keras_lossal.experiment' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.split()[-1] == "False"
