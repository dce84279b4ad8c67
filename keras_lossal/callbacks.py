"""Training guards: a Keras callback that stops `fit` with an error as soon as the loss is NaN or infinite.

Keras' own `TerminateOnNaN` only stops training, so `fit` returns normally and
whatever follows (saving the model, marking a run finished, a checkpoint at the
end of the epoch) carries the NaN weights on. `StopOnNonFiniteLoss` raises
from the batch that produced the loss, before anything is saved.
"""

from __future__ import annotations

import math

import keras

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss"]


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite: the weights are garbage from that batch on."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLossError` at the first batch whose training loss is NaN or infinite.

    Example:

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(1e30), "mse")
    >>> model.fit(np.ones((8, 2)), np.ones(8), epochs=3, verbose=0, callbacks=[StopOnNonFiniteLoss()])
    Traceback (most recent call last):
    ...
    keras_lossal.callbacks.NonFiniteLossError: Training stopped: the loss became inf at epoch 2, batch 1 (learning rate 1e+30). Lower the learning rate, or look for NaN/inf values in the data
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = int(epoch)

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(keras.ops.convert_to_numpy(loss))
        if math.isfinite(loss):
            return
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        raise NonFiniteLossError(
            f"Training stopped: the loss became {loss} at epoch {self.epoch + 1}, batch {int(batch) + 1} "
            f"(learning rate {rate:g}). Lower the learning rate, or look for NaN/inf values in the data"
        )
