"""The house rules (issue 13): subpackages are floors and imports run only down or sideways,
no module imports itself back in a circle, and modules and functions stay within the sizes of
the style guide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cvgen"
# bottom floor first: a module may import its own floor and the floors below it
FLOORS = [
    "common",
    "data",
    "vectors",
    "extract",
    "solve",
    "llamacpp",
    "engine",
    "pack",
    "generate",
    "steer",
    "eval",
    "weights",
    "serve",
    "cli",
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(encoding="utf-8"))
    return modules


def _imports(tree: ast.Module, names: set[str]) -> set[str]:
    """The cvgen modules `tree` imports, anywhere in it (function-level imports count)."""
    found = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {target for target in targets if target in names}
    return found


def _floor(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # cvgen/__init__.py: lazy exports only
    assert parts[1] in FLOORS, f"{module}: cvgen.{parts[1]} is not a floor of the house"
    return FLOORS.index(parts[1])


def test_every_module_lives_on_a_floor() -> None:
    modules = _modules()
    loose = [name for name in modules if name.count(".") == 1 and name.split(".")[1] not in FLOORS]
    assert loose == []
    assert {name.split(".")[1] for name in modules if "." in name} == set(FLOORS)


def test_imports_run_only_down_or_sideways() -> None:
    modules = _modules()
    upward = [
        f"{name} -> {target}"
        for name, tree in modules.items()
        if name != "cvgen"
        for target in _imports(tree, set(modules))
        if _floor(target) > _floor(name)
    ]
    assert upward == []


def test_no_module_imports_itself_back() -> None:
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    graph = {name: {t for t in targets if t != "cvgen"} for name, targets in graph.items()}
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


def _is_click_command(node: ast.FunctionDef) -> bool:
    """A click command's parameters are its options, which click fills: they are exempt."""
    return any("option" in ast.unparse(decorator) for decorator in node.decorator_list)


@pytest.mark.parametrize("limit", ["module", "function", "parameters"])
def test_sizes_stay_within_the_style_guide(limit: str) -> None:
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(PACKAGE.parent)
        if limit == "module" and text.count("\n") > MAX_MODULE_LINES:
            too_big.append(f"{where}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            count = len([a for a in arguments if a.arg not in ("self", "cls")])
            if limit == "function" and length > MAX_FUNCTION_LINES:
                too_big.append(f"{where}:{node.lineno} {node.name}: {length} lines")
            if limit == "parameters" and count > MAX_PARAMETERS and not _is_click_command(node):
                too_big.append(f"{where}:{node.lineno} {node.name}: {count} parameters")
    assert too_big == []
