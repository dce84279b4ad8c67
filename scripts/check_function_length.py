"""Fails when a function in `keras_lossal/` has more than 60 lines of code.

Lines of code are the function's lines from `def` to its last statement,
without docstrings, blank lines and comment-only lines. Nested functions
count towards the function that holds them.

Usage: python scripts/check_function_length.py [--max 60] [paths...]
"""

from __future__ import annotations

import argparse
import ast
import io
import pathlib
import sys
import tokenize


def code_lines(source: str) -> set[int]:
    """Line numbers holding at least one token other than a comment or a newline."""
    lines = set()
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines


def docstring_lines(node: ast.AST) -> set[int]:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
        return set()
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        if isinstance(body[0].value.value, str):
            return set(range(body[0].lineno, body[0].end_lineno + 1))
    return set()


def long_functions(path: pathlib.Path, limit: int) -> list[tuple[str, int, int]]:
    """`(qualified name, first line, lines of code)` of each function over `limit`."""
    source = path.read_text()
    tree = ast.parse(source)
    counted = code_lines(source)
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                docstrings = set().union(*(docstring_lines(n) for n in ast.walk(child)))
                span = set(range(start, child.end_lineno + 1)) - docstrings
                size = len(span & counted)
                if size > limit:
                    found.append((name, child.lineno, size))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max", type=int, default=60)
    parser.add_argument("paths", nargs="*", default=["keras_lossal"])
    args = parser.parse_args(argv)
    files = []
    for path in map(pathlib.Path, args.paths):
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    offenders = [(str(file), *entry) for file in files for entry in long_functions(file, args.max)]
    for file, name, line, size in offenders:
        print(f"{file}:{line}: {name} has {size} lines of code (limit {args.max})")
    if offenders:
        print(f"{len(offenders)} function(s) over {args.max} lines of code", file=sys.stderr)
        return 1
    print(f"every function in {', '.join(args.paths)} has at most {args.max} lines of code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
