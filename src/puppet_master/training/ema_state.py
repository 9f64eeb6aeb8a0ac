"""The EMA of a training checkpoint as plain data: ``ema.safetensors`` + ``ema.json``.

accelerate's ``register_for_checkpointing`` would store the EMA as a pickle
(``custom_checkpoint_0.pkl``) and read it back with ``torch.load(weights_only=False)``,
which runs any code a tampered file names. The trainer instead writes the shadow weights
with safetensors (tensors only) and the EMA's settings as JSON, and reads them back the
same way: resuming a checkpoint never unpickles anything of ours.

Layout inside ``checkpoints/step-NNNNNNNN/``:

* ``ema.safetensors``: one float tensor per UNet parameter, keyed by parameter name.
* ``ema.json``: ``{"parameters": [names in unet.parameters() order], "decay": ...,
  "min_decay": ..., "optimization_step": ..., "update_after_step": ...,
  "use_ema_warmup": ..., "inv_gamma": ..., "power": ...}`` (diffusers ``EMAModel`` state).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import UserInputError

EMA_WEIGHTS = "ema.safetensors"
EMA_SETTINGS = "ema.json"
#: Where checkpoints written before the EMA moved to safetensors kept it (a pickle).
LEGACY_EMA_FILE = "custom_checkpoint_0.pkl"
_SETTINGS = {"decay": float, "min_decay": float, "optimization_step": int, "update_after_step": int,
             "use_ema_warmup": bool, "inv_gamma": float, "power": float}


def save_ema_state(ema, names: list[str], folder: str | Path) -> None:
    """Write ``ema``'s shadow weights and settings into ``folder``.

    Args:
        ema: a diffusers ``EMAModel`` over the UNet's parameters.
        names: the UNet's parameter names in ``parameters()`` order (one per shadow weight).
        folder: the checkpoint folder (written by the main process only).
    """
    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    if len(shadow) != len(names):
        raise ValueError(f"{len(shadow)} EMA weights for {len(names)} parameter names")
    folder = Path(folder)
    save_file({n: t.detach().to("cpu").contiguous() for n, t in zip(names, shadow)}, str(folder / EMA_WEIGHTS))
    settings = {k: _SETTINGS[k](state[k]) for k in _SETTINGS}
    (folder / EMA_SETTINGS).write_text(json.dumps({"parameters": names, **settings}, indent=1))


def has_legacy_ema(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` keeps its EMA in the old pickle format only."""
    checkpoint = Path(checkpoint)
    return (checkpoint / LEGACY_EMA_FILE).is_file() and not (checkpoint / EMA_WEIGHTS).is_file()


def custom_pickles(checkpoint: str | Path) -> list[str]:
    """Names of accelerate ``custom_checkpoint_N.pkl`` files in ``checkpoint`` (never loaded by this version)."""
    return sorted(p.name for p in Path(checkpoint).iterdir() if re.fullmatch(r"custom_checkpoint_\d+\.pkl", p.name))


def read_ema_state(checkpoint: str | Path) -> tuple[list[str], list[torch.Tensor], dict]:
    """The EMA of a checkpoint: ``(parameter names, shadow weights in that order, settings)``.

    Raises:
        UserInputError: no EMA in the folder (a ``use_ema=false`` run, or the old pickle
            format only), or unreadable / inconsistent files.
    """
    checkpoint = Path(checkpoint)
    weights, settings_file = checkpoint / EMA_WEIGHTS, checkpoint / EMA_SETTINGS
    if not weights.is_file() or not settings_file.is_file():
        raise UserInputError(f"{checkpoint} holds no EMA weights ({EMA_WEIGHTS} + {EMA_SETTINGS}); "
                             "was the run trained with use_ema=false?")
    try:
        settings = json.loads(settings_file.read_bytes().decode("utf-8"))
        tensors = load_file(str(weights))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError, RecursionError) as exc:
        raise UserInputError(f"cannot read the EMA state of {checkpoint}: {' '.join(str(exc).split())}") from None
    names = settings.get("parameters") if isinstance(settings, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or set(names) != set(tensors) \
            or len(names) != len(tensors):
        raise UserInputError(f"the EMA state of {checkpoint} is inconsistent: {EMA_SETTINGS} does not list the "
                             f"tensors of {EMA_WEIGHTS}")
    try:
        values = {k: cast(settings[k]) for k, cast in _SETTINGS.items()}
    except (KeyError, TypeError, ValueError):
        raise UserInputError(f"{checkpoint / EMA_SETTINGS} lacks the EMA settings {sorted(_SETTINGS)}") from None
    return names, [tensors[n] for n in names], values


def load_ema_state(ema, names: list[str], checkpoint: str | Path) -> None:
    """Restore ``ema`` (a diffusers ``EMAModel``) from ``checkpoint`` for a UNet with parameters ``names``.

    Raises:
        UserInputError: see :func:`read_ema_state`; or the stored EMA belongs to a UNet
            with other parameters or shapes.
    """
    stored, shadow, settings = read_ema_state(checkpoint)
    if stored != names:
        raise UserInputError(f"the EMA of {checkpoint} belongs to a UNet with other parameters "
                             f"({len(stored)} stored, {len(names)} in this model): resume with the model settings "
                             "the run was trained with")
    for name, current, saved in zip(names, ema.shadow_params, shadow):
        if current.shape != saved.shape:
            raise UserInputError(f"the EMA of {checkpoint} has {name} of shape {tuple(saved.shape)}, "
                                 f"the model {tuple(current.shape)}")
    ema.load_state_dict({**settings, "shadow_params": [s.to(c.device, c.dtype) for s, c in zip(shadow, ema.shadow_params)]})
