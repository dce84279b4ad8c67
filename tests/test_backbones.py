"""`keras_lossal/backbones.py`: the paper's CIFAR ResNet-18 and the dense MLP."""

import keras
import numpy as np
import pytest

from keras_lossal.backbones import dense_mlp, resnet18_cifar, unsafe_strided_1x1
from keras_lossal.experiment import ModelSpec, make_model_factory
from keras_lossal.model import resolve_feature_layers


def _resnet18_parameters(width, channels, num_classes):
    """Parameter count of the CIFAR ResNet-18 computed from its definition (BN: 4 per channel)."""

    def conv(cin, cout, k=3):
        return k * k * cin * cout

    def bn(c):
        return 4 * c

    total = conv(channels, width) + bn(width)
    cin = width
    for stage in range(4):
        cout = width * 2**stage
        for _ in range(2):
            total += conv(cin, cout) + bn(cout) + conv(cout, cout) + bn(cout)
            if cin != cout:
                total += conv(cin, cout, k=1) + bn(cout)
            cin = cout
    return total + cin * num_classes + num_classes


def test_parameter_count_is_the_paper_resnet18():
    model = resnet18_cifar((32, 32, 3), 10, width=64)
    assert model.count_params() == _resnet18_parameters(64, 3, 10)
    # The PyTorch reference (kuangliu/pytorch-cifar) counts 11,173,962 parameters: BN statistics are buffers there.
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert trainable == 11_173_962
    assert resnet18_cifar((28, 28, 1), 7, width=8).count_params() == _resnet18_parameters(8, 1, 7)


def test_named_stages_halve_resolution_and_double_channels():
    model = resnet18_cifar((32, 32, 3), 10, width=8)
    shapes = [model.get_layer(f"stage{i}").output.shape for i in range(1, 5)]
    assert shapes == [(None, 32, 32, 8), (None, 16, 16, 16), (None, 8, 8, 32), (None, 4, 4, 64)]
    logits = model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert logits.shape == (2, 10)


def test_weight_decay_adds_one_l2_term_per_convolution():
    plain = resnet18_cifar((8, 8, 1), 3, width=4)
    decayed = resnet18_cifar((8, 8, 1), 3, width=4, weight_decay=5e-4)
    decayed(np.zeros((1, 8, 8, 1), "float32"))
    assert not plain.losses
    # 16 block convolutions + 3 projections; the stem is not decayed.
    assert len(decayed.losses) == 19


def test_bad_sizes_name_the_value():
    with pytest.raises(ValueError, match=r"Received: width=0, num_classes=10"):
        resnet18_cifar(width=0)


# ------------------------------------------------------------------ oneDNN's strided 1x1 weight-gradient crash
@pytest.mark.parametrize("width", [4, 8, 16, 64])
def test_resnet_has_no_strided_1x1_convolution_by_construction(width):
    # The crash needs a strided 1x1 conv; the projections subsample first, so no batch size can reach it.
    model = resnet18_cifar((16, 16, 1), 10, width=width)
    strided_1x1 = [
        layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1) and max(layer.strides) > 1
    ]
    assert strided_1x1 == []
    assert unsafe_strided_1x1(model) == []
    assert [layer.name for layer in model.layers if layer.name.endswith("_proj_subsample")] == [
        f"stage{stage}_block1_proj_subsample" for stage in (2, 3, 4)
    ]


@pytest.mark.parametrize("size", [8, 7])
def test_subsampled_projection_equals_a_strided_1x1_convolution(size):
    # NumPy reference of the paper's projection: a 1x1 conv with stride 2 reads pixels (0, 0), (0, 2), ...
    model = resnet18_cifar((size, size, 3), 10, width=4)
    probe = keras.Model(model.input, model.get_layer("stage2_block1_proj").output)
    x = np.random.default_rng(0).normal(size=(3, size, size, 3)).astype("float32")
    stem = keras.Model(model.input, model.get_layer("stage1").output)(x)
    kernel = model.get_layer("stage2_block1_proj").kernel.numpy()[0, 0]
    expected = np.einsum("bhwc,cd->bhwd", np.asarray(stem)[:, ::2, ::2, :], kernel)
    np.testing.assert_allclose(np.asarray(probe(x)), expected, rtol=1e-5, atol=1e-5)
    assert probe.output.shape[1:3] == ((size + 1) // 2, (size + 1) // 2)


def test_unsafe_strided_1x1_finds_nested_layers_and_loss_learning_model_warns():
    import keras_lossal as kl

    inputs = keras.Input((8, 8, 4))
    inner = keras.Model(inputs, keras.layers.Conv2D(8, 1, strides=2, name="narrow_proj")(inputs), name="inner")
    wide_inputs = keras.Input((8, 8, 16))
    wide = keras.layers.Conv2D(8, 1, strides=2, name="wide_proj")(wide_inputs)  # 16 channels: one full block
    outer_inputs = keras.Input((8, 8, 4))
    features = keras.layers.GlobalAveragePooling2D(name="pool")(inner(outer_inputs))
    outer = keras.Model(outer_inputs, keras.layers.Dense(3, name="logits")(features))
    assert unsafe_strided_1x1(outer) == ["narrow_proj"]
    assert unsafe_strided_1x1(keras.Model(wide_inputs, wide)) == []
    flat_inputs = keras.Input((8, 8, 4))
    flat = keras.layers.Conv2D(8, 1, strides=2, name="flat_proj")(flat_inputs)
    flat = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D(name="pool")(flat))
    with pytest.warns(RuntimeWarning, match=r"flat_proj.*TF_ENABLE_ONEDNN_OPTS=0"):
        kl.LossLearningModel(keras.Model(flat_inputs, flat))


def test_dense_mlp_counts_its_parameters_and_its_hidden_layers_feed_the_head():
    model = dense_mlp((64,), 10, units=(128, 64))
    assert model.count_params() == (64 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10)
    assert resolve_feature_layers(model) == ["hidden1", "hidden2"]
    spec = ModelSpec(backbone="keras_lossal.backbones:dense_mlp", optimizer="adam", learning_rate=1e-3)
    head_model = make_model_factory(spec, (64,), 10, with_head=True)()
    assert head_model.feature_layers == ["hidden1", "hidden2"]
    outputs = head_model.predict(np.random.default_rng(0).random((4, 64), np.float32), verbose=0)
    assert np.shape(outputs["output"]) == (4, 10) and np.shape(outputs["predicted_loss"]) == (4,)


def test_dense_mlp_refuses_image_inputs_with_the_received_shape():
    with pytest.raises(ValueError, match=r"Received: input_shape=\(8, 8\), units=\(128, 64\)"):
        dense_mlp((8, 8))
