"""Fails when a constant is defined twice in `keras_lossal/`: the copies drift (issue 24).

A module-level constant is an assignment of a literal to an UPPER_CASE name
(`_PRIVATE_UPPER` too). Two definitions are one constant written twice when
they assign an equal value to the same name, or an equal string (4 characters
or more) or tuple under any names: a file name, a list of choices. Numbers under
different names are left alone (a 10 and a 10 are rarely the same fact). Import
the constant from its one home instead (`keras_lossal.contracts` for what
several layers share); `NAME = OTHER_NAME` is an alias, not a second definition.

Usage: python scripts/check_constants.py PACKAGE_DIR
"""

from __future__ import annotations

import argparse
import ast
import collections
import pathlib
import sys


def constants(path: pathlib.Path) -> list[tuple[int, str, object]]:
    """`(line, name, value)` of every module-level literal assigned to an UPPER_CASE name in `path`."""
    found = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id.lstrip("_").isupper():
                try:
                    found.append((node.lineno, target.id, ast.literal_eval(value)))
                except ValueError:
                    pass  # not a literal: computed, or an alias of another constant
    return found


def repeated_constants(root: pathlib.Path) -> list[str]:
    """One line per constant defined more than once under `root`."""
    by_name, by_value = collections.defaultdict(list), collections.defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        for line, name, value in constants(path):
            where = f"{path}:{line} {name}"
            by_name[(name.lstrip("_"), repr(value))].append(where)
            if (isinstance(value, str) and len(value) >= 4) or (isinstance(value, tuple) and value):
                by_value[repr(value)].append(where)
    problems = []
    for (name, value), places in sorted(by_name.items()):
        if len(places) > 1:
            problems.append(f"{name} = {value[:60]} is defined {len(places)} times: {', '.join(places)}")
    for value, places in sorted(by_value.items()):
        names = {place.rsplit(" ", 1)[1].lstrip("_") for place in places}
        if len(places) > 1 and len(names) > 1:
            problems.append(f"{value[:60]} is defined {len(places)} times: {', '.join(places)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", help="the package directory, e.g. keras_lossal")
    args = parser.parse_args(argv)
    problems = repeated_constants(pathlib.Path(args.package))
    for problem in problems:
        print(problem)
    if not problems:
        print(f"no constant defined twice in {args.package}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
