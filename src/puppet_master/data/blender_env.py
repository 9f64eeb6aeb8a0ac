"""Finding, creating and calling the Blender Python that renders our assets.

``bpy`` from PyPI needs Python 3.11 and numpy<2, while the rest of puppet-master uses
numpy 2 (OpenCV 5, pandas 3). Blender work therefore runs in its own interpreter, as a
subprocess per asset (which also keeps a Blender crash from taking the build down).

The interpreter is found, in order, at ``$PUPPET_MASTER_BLENDER_PYTHON``, at the default
environment ``~/.cache/puppet-master/blender-python`` (made by
``puppet-master data setup-blender``), or as the current interpreter if it can
``import bpy``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import UserInputError
from .lifetime import child_dies_with_parent

ENV_VAR = "PUPPET_MASTER_BLENDER_PYTHON"
DEFAULT_ENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "puppet-master" / "blender-python"
BPY_REQUIREMENT = "bpy==5.0.1"
WORKER = Path(__file__).resolve().parent / "blender" / "worker.py"


class BlenderError(RuntimeError):
    """Blender failed on one asset (bad file, no animation, crash); the build records it and goes on."""


def find_blender_python() -> str:
    """Path of a Python that can ``import bpy``.

    Raises:
        UserInputError: none is set up (the message says how to set one up).
    """
    env = os.environ.get(ENV_VAR)
    if env:
        if not Path(env).is_file():
            raise UserInputError(f"${ENV_VAR}={env!r} does not exist")
        return env
    default = DEFAULT_ENV / "bin" / "python"
    if default.is_file():
        return str(default)
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    raise UserInputError(
        "no Blender Python found: run `puppet-master data setup-blender` (installs bpy into "
        f"{DEFAULT_ENV}) or set ${ENV_VAR} to a Python that can import bpy"
    )


def setup_blender(path: str | Path = DEFAULT_ENV, python: str | None = None) -> Path:
    """Create a virtual environment with ``bpy`` (Python 3.11 needed) and return its interpreter.

    Raises:
        UserInputError: no Python 3.11 available, or pip failed.
    """
    path = Path(path)
    exe = path / "bin" / "python"
    if exe.is_file():
        check = subprocess.run([str(exe), "-c", "import bpy"], capture_output=True)
        if check.returncode == 0:
            return exe
    candidates = [python] if python else ([sys.executable] if sys.version_info[:2] == (3, 11) else []) + ["python3.11"]
    base = next((c for c in candidates if c and shutil.which(c) or (c and Path(c).is_file())), None)
    if base is None:
        raise UserInputError("bpy needs Python 3.11: install python3.11 or pass --python PATH")
    subprocess.run([base, "-m", "venv", "--clear", str(path)], check=True)
    pip = subprocess.run([str(exe), "-m", "pip", "install", "-q", BPY_REQUIREMENT], capture_output=True, text=True)
    if pip.returncode != 0:
        raise UserInputError(f"installing {BPY_REQUIREMENT} failed: {pip.stderr.strip().splitlines()[-1:]}")
    return exe


def run_worker(command: str, spec: dict, timeout: float = 1800, python: str | None = None) -> dict:
    """Run ``worker.py command`` with ``spec`` in the Blender Python; return its JSON result.

    The Blender process is ended (SIGTERM) if the calling process dies.

    Raises:
        BlenderError: the worker failed, crashed or timed out (message has the reason).
    """
    python = python or find_blender_python()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        spec_file = fh.name
    try:
        proc = subprocess.run([python, str(WORKER), command, "--spec", spec_file], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONNOUSERSITE": "1"},
                              preexec_fn=child_dies_with_parent if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        raise BlenderError(f"Blender {command} timed out after {timeout:.0f} s") from None
    finally:
        os.unlink(spec_file)
    result = None
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BlenderError(f"Blender {command} crashed (exit {proc.returncode}): {' | '.join(tail)}")
    if not result.get("ok"):
        raise BlenderError(result.get("error", "unknown Blender error"))
    return result
