"""The package's layering (docs/design.md §8): lower layers never import higher ones.

Generation: drags → models → pipelines → cli. Research: data → training → evaluation.
Two checks: every import statement of every module (also those inside functions) names
only allowed layers, and importing a layer with all its modules loads no higher layer.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "puppet_master"

_BASE = {"errors", "limits", "values", "options", "edm", "video", "drags", "preprocessing"}
#: What each part of the package may import (besides itself). ``limits`` (resource limits and the
#: bounded readers) sits just above ``errors``: every layer may use it.
ALLOWED = {
    "errors": set(),
    "limits": {"errors"},
    "values": {"errors", "limits"},
    "options": {"errors", "limits"},
    "runtime": {"limits"},
    "edm": {"limits"},
    "video": {"errors", "limits"},
    "drags": {"errors", "limits", "values"},
    "preprocessing": {"drags", "errors", "limits"},
    "segmentation": {"limits"},
    "entity": {"errors", "limits", "preprocessing", "segmentation"},
    "models": {"drags", "edm", "errors", "limits"},
    "pipelines": _BASE | {"models", "entity", "segmentation"},
    "data": {"drags", "errors", "limits", "values", "video"},
    "training": _BASE | {"models", "pipelines", "data"},
    "evaluation": _BASE | {"segmentation", "entity", "models", "pipelines", "data", "training"},
    "app": _BASE | {"segmentation", "entity", "models", "pipelines", "data", "training", "evaluation"},
    "cli": _BASE | {"runtime", "segmentation", "entity", "models", "pipelines", "data", "training", "evaluation", "app"},
}


def _modules():
    """(layer, file) for every module that runs in the package's Python (not Blender's)."""
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE)
        if rel.parts[:2] == ("data", "blender") and rel.name != "kinds.py" and rel.name != "__init__.py":
            continue  # runs inside Blender's Python, imports nothing of the package
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue  # the top-level package only re-exports lazily
        yield (rel.parts[0] if len(rel.parts) > 1 else rel.stem), f


def _imported_layers(layer: str, file: Path) -> set[str]:
    package = ["puppet_master", *file.relative_to(PACKAGE).parts[:-1]]
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = (package[: len(package) - node.level + 1] if node.level else []) + (node.module or "").split(".")
            parts = [p for p in parts if p]
            if parts[0] != "puppet_master":
                continue
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("puppet_master.")}
    return found - {layer}


def test_every_import_statement_respects_the_layers():
    wrong = []
    for layer, file in _modules():
        for target in sorted(_imported_layers(layer, file) - ALLOWED[layer]):
            wrong.append(f"{file.relative_to(PACKAGE)} imports puppet_master.{target}")
    assert not wrong, "\n".join(wrong)


_LOAD_ALL = """
import importlib, json, pkgutil, sys
root = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
    if ".blender." in info.name and not info.name.endswith(".kinds"):
        continue  # Blender-side modules need bpy
    importlib.import_module(info.name)
print(json.dumps(sorted({m.split(".")[1] for m in sys.modules if m.startswith("puppet_master.")})))
"""


@pytest.mark.parametrize("layer, forbidden", [
    ("models", {"pipelines", "training", "evaluation", "data", "cli", "app"}),
    ("pipelines", {"training", "evaluation", "data", "cli", "app"}),
    ("data", {"models", "pipelines", "training", "evaluation", "cli", "app"}),
])
def test_importing_a_layer_loads_no_higher_layer(layer, forbidden):
    run = subprocess.run([sys.executable, "-c", _LOAD_ALL, f"puppet_master.{layer}"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    loaded = set(json.loads(run.stdout.strip().splitlines()[-1]))
    assert layer in loaded and not loaded & forbidden, sorted(loaded & forbidden)


def _module_name(file: Path) -> str:
    rel = file.relative_to(PACKAGE).with_suffix("")
    parts = ["puppet_master", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_files() -> dict[str, Path]:
    """Dotted name → file of every module that runs in the package's Python (the top level included)."""
    files = {_module_name(f): f for _, f in _modules()}
    files["puppet_master"] = PACKAGE / "__init__.py"
    return files


def _import_graph() -> dict[str, set[str]]:
    """Module → the package modules its import statements load (module-level and function-level alike).

    ``from a.b import c`` loads ``a.b.c`` when that is a module, else ``a.b``; the parent
    packages a statement also runs (their ``__init__``) are not counted, as Python runs
    them first and no module can be half-imported because of them.
    """
    files = _module_files()
    graph: dict[str, set[str]] = {}
    for name, file in files.items():
        package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = (package[: len(package) - node.level + 1] if node.level else []) + (node.module or "").split(".")
                base = ".".join(p for p in base if p)
                if base.split(".")[0] != "puppet_master":
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in files else base)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "puppet_master"}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_closed_path(graph, set(c)) for c in components]


def _closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One import path inside ``component`` from its first module back to itself (breadth first)."""
    start = min(component)
    previous = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    raise AssertionError(f"no closed path in {sorted(component)}")


def test_no_import_circles():
    """No two modules import each other, directly or through others (function-level imports count too)."""
    circles = _circles(_import_graph())
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_circle_check_finds_direct_and_indirect_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(_circles(graph)) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_the_limits_module_imports_nothing_heavy():
    """Every layer imports ``puppet_master.limits``: it must stay light (standard library + errors)."""
    code = ("import sys, puppet_master.limits; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'cv2', 'diffusers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout
