"""Common fixtures: the reference data folder and a tiny random pipeline saved to disk.

The reference data (golden tensors of the authors' code, the 20 Drag-a-Move dev examples) is
not in the repository: tests find it in ``../shared`` beside the clone, or where
``PUPPET_MASTER_SHARED`` points. Without it the tests that need it are skipped with the
reason; with ``PUPPET_MASTER_REQUIRE_SHARED=1`` (set by ``.ci/run``) they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PUPPET_MASTER_SHARED", REPO.parent / "shared"))
GOLDEN_A = SHARED / "reference" / "puppet_master_golden_A.safetensors"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        reason = f"reference data folder {SHARED} is missing (put shared/ beside the clone or set PUPPET_MASTER_SHARED)"
        if os.environ.get("PUPPET_MASTER_REQUIRE_SHARED"):
            pytest.fail(reason)
        pytest.skip(reason)
    return SHARED


@pytest.fixture(scope="session")
def golden_a(shared_dir):
    from safetensors.torch import load_file

    return load_file(str(GOLDEN_A))


@pytest.fixture(scope="session")
def golden_a_meta(shared_dir):
    import json

    return json.loads((shared_dir / "reference" / "puppet_master_golden_A.json").read_text())


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny random-weight PuppetMasterPipeline saved with save_pretrained."""
    from puppet_master.pipelines import PuppetMasterPipeline, build_components

    path = tmp_path_factory.mktemp("models") / "tiny"
    PuppetMasterPipeline(**build_components("tiny", seed=0)).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_draganything_dir(tmp_path_factory) -> Path:
    """A tiny random-weight DragAnythingPipeline saved with save_pretrained."""
    from puppet_master.pipelines import DragAnythingPipeline, build_draganything_components

    path = tmp_path_factory.mktemp("models") / "tiny-draganything"
    DragAnythingPipeline(**build_draganything_components(seed=0)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    """The tiny PuppetMasterPipeline loaded from ``tiny_pipeline_dir``, progress bar off (one per test module)."""
    from puppet_master.pipelines import PuppetMasterPipeline

    p = PuppetMasterPipeline.from_pretrained(tiny_pipeline_dir)
    p.set_progress_bar_config(disable=True)
    return p
