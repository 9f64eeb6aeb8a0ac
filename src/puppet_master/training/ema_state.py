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
from ..values import parse_json

EMA_WEIGHTS = "ema.safetensors"
EMA_SETTINGS = "ema.json"
#: Where checkpoints written before the EMA moved to safetensors kept it (a pickle).
LEGACY_EMA_FILE = "custom_checkpoint_0.pkl"
_SETTINGS = {"decay": float, "min_decay": float, "optimization_step": int, "update_after_step": int,
             "use_ema_warmup": bool, "inv_gamma": float, "power": float}
#: Valid range of each numeric setting: ``(low, high)``, both inclusive (diffusers ``EMAModel``'s checks and more).
_RANGES = {"decay": (0.0, 1.0), "min_decay": (0.0, 1.0), "optimization_step": (0, 2**63 - 1),
           "update_after_step": (0, 2**63 - 1), "inv_gamma": (1e-12, 1e12), "power": (1e-12, 1e12)}


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
    weights = checkpoint / EMA_WEIGHTS
    names, values = read_ema_settings(checkpoint)
    try:
        tensors = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise UserInputError(f"cannot read the EMA state of {checkpoint}: {' '.join(str(exc).split())}") from None
    if set(names) != set(tensors) or len(names) != len(tensors):
        raise UserInputError(f"the EMA state of {checkpoint} is inconsistent: {EMA_SETTINGS} does not list the "
                             f"tensors of {EMA_WEIGHTS}")
    return names, [tensors[n] for n in names], values


def read_ema_settings(checkpoint: str | Path) -> tuple[list[str], dict]:
    """The EMA's parameter names and settings (``ema.json``), checked without reading the weights.

    Every setting must be there with its type (``bool`` for ``use_ema_warmup``, a whole
    number for the step counters, a finite number otherwise) and within its range
    (``decay`` and ``min_decay`` in [0, 1], counters >= 0, ``inv_gamma`` and ``power`` > 0).

    Raises:
        UserInputError: no EMA in the folder, or ``ema.json`` unreadable, not JSON
            (:func:`~puppet_master.values.parse_json`), or a setting missing, of the wrong
            type or out of range.
    """
    checkpoint = Path(checkpoint)
    weights, settings_file = checkpoint / EMA_WEIGHTS, checkpoint / EMA_SETTINGS
    if not weights.is_file() or not settings_file.is_file():
        raise UserInputError(f"{checkpoint} holds no EMA weights ({EMA_WEIGHTS} + {EMA_SETTINGS}); "
                             "was the run trained with use_ema=false?")
    try:
        raw = settings_file.read_bytes()
    except OSError as exc:
        raise UserInputError(f"cannot read the EMA state of {checkpoint}: {exc.strerror or exc}") from None
    settings = parse_json(raw, f"the EMA settings {str(settings_file)!r}")
    names = settings.get("parameters") if isinstance(settings, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserInputError(f"the EMA state of {checkpoint} is inconsistent: {EMA_SETTINGS} does not list the "
                             f"tensors of {EMA_WEIGHTS}")
    missing = sorted(k for k in _SETTINGS if k not in settings)
    if missing:
        raise UserInputError(f"{settings_file} lacks the EMA settings {missing}")
    values = {}
    for key, kind in _SETTINGS.items():
        value = settings[key]
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        low, high = _RANGES.get(key, (None, None))
        if ok and low is not None:
            ok = low <= value <= high
        if not ok:
            expected = {bool: "true or false", int: "a whole number"}.get(kind, "a number")
            where = f" from {low:g} to {high:g}" if low is not None else ""
            raise UserInputError(f"{settings_file}: {key} must be {expected}{where}, got {value!r}; the checkpoint is "
                                 "damaged: resume from another one")
        values[key] = kind(value)
    return names, values


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
