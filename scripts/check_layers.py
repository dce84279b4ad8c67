"""Fails on an upward import (a module of `keras_lossal/` importing a module of a higher layer) or an import cycle.

The layers, bottom up, are defined once, in `LAYERS` below (docs/architecture.md
draws them). A layer lists top-level modules and subpackages (`serving`) or dotted
members below them (`labeling.manifest`); a module belongs to the layer of its
longest matching member, so `labeling.manifest` may sit lower than the rest of
`labeling`. A module may import its own layer and the layers below it. Every
import counts: at module level, inside functions and under `TYPE_CHECKING`.
`from package import name` imports the submodule `name` when there is one,
else the package's `__init__`.

Usage: python scripts/check_layers.py [--layers "low=a,b.c;high=b,d"] PACKAGE_DIR
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys

# Layer name -> the modules and subpackages of keras_lossal in it (dotted below the package), bottom up.
LAYERS = {
    "contracts": ("contracts",),
    "primitives": ("images", "outputs", "files", "preprocessing", "callbacks", "_tensorflow_logs"),
    "data": ("data", "backbones", "labeling", "labeling.manifest"),
    "method": ("losses", "head", "model", "model_factory"),
    "acquisition": ("acquisition",),
    "protocol": ("loop", "loop_state", "experiment", "results", "training"),
    "production": (
        "export",
        "serving",
        "records",
        "beam",
        "labeling.labelstudio",
        "labeling.labelstudio_api",
        "labelstudio_backend",
    ),
    "command line": ("cli", "commands", "__init__"),
}
# Upward edges known and scheduled to go, (importer, imported): why they are still here. Nothing else may climb.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    """`keras_lossal/acquisition/base.py` -> `keras_lossal.acquisition.base` (a package: its name)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str, root: pathlib.Path) -> bool:
    relative = pathlib.Path(*name.split(".")[1:])
    return (root / relative).with_suffix(".py").is_file() or (root / relative / "__init__.py").is_file()


def imported_modules(path: pathlib.Path, root: pathlib.Path) -> list[tuple[int, str]]:
    """`(line, module)` for every import of the package's own modules in `path`."""
    package, this = root.name, module_name(path, root)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = this.split(".")[: len(this.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if _exists(candidate, root) else base))
    return [(line, name) for line, name in found if name == package or name.startswith(package + ".")]


def layer_of(module: str, layers: dict[str, tuple[str, ...]]) -> int | None:
    """The rank of `module`'s layer (0 = bottom): the layer of the longest member that is a prefix of its name.

    Members match whole components below the package: `labeling` matches
    `pkg.labeling.labelstudio`, not `pkg.serving.labeling`; the package itself is `__init__`.
    """
    parts = module.split(".")[1:] or ["__init__"]
    best, best_length = None, 0
    for rank, members in enumerate(layers.values()):
        for member in members:
            member_parts = member.split(".")
            if len(member_parts) > best_length and parts[: len(member_parts)] == member_parts:
                best, best_length = rank, len(member_parts)
    return best


def upward_imports(
    root: pathlib.Path, layers: dict[str, tuple[str, ...]] = LAYERS, known: dict | None = None
) -> list[str]:
    """One line per import of a higher layer (but the `known` ones), and per module that no layer lists."""
    names = list(layers)
    problems = []
    for path in sorted(root.rglob("*.py")):
        this = module_name(path, root)
        rank = layer_of(this, layers)
        if rank is None:
            problems.append(f"{path}: {this} is in no layer; add it to LAYERS in scripts/check_layers.py")
            continue
        for line, imported in imported_modules(path, root):
            target = layer_of(imported, layers)
            if target is not None and target > rank and (this, imported) not in (known or {}):
                problems.append(
                    f"{path}:{line}: {this} ({names[rank]}) imports {imported} ({names[target]}), a higher layer"
                )
    return problems


def import_cycles(root: pathlib.Path) -> list[str]:
    """One line per import cycle among the package's modules (a strongly connected set of more than one module).

    Every import counts, as for the layers, so a cycle hidden under `TYPE_CHECKING` fails too.
    """
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        this = module_name(path, root)
        graph.setdefault(this, set()).update(name for _, name in imported_modules(path, root) if name != this)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(component) > 1:
                cycles.append(f"{root}: import cycle between {', '.join(sorted(component))}")

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def parse_layers(text: str) -> dict[str, tuple[str, ...]]:
    """`"low=a,b.c;high=b"` -> `{"low": ("a", "b.c"), "high": ("b",)}`."""
    layers = {}
    for part in filter(None, text.split(";")):
        name, _, members = part.partition("=")
        layers[name.strip()] = tuple(member.strip() for member in members.split(",") if member.strip())
    return layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=None, help='bottom up, e.g. "low=a,b.c;high=b,d" (default: LAYERS)')
    parser.add_argument("package", help="the package directory, e.g. keras_lossal")
    args = parser.parse_args(argv)
    layers, known = (parse_layers(args.layers), {}) if args.layers else (LAYERS, KNOWN_UPWARD)
    problems = upward_imports(pathlib.Path(args.package), layers, known) + import_cycles(pathlib.Path(args.package))
    for problem in problems:
        print(problem)
    if not problems:
        print(f"no upward imports and no import cycles in {args.package}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
