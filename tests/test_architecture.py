"""House rules of the code base (issue 8, ARCHITECTURE.md), checked on the source itself:
short functions, no private names of other objects, one manifest parser."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).parent.parent
PIPELINE = ROOT / "pipeline"
MAX_FUNCTION_LINES = 60
#: Private names of other modules that are public API all the same, and the one step of the
#: interpreter's shutdown that has no public name (``cli.run``: the exit handlers, before ``os._exit``).
PUBLIC_PRIVATES = {"os._exit", "atexit._run_exitfuncs"}


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PIPELINE.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(encoding="utf-8"))


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_longer_than_60_lines() -> None:
    long = [
        f"{name}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"  # type: ignore[operator]
        for name, tree in modules()
        for f in functions(tree)
        if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
    ]
    assert not long, long


def test_no_private_attribute_of_another_object() -> None:
    found = []
    for name, tree in modules():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            text = ast.unparse(node)
            if text not in PUBLIC_PRIVATES:
                found.append(f"{name}:{node.lineno} {text}")
    assert not found, found


def _parses_json(f: ast.AST) -> bool:
    """``f`` calls ``json.load``/``json.loads`` or the format package's capped ``loads_capped``."""
    for n in ast.walk(f):
        if not isinstance(n, ast.Call):
            continue
        called = ast.unparse(n.func)
        if called in ("json.load", "json.loads") or called.endswith("loads_capped"):
            return True
    return False


def _names_the_manifest(f: ast.AST) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id == "MANIFEST")
        or (isinstance(n, ast.Attribute) and n.attr == "MANIFEST")
        or (isinstance(n, ast.Constant) and n.value == "manifest.json")
        for n in ast.walk(f)
    )


def test_one_place_parses_the_manifest() -> None:
    parsers = [
        f"{name}:{f.lineno} {f.name}"
        for name, tree in modules()
        for f in functions(tree)
        if _parses_json(f) and _names_the_manifest(f)
    ]
    # The scan sees the one parser (the format package's), and nothing else.
    assert len(parsers) == 1 and parsers[0].startswith("pipeline/format/read.py"), parsers
    readers = [name for name, tree in modules() if name.startswith("pipeline/format/") and _parses_json(tree)]
    assert readers == ["pipeline/format/read.py"], readers
