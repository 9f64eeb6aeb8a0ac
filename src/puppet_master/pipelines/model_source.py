"""Where a model comes from: a directory, a hub id or the embedded default; the device and dtype to load it with.

No pipeline class is imported here, so that both pipelines and :mod:`.loading` can use it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelLoadError

#: Folder of the model shipped inside the package (``--model default``).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default-model"


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
    return dev, ({"dtype": torch_dtype} if torch_dtype is not None else {})
