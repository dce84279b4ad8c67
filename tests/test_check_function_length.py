"""`scripts/check_function_length.py`: the 60-lines-of-code rule that `make lint` enforces."""

import importlib.util
import os
import textwrap

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "check_function_length.py")
spec = importlib.util.spec_from_file_location("check_function_length", SCRIPT)
check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check)


def _function(name, statements, docstring_lines=0, comments=0, blanks=0, indent=""):
    doc = [f'{indent}    """Doc.'] + [f"{indent}    line {i}" for i in range(docstring_lines)] + [f'{indent}    """']
    body = [f"{indent}    x{i} = {i}" for i in range(statements - 2)] + [f"{indent}    return x0"]
    extra = [f"{indent}    # comment {i}" for i in range(comments)] + [""] * blanks
    return "\n".join([f"{indent}def {name}():", *doc, *extra, *body]) + "\n"


def test_counts_code_lines_without_docstring_comments_and_blanks(tmp_path):
    path = tmp_path / "module.py"
    path.write_text(_function("fits", 60, docstring_lines=30, comments=20, blanks=10) + _function("too_long", 61))
    assert check.long_functions(path, 60) == [("too_long", 1 + 32 + 20 + 10 + 59 + 1, 61)]


def test_methods_and_nested_functions_are_named_and_counted_in_their_parent(tmp_path):
    inner = textwrap.indent(_function("inner", 40), "    ")
    source = "class Box:\n" + textwrap.indent(_function("outer", 30).replace("    return x0\n", "") + inner, "    ")
    path = tmp_path / "module.py"
    path.write_text(source)
    (found,) = check.long_functions(path, 60)
    assert found[0] == "Box.outer" and found[2] == 29 + 40


def test_main_fails_on_an_offender_and_passes_the_package(tmp_path, capsys):
    path = tmp_path / "module.py"
    path.write_text(_function("too_long", 70))
    assert check.main([str(path)]) == 1
    assert "too_long has 70 lines of code (limit 60)" in capsys.readouterr().out
    assert check.main(["--max", "70", str(path)]) == 0


def test_the_package_passes():
    assert check.main(["--max", "60", os.path.join(os.path.dirname(SCRIPT), "..", "keras_lossal")]) == 0
