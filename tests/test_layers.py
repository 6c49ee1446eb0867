"""The package's import graph points down only (docs/ARCHITECTURE.md, "Layers").

Every `r2ps` module is read with `ast` (imports inside functions included: a lazy import
is still a dependency) and its imports of other `r2ps` modules are checked against the
layer order below: a module may import from its own folder and from folders of lower
layers, never from a higher one, and no two modules import each other, directly or
around a longer circle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import r2ps

PACKAGE = Path(r2ps.__file__).parent

# Lowest first. A folder's modules may import from their own folder and any earlier line.
LAYERS: list[set[str]] = [
    {"__init__", "log", "finite", "resources", "config", "storage", "ranking"},  # every stage uses
    {"data"},
    {"models"},
    {"mining"},
    {"search"},
    {"evaluation"},
    {"train"},
    {"repo"},
    {"serving"},
    {"pipeline"},  # the main job wires every stage
]
LEVEL = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """`r2ps.data.corpus` -> `data`; `r2ps.config` -> `config`; `r2ps` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The r2ps modules `path` imports (a name imported from a package counts as its
    submodule when one exists: `from r2ps.data import corpus` -> `r2ps.data.corpus`)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "r2ps")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "r2ps":
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_every_folder_of_the_package_has_a_layer():
    rooms = {room(m) for m in modules()}
    assert rooms <= set(LEVEL), f"add {sorted(rooms - set(LEVEL))} to LAYERS (and ARCHITECTURE.md)"


def test_imports_point_down_only():
    upward = [
        f"{m} ({room(m)}) imports {dep} ({room(dep)})"
        for m, deps in graph().items()
        for dep in sorted(deps)
        if LEVEL[room(dep)] > LEVEL[room(m)]
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_module_imports_itself_back():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(edges[m]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (circle := visit(dep)):
                return circle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (circle := visit(m)):
            raise AssertionError("import circle: " + " -> ".join(circle))


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself can fail: a data module importing the evaluation is caught."""
    fake = tmp_path / "r2ps"
    (fake / "data").mkdir(parents=True)
    (fake / "evaluation").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "evaluation" / "__init__.py").write_text("")
    (fake / "evaluation" / "metrics.py").write_text("")
    (fake / "data" / "corpus.py").write_text("def f():\n    from r2ps.evaluation import metrics\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    g = graph()
    assert g["r2ps.data.corpus"] == {"r2ps.evaluation.metrics"}
    assert LEVEL[room("r2ps.evaluation.metrics")] > LEVEL[room("r2ps.data.corpus")]
