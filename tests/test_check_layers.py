"""`scripts/check_layers.py`, `scripts/check_constants.py` and `make lint`: an upward import, an import cycle, a constant
defined twice or a long function fails the build."""

import importlib.util
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)

LAYERS = "low=base,shared;high=app,__init__"


def _package(tmp_path, files: dict[str, str]) -> pathlib.Path:
    """A synthetic package `pkg` in `tmp_path` with `files` (relative path -> source)."""
    root = tmp_path / "pkg"
    for relative, source in {"__init__.py": "", **files}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_an_upward_import_fails_wherever_it_is_written(tmp_path, capsys):
    root = _package(
        tmp_path,
        {
            "app.py": "from pkg import base\n",
            "base.py": "def f():\n    from pkg.app import main\n",
            "shared/__init__.py": "",
            "shared/tools.py": "import typing\nif typing.TYPE_CHECKING:\n    from .. import app\n",
        },
    )
    assert check.main(["--layers", LAYERS, str(root)]) == 1
    out = capsys.readouterr().out
    assert "base.py:2: pkg.base (low) imports pkg.app (high), a higher layer" in out
    assert "tools.py:3: pkg.shared.tools (low) imports pkg.app (high), a higher layer" in out
    assert "pkg/app.py" not in out  # importing a lower layer is fine


def test_downward_and_same_layer_imports_pass_and_an_unlisted_module_fails(tmp_path, capsys):
    root = _package(tmp_path, {"app.py": "import pkg.base\nfrom pkg import app\n", "base.py": "from . import shared\n"})
    (root / "shared.py").write_text("")
    assert check.main(["--layers", LAYERS, str(root)]) == 0
    (root / "extra.py").write_text("")
    assert check.main(["--layers", LAYERS, str(root)]) == 1
    assert "pkg.extra is in no layer" in capsys.readouterr().out


def test_a_dotted_member_puts_a_submodule_in_a_lower_layer_than_its_package(tmp_path, capsys):
    layers = "low=base,app.core;high=app,__init__"
    root = _package(
        tmp_path,
        {
            "base.py": "from pkg.app import core\n",  # app.core is low: the longest member, not `app`, decides
            "app/__init__.py": "",
            "app/core.py": "",
            "app/view.py": "from pkg.app import core\n",
        },
    )
    assert check.layer_of("pkg.app.core", check.parse_layers(layers)) == 0
    assert check.layer_of("pkg.app.view", check.parse_layers(layers)) == 1
    assert check.layer_of("pkg.application", check.parse_layers(layers)) is None  # whole components only
    assert check.main(["--layers", layers, str(root)]) == 0
    (root / "app" / "view.py").write_text("")
    (root / "app" / "core.py").write_text("def f():\n    from pkg.app import view\n")
    assert check.main(["--layers", layers, str(root)]) == 1
    assert "core.py:2: pkg.app.core (low) imports pkg.app.view (high), a higher layer" in capsys.readouterr().out
    (root / "app" / "core.py").write_text("from .. import base\n")
    assert check.main(["--layers", layers, str(root)]) == 1  # same layer, but a cycle
    assert "import cycle between pkg.app.core, pkg.base" in capsys.readouterr().out


def test_the_package_has_no_upward_import_and_no_import_cycle():
    assert check.KNOWN_UPWARD == {}  # the last known upward edge (manifest -> records) is gone
    assert check.upward_imports(ROOT / "keras_lossal", check.LAYERS, {}) == []
    assert check.import_cycles(ROOT / "keras_lossal") == []
    ranks = {name: rank for rank, name in enumerate(check.LAYERS)}
    assert check.layer_of("keras_lossal.labeling.manifest", check.LAYERS) == ranks["data"]  # data.py reads it
    assert check.layer_of("keras_lossal.labeling.labelstudio", check.LAYERS) == ranks["production"]


def test_an_import_cycle_fails_even_under_type_checking(tmp_path, capsys):
    root = _package(
        tmp_path,
        {
            "app.py": "",
            "base.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.shared import thing\n",
            "shared.py": "from pkg.base import helper\n",
        },
    )
    assert check.main(["--layers", LAYERS, str(root)]) == 1
    assert "import cycle between pkg.base, pkg.shared" in capsys.readouterr().out
    (root / "base.py").write_text("")
    assert check.main(["--layers", LAYERS, str(root)]) == 0


def _make(*arguments: str) -> str:
    """`make -n ...`'s commands, alone: under `make test` the parent's MAKEFLAGS would add "Entering directory" lines."""
    environment = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", "-n", *arguments], cwd=ROOT, capture_output=True, text=True, check=True,
        env=environment,
    ).stdout  # fmt: skip


def _make_structure(package: pathlib.Path) -> subprocess.CompletedProcess:
    """Runs the commands of `make structure PACKAGE=package` (listed by `make -n`; make itself installs nothing)."""
    venv = pathlib.Path(sys.prefix)
    listed = _make("-o", str(venv / ".installed"), "structure", f"PACKAGE={package}", f"VENV={venv}",
                   f"PY={sys.executable}")  # fmt: skip
    for command in filter(None, listed.splitlines()):
        result = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True)
        if result.returncode:
            return result
    return result


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    "files, message",
    [
        ({"data.py": "def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(61))}, "f has 62 lines of code"),
        ({"data.py": "from pkg import cli\n", "cli.py": ""}, "pkg.data (data) imports pkg.cli (command line)"),
        (
            {"data.py": 'STATE_FILE = "state.json"\n', "files.py": 'STATE_FILE = "state.json"\n'},
            "STATE_FILE = 'state.json' is defined 2 times",
        ),
    ],
    ids=["long_function", "upward_import", "constant_twice"],
)
def test_make_lint_fails_on_a_long_function_and_on_an_upward_import(tmp_path, files, message):
    venv = pathlib.Path(sys.prefix)
    listed = _make("-o", str(venv / ".installed"), "lint", f"VENV={venv}")
    assert "scripts/check_function_length.py" in listed and "scripts/check_layers.py" in listed
    assert "scripts/check_constants.py" in listed
    assert "make lint" in (ROOT / ".ci" / "run").read_text()
    result = _make_structure(_package(tmp_path, files))  # modules named like keras_lossal's, in its LAYERS
    assert result.returncode == 1 and message in result.stdout


constants_spec = importlib.util.spec_from_file_location("check_constants", ROOT / "scripts" / "check_constants.py")
check_constants = importlib.util.module_from_spec(constants_spec)
constants_spec.loader.exec_module(check_constants)


def test_a_constant_defined_twice_fails_by_name_or_by_value_and_an_alias_passes(tmp_path, capsys):
    root = _package(
        tmp_path,
        {
            "a.py": 'LOG = "rejects.jsonl"\nCHOICES = ("x", "y")\nLIMIT = 10\n',
            "b.py": 'REJECTS = "rejects.jsonl"\nLIMIT_TOO = 10\nfrom pkg.a import CHOICES\nALIAS = CHOICES\n',
        },
    )
    problems = check_constants.repeated_constants(root)
    assert len(problems) == 1 and "'rejects.jsonl' is defined 2 times" in problems[0]  # numbers are left alone
    (root / "c.py").write_text('_CHOICES = ("x", "y")\n')
    assert check_constants.main([str(root)]) == 1
    assert "('x', 'y') is defined 2 times" in capsys.readouterr().out
    (root / "b.py").write_text("from pkg.a import LOG as REJECTS\n")
    (root / "c.py").write_text("")
    assert check_constants.main([str(root)]) == 0


def test_the_package_defines_every_constant_once():
    assert check_constants.repeated_constants(ROOT / "keras_lossal") == []
