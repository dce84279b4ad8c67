"""keras_lossal.callbacks: a NaN or infinite training loss raises from its batch, before anything is saved."""

import keras
import numpy as np
import pytest

from keras_lossal.callbacks import NonFiniteLossError, StopOnNonFiniteLoss


def _model(learning_rate):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(learning_rate), "mse")
    return model


def test_a_non_finite_loss_raises_naming_the_epoch_batch_and_rate():
    class Saved(keras.callbacks.Callback):
        epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            Saved.epochs += 1

    x, y = np.ones((8, 2)), np.ones(8)
    with pytest.raises(
        NonFiniteLossError, match=r"the loss became (nan|inf) at epoch \d+, batch \d+ \(learning rate 1e\+30\)"
    ):
        _model(1e30).fit(x, y, batch_size=2, epochs=5, verbose=0, callbacks=[StopOnNonFiniteLoss(), Saved()])
    assert Saved.epochs <= 1  # stopped inside an epoch: no epoch-end checkpoint saw the NaN weights
    assert isinstance(NonFiniteLossError("x"), ValueError)  # the commands report it in one line
    history = _model(0.01).fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[StopOnNonFiniteLoss()])
    assert len(history.history["loss"]) == 2
