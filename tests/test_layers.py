"""Imports only point down: config -> ops -> models -> {data, train, pod, export} -> bench ->
cli, data free of models, and no circle between modules (function-level imports included)."""

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "podkit"
LAYERS = {
    "config": 0,
    "errors": 0,
    "outputs": 0,
    "ops": 1,
    "models": 2,
    "data": 3,
    "train": 3,
    "pod": 3,
    "export": 3,
    "convert": 3,
    "bench": 4,
    "cli": 5,
    "demo": 5,
}
DATA_MAY_NOT_IMPORT = {"models", "train", "pod", "export"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every podkit module `path` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("podkit"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import mod`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("podkit"))
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports_of(path) if m in files} - {name} for name, path in files.items()
    }


def layer(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else ""
    return top, LAYERS.get(top, -1)


def test_every_package_has_a_layer():
    for module in import_graph():
        if module != "podkit":
            assert layer(module)[1] >= 0, f"{module}: add its package to LAYERS"


def test_imports_only_point_down():
    problems = []
    for module, targets in import_graph().items():
        if module == "podkit":
            continue
        top, level = layer(module)
        for target in targets:
            other, other_level = layer(target)
            if other_level > level:
                problems.append(f"upward: {module} -> {target}")
            if top == "data" and other in DATA_MAY_NOT_IMPORT:
                problems.append(f"data imports {target} ({module})")
    assert not problems, "\n".join(sorted(problems))


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circle = path[path.index(target) :] + [target]
                raise AssertionError("circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The three checks above must be able to fail: a parsed upward import is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from podkit.train.loop import train\n")
    assert "podkit.train.loop" in imports_of(bad)
    assert layer("podkit.ops.nms")[1] < layer("podkit.train.loop")[1]
