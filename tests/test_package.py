"""`keras_lossal/__init__.py`: public names load on first use, so light entry points stay light."""

import subprocess
import sys

import pytest

import keras_lossal as kl


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


def test_importing_the_package_or_parsing_cli_help_loads_no_tensorflow():
    assert not {"tensorflow", "keras"} & _modules_after("import keras_lossal")
    help_run = "from keras_lossal import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass"
    assert not {"tensorflow", "keras"} & _modules_after(help_run)


def test_the_labeling_package_and_its_modules_load_no_tensorflow():
    package_only = _modules_after("import keras_lossal.labeling")
    assert not {"tensorflow", "keras", "numpy", "keras_lossal.labeling.manifest"} & package_only  # nothing eager
    modules = "keras_lossal.labeling.manifest, keras_lossal.labeling.labelstudio, keras_lossal.labeling.labelstudio_api"
    loaded = _modules_after(f"import {modules}")
    assert "keras_lossal.labeling.labelstudio_api" in loaded and not {"tensorflow", "keras"} & loaded


def test_every_public_name_resolves_to_its_definition():
    from keras_lossal import acquisition, export, loop, model

    assert kl.LossLearningModel is model.LossLearningModel
    assert kl.ActiveLearningLoop is loop.ActiveLearningLoop
    assert kl.export_for_serving is export.export_for_serving
    assert kl.acquisition is acquisition
    assert set(kl.__all__) <= set(dir(kl))
    for name in kl.__all__:
        assert getattr(kl, name) is not None


def test_submodules_are_attributes_as_when_imported_eagerly():
    assert kl.export.export_for_serving is kl.export_for_serving
    assert kl.results.paired_difference is not None
    assert kl.loop.ActiveLearningLoop is kl.ActiveLearningLoop


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        kl.not_a_name  # noqa: B018


def test_all_lists_exactly_the_lazy_names():
    assert set(kl.__all__) == set(kl._LAZY_NAMES) | {"__version__"}
