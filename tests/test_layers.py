"""Imports only point down: config -> ops -> models -> {data, train, pod, export, convert,
evaluation} -> bench -> cli, data free of models, and no circle between modules (function-level imports included)."""

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
    "evaluation": 3,
    "bench": 4,
    "cli": 5,
    "demo": 5,
}
DATA_MAY_NOT_IMPORT = {"models", "train", "pod", "export", "evaluation"}


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


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer, and of model code by data."""
    problems = []
    for module, targets in graph.items():
        if module == "podkit":
            continue
        top, level = layer(module)
        for target in targets:
            other, other_level = layer(target)
            if other_level > level:
                problems.append(f"upward: {module} -> {target}")
            if top == "data" and other in DATA_MAY_NOT_IMPORT:
                problems.append(f"data imports {target} ({module})")
    return sorted(problems)


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target, [*path, target])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_imports_only_point_down():
    problems = upward_imports(import_graph())
    assert not problems, "\n".join(problems)


def test_no_import_circle():
    circle = import_circle(import_graph())
    assert circle is None, "circle: " + " -> ".join(circle or [])


def test_the_checkers_see_what_they_forbid(tmp_path):
    """The checks above must be able to fail: a function-level upward import is parsed, and
    scripted graphs with an upward import, data importing models, and a circle are caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from podkit.train.loop import train\n")
    assert "podkit.train.loop" in imports_of(bad)
    graph = {
        "podkit.ops.nms": {"podkit.train.loop"},
        "podkit.data.coco": {"podkit.models.build"},
        "podkit.train.loop": set(),
        "podkit.models.build": set(),
    }
    assert upward_imports(graph) == [
        "data imports podkit.models.build (podkit.data.coco)",
        "upward: podkit.ops.nms -> podkit.train.loop",
    ]
    graph = {"podkit.train.a": {"podkit.train.b"}, "podkit.train.b": {"podkit.train.a"}}
    assert import_circle(graph) == ["podkit.train.a", "podkit.train.b", "podkit.train.a"]
    assert import_circle({"podkit.train.a": {"podkit.ops.x"}, "podkit.ops.x": set()}) is None
