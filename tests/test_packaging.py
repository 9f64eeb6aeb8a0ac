"""Packaging: declared dependencies and extras, the tested floor, import cost, missing extras.

``pyproject.toml`` declares ranges; ``constraints/floor.txt`` pins every lower bound and
``constraints/ci.txt`` the exact versions CI installs (README "Supported versions"). The built
wheel is checked by ``.ci/run`` (building needs the build backend from the package index).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from puppet_master.errors import EXTRAS, MissingExtraError, UserInputError, optional_imports

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "puppet_master"

#: Optional dependencies that ``import puppet_master`` and ``puppet-master --help`` must not load,
#: and the libraries that only running a command loads.
HEAVY = {"gradio", "ray", "sklearn", "bpy", "tensorboard", "scipy", "skimage", "objaverse"}
LIBRARIES = {"torch", "diffusers", "transformers", "accelerate", "cv2"}


def _name(dist: str) -> str:
    """A distribution name in normalized form (PEP 503)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _requirement(text: str) -> tuple[str, dict[str, str]]:
    """``"torch>=2.5"`` → ``("torch", {">=": "2.5"})``; extras in brackets are dropped."""
    m = re.fullmatch(r"\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?\s*(.*?)\s*", text)
    assert m, text
    specs = dict(re.fullmatch(r"(==|>=|<=|!=|~=|<|>)\s*(\S+)", s.strip()).groups() for s in m[2].split(",") if s.strip())
    return _name(m[1]), specs


def _version(text: str) -> tuple[int, ...]:
    """The release part of a version, padded: ``"2.5"`` → ``(2, 5, 0, 0)``; local labels (``+cpu``) dropped."""
    parts = [int(p) for p in re.match(r"\d+(?:\.\d+)*", text)[0].split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, specs = _requirement(line)
            assert set(specs) == {"=="}, f"{path.name}: {line!r} is not an exact pin"
            pins[name] = specs["=="]
    return pins


@pytest.fixture(scope="module")
def project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _extra_requirements(project: dict) -> dict[str, list[str]]:
    """Each extra's own requirements, with ``puppet-master[a,b]`` references expanded."""
    extras = project["optional-dependencies"]

    def expand(name: str) -> list[str]:
        out = []
        for req in extras[name]:
            m = re.fullmatch(r"puppet-master\[([^\]]*)\]", req.strip())
            out += [r for e in m[1].split(",") for r in expand(e.strip())] if m else [req]
        return out

    return {name: expand(name) for name in extras}


def test_dependencies_are_ranges_whose_lower_bounds_are_the_tested_floor(project):
    floor = _pins(REPO / "constraints" / "floor.txt")
    ci = _pins(REPO / "constraints" / "ci.txt")
    requirements = dict.fromkeys(project["dependencies"] + [r for rs in _extra_requirements(project).values() for r in rs])
    untested = []
    for req in requirements:
        name, specs = _requirement(req)
        assert "==" not in specs and ">=" in specs, f"{req!r}: a range with a lower bound, not a pin"
        assert not {"<", "<="} & set(specs), f"{req!r}: no upper bound without a known break"
        if name == "objaverse":  # the Objaverse download: not installed by the test extras, so not in the floor run
            continue
        if name not in floor or _version(floor[name]) != _version(specs[">="]):
            untested.append(f"{req} (constraints/floor.txt: {floor.get(name, 'missing')})")
        assert name in ci and _version(ci[name]) >= _version(specs[">="]), f"{req}: constraints/ci.txt has {ci.get(name)}"
    assert not untested, "lower bounds that the floor run does not install:\n" + "\n".join(untested)
    # the six that researchers' environments hold their own versions of are in the core, with their floors
    core = {_requirement(r)[0] for r in project["dependencies"]}
    assert {"torch", "diffusers", "transformers", "accelerate", "numpy", "pillow"} <= core


def test_extras_are_named_for_what_they_enable(project):
    extras = _extra_requirements(project)
    assert set(project["optional-dependencies"]) == set(EXTRAS) | {"test", "all"}
    assert {_name(r) for e in EXTRAS for r in extras[e]} == {_name(r) for r in extras["all"]}
    assert {_name(r) for e in ("demo", "train", "data", "eval", "ray") for r in extras[e]} <= {_name(r) for r in extras["test"]}
    core = {_requirement(r)[0] for r in project["dependencies"]}
    assert not core & {"gradio", "tensorboard", "scikit-learn", "scikit-image", "scipy", "ray", "objaverse"}


def _imports(file: Path):
    """``(top-level module, extra or None, guarded)`` for every import statement of a module.

    ``extra``: the import is inside ``with optional_imports(extra)``. ``guarded``: inside a
    ``try`` that handles its failure (an optional feature with its own message).
    """
    tree = ast.parse(file.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        else:
            continue
        extra, guarded, up = None, False, node
        while up in parents:
            up = parents[up]
            if isinstance(up, ast.With):
                for item in up.items:
                    call = item.context_expr
                    if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "optional_imports":
                        extra = call.args[0].value
            if isinstance(up, ast.Try) and up.handlers:
                guarded = True
        for name in names:
            yield name.split(".")[0], extra, guarded


def test_every_third_party_import_is_declared(project):
    """A module imported by the package is a core dependency, or in the extra that its ``optional_imports`` names."""
    extras = {e: {_requirement(r)[0] for r in reqs} for e, reqs in _extra_requirements(project).items()}
    core = {_requirement(r)[0] for r in project["dependencies"]}
    providers = metadata.packages_distributions()
    wrong = []
    for file in sorted(PACKAGE.rglob("*.py")):
        rel = file.relative_to(PACKAGE)
        if rel.parts[:2] == ("data", "blender") and rel.name not in ("kinds.py", "__init__.py"):
            continue  # runs inside Blender's own Python (bpy), see puppet_master.data.blender_env
        for module, extra, guarded in _imports(file):
            if module in sys.stdlib_module_names or module == "puppet_master" or (guarded and extra is None):
                continue
            dists = {_name(d) for d in providers.get(module, [module])}
            allowed = core | (extras[extra] if extra else set())
            if not dists & allowed:
                where = f"optional_imports({extra!r})" if extra else "the core dependencies"
                wrong.append(f"{rel}: {module} ({', '.join(sorted(dists))}) is not in {where}")
    assert not wrong, "\n".join(wrong)


_LOADED = """
import json, sys
import puppet_master
loaded = {"import puppet_master": sorted(sys.modules)}
from puppet_master.cli import main
for argv in (["--help"], ["animate", "--help"], ["demo", "--help"], ["evaluate", "--help"], ["train", "--help"],
             ["data", "build", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
loaded["puppet-master --help"] = sorted(sys.modules)
with open(sys.argv[1], "w") as f:
    json.dump(loaded, f)
"""


def test_import_and_help_load_no_optional_dependency(tmp_path):
    """``import puppet_master`` and every ``--help`` answer without gradio, ray, sklearn, bpy, TensorBoard or torch."""
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", _LOADED, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Part-level, drag-conditioned video generation" in proc.stdout  # the help was printed
    for what, modules in json.loads(out.read_text()).items():
        loaded = {m.split(".")[0] for m in modules}
        assert "puppet_master" in loaded
        assert not loaded & (HEAVY | LIBRARIES), f"{what} loads {sorted(loaded & (HEAVY | LIBRARIES))}"


def test_optional_imports_names_the_extra_and_the_package():
    with pytest.raises(MissingExtraError) as info:
        with optional_imports("demo"):
            import puppet_master_no_such_module  # noqa: F401
    exc = info.value
    assert isinstance(exc, ImportError) and isinstance(exc, UserInputError)
    assert exc.name == "puppet_master_no_such_module"
    assert str(exc) == ('the demo (puppet-master demo) needs puppet_master_no_such_module, which is not installed: '
                        'pip install "puppet-master[demo]"')
    with pytest.raises(MissingExtraError, match=r'evaluation .* needs scikit-image, .* "puppet-master\[eval\]"'):
        with optional_imports("eval"):
            raise ModuleNotFoundError("No module named 'skimage'", name="skimage.metrics")
    # an installed package that fails for another reason is not a missing extra
    with pytest.raises(ImportError, match="undefined symbol") as info:
        with optional_imports("data"):
            raise ImportError("undefined symbol: foo", name="sklearn")
    assert not isinstance(info.value, MissingExtraError)
    with pytest.raises(KeyError):
        with optional_imports("no-such-extra"):
            pass


_WITHOUT_EXTRAS = """
import contextlib, io, json, sys
missing = ["gradio", "sklearn", "scipy", "skimage", "tensorboard", "ray"]
for name in missing:
    sys.modules[name] = None  # what an install without the extras has: none of these can be imported
from puppet_master.cli import main

def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    return [code, err.getvalue()]

results = {}
data, out = sys.argv[1], sys.argv[2]
results["demo"] = run(["demo"])
results["data"] = run(["data", "build", "--num-assets", "1", "--out", out + "/data"])
results["eval"] = run(["evaluate", "--data", data, "--out", out + "/eval"])
results["train"] = run(["train-vae", "--data", data, "--out", out + "/vae"])
for name in ("sklearn", "scipy"):  # with the data extra but without ray
    del sys.modules[name]
results["ray"] = run(["data", "build", "--executor", "ray", "--num-assets", "1", "--out", out + "/ray"])
with open(out + "/results.json", "w") as f:
    json.dump(results, f)
"""


def test_a_command_without_its_extra_says_what_to_install(tmp_path):
    """Each command whose extra is missing ends with one ``error:`` line naming ``pip install`` and writes nothing."""
    data, out = tmp_path / "clips", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS, str(data), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    packages = {"demo": "gradio", "data": "scikit-learn", "eval": "scipy", "train": "scikit-image", "ray": "ray"}
    for extra, (code, stderr) in results.items():
        assert code == 2, (extra, stderr)
        assert stderr.splitlines() == [
            f'error: {EXTRAS[extra]} needs {packages[extra]}, which is not installed: pip install "puppet-master[{extra}]"'
        ], extra
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # no output folder was started
