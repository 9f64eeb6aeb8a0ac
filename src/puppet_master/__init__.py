"""puppet-master: part-level, drag-conditioned video generation (Puppet-Master, Li et al. 2024).

Layout: :mod:`puppet_master.drags` → :mod:`puppet_master.models` →
:mod:`puppet_master.pipelines` → :mod:`puppet_master.cli`.

The model and pipeline classes are importable from the top level (lazily, so that
``import puppet_master`` stays light); diffusers' ``from_pretrained`` finds them here
through ``model_index.json``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "UNetDragSpatioTemporalConditionModel": "puppet_master.models",
    "PuppetMasterPipeline": "puppet_master.pipelines",
    "DragSet": "puppet_master.drags",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'puppet_master' has no attribute {name!r}")
