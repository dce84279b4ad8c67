"""`keras_lossal/contracts.py`: the names, defaults and checks the command line and the library share."""

import subprocess
import sys

import pytest

from keras_lossal import contracts


def test_importing_contracts_loads_no_tensorflow():
    script = "import sys, keras_lossal.contracts\nprint('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_recipe_names_are_the_model_recipes_and_the_cli_choices():
    from keras_lossal import cli, model

    assert set(contracts.RECIPE_NAMES) == set(model.RECIPES)
    assert "light_joint" in contracts.RECIPE_NAMES
    parser = cli.build_parser()
    for command in (["train", "--data", "d", "--out", "o"], ["run", "--out", "o"]):
        assert parser.parse_args([*command, "--recipe", "light_joint"]).recipe == "light_joint"
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--recipe", "not_a_recipe"])


def test_backbone_names_are_the_built_in_backbones_everywhere():
    from keras_lossal import backbones, experiment
    from keras_lossal.commands import train

    assert tuple(backbones.BACKBONES) == contracts.BACKBONE_NAMES
    assert experiment.BACKBONES is backbones.BACKBONES
    assert train.BUILTIN_BACKBONES is contracts.BACKBONE_NAMES
    assert experiment.small_cnn is backbones.small_cnn


def test_file_names_and_limits_are_re_exported_where_they_were():
    from keras_lossal import data, images, training
    from keras_lossal.commands import export

    for name in ("MODEL_FILE", "PREPROCESSING_FILE", "CLASSES_FILE", "TRAINING_FILE"):
        assert getattr(training, name) is getattr(contracts, name)
    for name in ("PREPROCESSING_FILE", "CLASSES_FILE", "TRAINING_FILE"):
        assert getattr(export, name) is getattr(contracts, name)
    assert data.REJECTS_FILE is contracts.REJECTS_FILE
    from keras_lossal import experiment, labelstudio, manifest

    assert experiment.EXPERIMENT_FILE is contracts.EXPERIMENT_FILE
    assert labelstudio.CONTENT_FIELD is manifest.CONTENT_FIELD is contracts.CONTENT_FIELD
    assert images.DEFAULT_MAX_IMAGE_BYTES == 32 * 1024 * 1024 == contracts.DEFAULT_MAX_IMAGE_BYTES


def test_model_spec_is_importable_from_experiment():
    from keras_lossal import experiment

    assert experiment.ModelSpec is contracts.ModelSpec
    assert contracts.ModelSpec().recipe == contracts.DEFAULT_RECIPE == "recommended"


@pytest.mark.parametrize(
    ("value", "options", "expected"),
    [(3, {}, 3), (2.0, {"integral_floats": True}, 2), (None, {"optional": True}, None), (0, {"minimum": 0}, 0)],
)
def test_check_integer_accepts(value, options, expected):
    assert contracts.check_integer("n", value, **options) == expected


@pytest.mark.parametrize(
    ("value", "options", "message"),
    [
        (0, {}, r"Expected n to be an integer >= 1. Received: n=0"),
        (True, {}, r"Expected n to be an integer >= 1. Received: n=True"),
        (2.0, {}, r"Expected n to be an integer >= 1. Received: n=2.0"),
        (2.5, {"integral_floats": True}, r"Expected n to be an integer >= 1. Received: n=2.5"),
        (float("nan"), {"integral_floats": True}, r"Received: n=nan"),
        ("3", {"integral_floats": True}, r"Received: n='3'"),
        (None, {}, r"Expected n to be an integer >= 1. Received: n=None"),
        (-1, {"minimum": 0, "optional": True}, r"Expected n to be an integer >= 0 or None. Received: n=-1"),
    ],
)
def test_check_integer_refuses_with_one_message_shape(value, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        contracts.check_integer("n", value, **options)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, "fast"])
def test_check_finite_non_negative_refuses(value):
    with pytest.raises(ValueError, match="Expected rate to be a finite number >= 0"):
        contracts.check_finite_non_negative("rate", value)
