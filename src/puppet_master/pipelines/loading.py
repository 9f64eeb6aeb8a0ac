"""Finding and loading a pipeline from a directory, a hub id or the embedded default."""

from __future__ import annotations

import os
from pathlib import Path

import diffusers
import torch

from ..errors import ModelLoadError
from .pipeline_puppet_master import PuppetMasterPipeline

#: Folder of the model shipped inside the package (``--model default``).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default-model"

#: The precision argument of diffusers' ``from_pretrained``: ``dtype`` from diffusers 0.40 on (which
#: deprecates ``torch_dtype``); older releases take only ``torch_dtype`` and ignore ``dtype``.
DTYPE_ARG = "dtype" if tuple(int(p) for p in diffusers.__version__.split(".")[:2]) >= (0, 40) else "torch_dtype"


def resolve_model(model: str | os.PathLike | None) -> str:
    """Turn ``--model`` into a directory or hub id.

    ``None`` and ``"default"`` mean the embedded default model.

    Raises:
        ModelLoadError: the default model is not installed, or a local-looking path
            does not exist / is not a pipeline folder.
    """
    if model is None or str(model) == "default":
        if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            raise ModelLoadError(
                "no default model is installed in this package: pass --model DIR (a folder saved by "
                "save_pretrained, e.g. made by `puppet-master random-model DIR` for a smoke test)"
            )
        return str(DEFAULT_MODEL_DIR)
    text = str(model)
    path = Path(text).expanduser()
    is_hub_id = not path.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not is_hub_id:
        if not path.is_dir():
            raise ModelLoadError(f"model folder {text!r} does not exist")
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"model folder {text!r} has no model_index.json: it was not saved by save_pretrained")
        return str(path)
    return text  # a hub id such as "user/puppet-master"


def device_and_dtype(device: str | torch.device, torch_dtype: torch.dtype | None) -> tuple[torch.device, dict]:
    """The device to load onto and ``from_pretrained``'s dtype arguments.

    ``torch_dtype=None`` means float32 on a CPU (weights may be stored in float16, as the
    default model's are; CPUs compute in float32) and the stored dtype elsewhere.

    Raises:
        ModelLoadError: an unknown device, or CUDA asked for without a CUDA GPU.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but no CUDA GPU is available: use --device cpu")
    if torch_dtype is None and dev.type == "cpu":
        torch_dtype = torch.float32
    return dev, ({DTYPE_ARG: torch_dtype} if torch_dtype is not None else {})


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
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)
