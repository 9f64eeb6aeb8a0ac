"""Training the drag UNet with accelerate (docs/design.md §5–6).

The names below are imported lazily, so that the config-free modules of this package
(:mod:`.losses`, :mod:`.vae`, :mod:`.recipe`) import without pydantic.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TrainConfig": ".config",
    "load_config": ".config",
    "Trainer": ".trainer",
    "TrainingDiverged": ".trainer",
    "TrainResult": ".trainer",
    "edm_loss": ".trainer",
}

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "edm_loss", "load_config"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
