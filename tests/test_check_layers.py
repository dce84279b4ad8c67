"""`scripts/check_layers.py` and `make lint`: an upward import or a long function fails the build."""

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


def test_the_package_has_no_upward_import_and_no_import_cycle():
    assert check.KNOWN_UPWARD == {}  # the last known upward edge (manifest -> records) is gone
    assert check.upward_imports(ROOT / "keras_lossal", check.LAYERS, {}) == []
    assert check.import_cycles(ROOT / "keras_lossal") == []


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
    ],
    ids=["long_function", "upward_import"],
)
def test_make_lint_fails_on_a_long_function_and_on_an_upward_import(tmp_path, files, message):
    venv = pathlib.Path(sys.prefix)
    listed = _make("-o", str(venv / ".installed"), "lint", f"VENV={venv}")
    assert "scripts/check_function_length.py" in listed and "scripts/check_layers.py" in listed
    assert "make lint" in (ROOT / ".ci" / "run").read_text()
    result = _make_structure(_package(tmp_path, files))  # modules named like keras_lossal's, in its LAYERS
    assert result.returncode == 1 and message in result.stdout
