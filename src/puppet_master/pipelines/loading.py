"""Loading a :class:`~puppet_master.pipelines.PuppetMasterPipeline` from a directory, a hub id or the embedded default."""

from __future__ import annotations

import os

import torch

from ..errors import ModelLoadError
from .model_source import (
    DEFAULT_MODEL_DIR,
    DTYPE_ARG,
    check_component_configs,
    check_device,
    check_model_folder,
    device_and_dtype,
    resolve_model,
)
from .pipeline_puppet_master import PuppetMasterPipeline

__all__ = ["DEFAULT_MODEL_DIR", "DTYPE_ARG", "check_component_configs", "check_device", "check_model_folder",
           "device_and_dtype", "load_pipeline", "resolve_model"]


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device = "cpu", torch_dtype: torch.dtype | None = None):
    """Load a :class:`~puppet_master.pipelines.PuppetMasterPipeline`.

    Args:
        model: a ``save_pretrained`` folder, a hub id, or ``None`` / ``"default"`` for the
            embedded default model.
        device: where to run (``"cpu"``, ``"cuda"``, ``"cuda:1"``…).
        torch_dtype: weights dtype (default: float32 on CPU, as saved elsewhere).

    Raises:
        ModelLoadError: missing or broken model, unavailable device.
    """
    source = resolve_model(model)
    dev, kwargs = device_and_dtype(device, torch_dtype)
    try:
        pipe = PuppetMasterPipeline.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub/network/format errors all mean "cannot load this model"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model {str(model or 'default')!r}: {first}") from exc
    check_component_configs(pipe, model)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)
