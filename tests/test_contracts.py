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
    from keras_lossal import experiment
    from keras_lossal.labeling import labelstudio, manifest

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


# ------------------------------------------------------------------------------------------- TriageSettings
def test_triage_settings_validate_once_and_build_from_keywords():
    settings = contracts.TriageSettings(top_k=5, threshold=1, seed=3)
    assert (settings.top_k, settings.threshold, settings.selection) == (5, 1.0, contracts.DEFAULT_SELECTION)
    assert contracts.TriageSettings.of(settings, selection="badge") == contracts.TriageSettings(
        top_k=5, threshold=1.0, seed=3, selection="badge"
    )
    assert contracts.TriageSettings.of(top_k=None, threshold=float("-inf")).top_k is None
    bad = [
        ({"top_k": 0}, "Expected top_k to be an integer >= 1 or None. Received: top_k=0"),
        ({"top_k": True}, "top_k=True"),
        ({"threshold": float("nan")}, "Expected a threshold some predicted loss can reach"),
        ({"threshold": "1"}, "threshold='1'"),
        ({"top_k": None}, "Expected top_k and/or threshold"),
        ({"candidates_factor": 1.5}, "candidates_factor=1.5"),
        ({"max_image_bytes": 0}, "Expected max_image_bytes to be an integer >= 1 or None"),
    ]
    for fields, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            contracts.TriageSettings(**fields)
    with pytest.raises(TypeError, match=r"Unknown triage settings \['topk'\]"):
        contracts.TriageSettings.of(topk=5)
    with pytest.raises(TypeError, match="Expected settings to be a TriageSettings. Received: dict"):
        contracts.TriageSettings.of({"top_k": 5})


def test_image_limits_are_the_settings_then_the_export_then_the_defaults():
    class Export:
        max_image_pixels, max_image_bytes = 100, None

    defaults = (contracts.DEFAULT_MAX_IMAGE_PIXELS, contracts.DEFAULT_MAX_IMAGE_BYTES)
    assert contracts.TriageSettings().image_limits() == defaults
    assert contracts.TriageSettings().image_limits(Export()) == (100, contracts.DEFAULT_MAX_IMAGE_BYTES)
    assert contracts.TriageSettings().image_limits({"max_image_bytes": 7}) == (defaults[0], 7)
    assert contracts.TriageSettings(max_image_pixels=9, max_image_bytes=8).image_limits(Export()) == (9, 8)


def test_check_scorer_names_what_a_scorer_lacks():
    class Complete:
        description, version, labels = "mine", None, ["a"]
        max_image_pixels = max_image_bytes = example_feature = None

        def score(self, kind, payloads):
            return {}

    assert contracts.check_scorer(Complete()) is not None and isinstance(Complete(), contracts.Scorer)
    partial = Complete()
    partial.score = None
    with pytest.raises(TypeError, match=r"Received: Complete, without \['score\(kind, payloads\)'\]"):
        contracts.check_scorer(partial)
    with pytest.raises(TypeError, match=r"without \['score\(kind, payloads\)', 'description'"):
        contracts.check_scorer(object())


def test_the_shipped_scorers_carry_the_whole_protocol(tmp_path):
    from keras_lossal.serving import ServerScorer

    class Client:
        model_name, version = "lossal", 3

    scorer = ServerScorer(Client())
    assert isinstance(scorer, contracts.Scorer) and contracts.check_scorer(scorer) is scorer
    assert {name: getattr(scorer, name) for name in contracts.SCORER_ATTRIBUTES}["description"] == "server:lossal"
