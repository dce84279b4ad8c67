"""Every built-in strategy's picks on a fixed model and pool, against picks recorded before the strategies were split by role.

`tests/data/acquisition_reference.npz` holds the model's weights, the pool, the labeled
items and each strategy's `Selection` as the code returned them while every strategy still
lived in one `strategies.py` (the commit that added this test). Regenerate only for an intended change of behaviour:
`python tests/test_acquisition_reference.py --write`. One intended change since: `learning_loss_clusters/*` were
re-recorded when k-means moved into one compiled TensorFlow function (issue 25: another seeded sampler, so other
clusters; every other strategy's picks are still those of the split). `typiclust/*` and `budget_switch/*` were added with
those strategies (issue 22), without touching the other keys.
"""

import os
import sys

import keras
import numpy as np

import keras_lossal as kl
from keras_lossal import acquisition

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "acquisition_reference.npz")
SELECT = dict(k=5, subset_size=40, seed=3, batch_size=16)


def _model() -> kl.LossLearningModel:
    """A small classifier with dropout (for BALD and MC-dropout variance) and a loss-prediction head."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stage1_conv")(inputs)
    x = keras.layers.MaxPooling2D(name="stage1")(keras.layers.ReLU()(x))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stage2_conv")(x)
    x = keras.layers.MaxPooling2D(name="stage2")(keras.layers.ReLU()(x))
    x = keras.layers.Dense(8, activation="relu", name="hidden")(keras.layers.GlobalAveragePooling2D()(x))
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Dropout(0.3, name="dropout")(x))
    backbone = keras.Model(inputs, outputs)
    return kl.LossLearningModel(backbone, feature_layers=["stage1", "stage2"], head=kl.LossPredictionHead(units=4))


def _selections(model, pool, labeled) -> dict[str, np.ndarray]:
    recorded = {}
    for name in sorted(acquisition.STRATEGIES):
        selection = acquisition.get(name).select(model, pool, labeled=labeled, **SELECT)
        recorded[f"{name}/indices"] = np.asarray(selection.indices)
        recorded[f"{name}/scores"] = np.asarray(selection.scores)
        recorded[f"{name}/counts"] = np.array([selection.num_scored, selection.num_nan])
    return recorded


def _write() -> None:
    keras.utils.set_random_seed(0)
    model = _model()
    rng = np.random.default_rng(0)
    pool = rng.random((60, 8, 8, 1), dtype=np.float32)
    pool[:6, 0, 0, 0] = np.nan  # non-finite items: counted, never picked
    labeled = rng.random((10, 8, 8, 1), dtype=np.float32)
    weights = {f"weight/{index}": value for index, value in enumerate(model.get_weights())}
    np.savez(REFERENCE, pool=pool, labeled=labeled, **weights, **_selections(model, pool, labeled))


def test_every_strategy_picks_what_it_picked_before_the_split():
    stored = np.load(REFERENCE)
    model = _model()
    count = len([key for key in stored.files if key.startswith("weight/")])
    model.set_weights([stored[f"weight/{index}"] for index in range(count)])
    recorded = _selections(model, stored["pool"], stored["labeled"])
    assert {key.split("/")[0] for key in recorded} == {key.split("/")[0] for key in stored.files if "/indices" in key}
    for key, value in recorded.items():
        if key.endswith("/scores"):
            np.testing.assert_allclose(value, stored[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(value, stored[key], err_msg=key)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    _write()
