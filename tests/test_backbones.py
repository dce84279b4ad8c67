"""`keras_lossal/backbones.py`: the paper's CIFAR ResNet-18."""

import numpy as np
import pytest

from keras_lossal.backbones import resnet18_cifar


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
