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


#: Import circles that exist today and are to be removed (issue #35: ``resolve_model`` is imported inside a
#: function of the pipeline module from the loader that imports the pipeline). Any other circle fails.
KNOWN_CIRCLES = [{"puppet_master.pipelines.loading", "puppet_master.pipelines.pipeline_puppet_master"}]


def _module_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` from every import statement (also inside functions)."""
    files = {}
    for f in PACKAGE.rglob("*.py"):
        parts = ("puppet_master", *f.relative_to(PACKAGE).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in files.items():
        package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in files else target)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iteratively)."""
    index, low, on_stack, stack, groups, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def test_no_import_circles():
    """No two modules import each other, directly or through others (imports inside functions count)."""
    circles = [c for c in _circles(_module_graph()) if c not in KNOWN_CIRCLES]
    assert not circles, [sorted(c) for c in circles]


def test_the_circle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [{"a", "b", "c"}]
def test_the_limits_module_imports_nothing_heavy():
    """Every layer imports ``puppet_master.limits``: it must stay light (standard library + errors)."""
    code = ("import sys, puppet_master.limits; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'cv2', 'diffusers') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout
