"""Acquisition under tf.distribute.MirroredStrategy over 2 logical CPUs.

Logical devices must be configured before TensorFlow initialises, so the check
runs in a fresh interpreter.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    import keras_lossal as kl
    from keras_lossal import acquisition as acq

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = kl.LossLearningModel(kl.backbones.resnet18_cifar(input_shape=(8, 8, 1), num_classes=3, width=4))
    pool = np.random.default_rng(0).normal(size=(45, 8, 8, 1)).astype("float32")
    reference = model.predict_loss(pool)
    results = {"replicas": strategy.num_replicas_in_sync, "reference": reference.tolist()}
    for name in ("learning_loss", "coreset"):
        outside = acq.get(name).select(model, pool, k=10, batch_size=7, seed=0)
        with strategy.scope():
            inside_strategy = acq.get(name)
            inside = inside_strategy.select(model, pool, k=10, batch_size=7, seed=0)
            dataset = inside_strategy.select(model, tf.data.Dataset.from_tensor_slices(pool), k=10, batch_size=7, seed=0)
            compiled = acq.strategies.compiled_steps(model).values()
            replicas = next(step.replicas for step in compiled if step.distribution is strategy)
        results[name] = {
            "outside": outside.indices.tolist(),
            "inside": inside.indices.tolist(),
            "dataset": dataset.indices.tolist(),
            "inside_scores": inside.scores.tolist(),
            "outside_scores": outside.scores.tolist(),
            "num_scored": inside.num_scored,
            "replicas": replicas,
        }
    print(json.dumps(results))
    """
)


def test_mirrored_strategy_gives_the_same_selection(tmp_path):
    script = tmp_path / "mirrored_acquisition.py"
    script.write_text(SCRIPT)
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert results["replicas"] == 2
    reference = results["reference"]
    expected = sorted(range(len(reference)), key=lambda i: (-reference[i], i))[:10]
    assert results["learning_loss"]["inside"] == expected
    for name in ("learning_loss", "coreset"):
        result = results[name]
        assert result["replicas"] == 2, name  # the distributed path really ran
        assert result["num_scored"] == 45, name
        assert result["inside"] == result["outside"] == result["dataset"], name
        np.testing.assert_allclose(result["inside_scores"], result["outside_scores"], rtol=1e-5, atol=1e-6)
