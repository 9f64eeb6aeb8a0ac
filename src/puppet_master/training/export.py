"""Export the EMA weights of a training checkpoint as a pipeline folder.

``puppet-master train`` exports ``OUTPUT_DIR/pipeline`` only when a run reaches its
last step (``stop_at_step`` or ``max_steps``). A run stopped earlier (interrupted, or a
job killed by the cluster) leaves ``checkpoints/step-*/``: accelerate state with the EMA
shadow weights in ``ema.safetensors`` (:mod:`.ema_state`). :func:`export_checkpoint` turns
one into a pipeline that ``animate``, ``evaluate`` and ``train model.init=checkpoint`` accept.

Checkpoints written before the EMA moved to safetensors keep it in
``custom_checkpoint_0.pkl``; exporting reads that file with
``torch.load(weights_only=True)`` (tensors and plain containers only, nothing is run), so
it is also the way to carry such a run on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import UserInputError
from ..pipelines import PuppetMasterPipeline
from ..pipelines.loading import DTYPE_ARG
from ..pipelines.pipeline_puppet_master import SAMPLING_DEFAULTS
from .consistency import student_settings
from .ema_state import LEGACY_EMA_FILE, has_legacy_ema, read_ema_state


def load_ema_weights(checkpoint: str | Path) -> list[torch.Tensor]:
    """The EMA shadow weights of a ``checkpoints/step-*`` folder, in ``unet.parameters()`` order.

    Read from ``ema.safetensors`` (+ ``ema.json`` for the order); a checkpoint of the
    old format only has ``custom_checkpoint_0.pkl``, read with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
    containers (no arbitrary unpickling).

    Raises:
        UserInputError: no such folder, it holds no EMA state (a run with
            ``use_ema=false``), or the state is unreadable or not plain data.
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise UserInputError(f"checkpoint folder {checkpoint} does not exist: give OUTPUT_DIR/checkpoints/step-NNNNNNNN")
    if not has_legacy_ema(folder):
        return read_ema_state(folder)[1]
    path = folder / LEGACY_EMA_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        shadow = list(state["shadow_params"])
        if not all(isinstance(t, torch.Tensor) for t in shadow):
            raise TypeError("shadow_params holds something other than tensors")
    except Exception as exc:  # noqa: BLE001 - any unreadable or foreign file is the same user-facing problem
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"cannot read the EMA state {path} (only tensors are accepted; nothing was run): "
                             f"{first}") from None
    return shadow


def _as_trained(pipe: PuppetMasterPipeline, checkpoint: Path) -> PuppetMasterPipeline:
    """``pipe`` with the sampling a run's final export states: a consistency-distillation run's student settings
    (:func:`~puppet_master.training.consistency.student_settings`), read from the run's ``config.json``
    (``OUTPUT_DIR/config.json`` beside ``checkpoints/``); other runs keep the base's settings."""
    config_file = checkpoint.parent.parent / "config.json"
    if not config_file.is_file():
        return pipe
    from .. import limits
    from ..values import parse_json
    from .config import DistillConfig

    config = parse_json(limits.read_bytes_bounded(config_file, "run config", limits.current("MAX_CONFIG_BYTES")),
                        f"run config {str(config_file)!r}")
    if not isinstance(config, dict) or config.get("objective") != "consistency":
        return pipe
    try:
        distill = DistillConfig(**config.get("distill", {}))
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"run config {str(config_file)!r}: its distill section is not valid: {exc}") from None
    settings = {name: pipe.config[name] for name in SAMPLING_DEFAULTS if pipe.config.get(name) is not None}
    return PuppetMasterPipeline(**{**pipe.components, **settings, **student_settings(distill, pipe.scheduler)})


def export_checkpoint(
    checkpoint: str | Path,
    base: str | Path,
    out: str | Path,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write ``base`` with its UNet weights replaced by ``checkpoint``'s EMA weights.

    Args:
        checkpoint: ``OUTPUT_DIR/checkpoints/step-NNNNNNNN`` of ``puppet-master train``.
        base: a pipeline folder with the same UNet architecture (the run's
            ``model.components`` or ``model.pretrained`` folder): its VAE, image encoder and
            scheduler are kept.
        out: pipeline folder to write (atomically: a partial folder is renamed at the end).
        dtype: weights dtype on disk (``torch.float16`` halves the size; loading on CPU
            upcasts to float32).
        overwrite: replace ``out`` if it exists.

    Returns:
        ``out``.

    Raises:
        UserInputError: missing checkpoint or EMA state, ``out`` exists without ``overwrite``
            (or is a file: only a pipeline folder is replaced), a file among its parents,
            or a base whose UNet does not match the checkpoint (parameter count or shapes).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserInputError(f"{out} already exists: choose another --out or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} is a file, not a pipeline folder: --overwrite replaces a pipeline folder only; "
                             "choose another --out")
    for part in out.parents:
        if part.exists() and not part.is_dir():
            raise UserInputError(f"--out {str(out)!r}: {str(part)!r} is a file, not a folder")
    shadow = load_ema_weights(checkpoint)
    try:
        pipe = PuppetMasterPipeline.from_pretrained(base, **{DTYPE_ARG: torch.float32})
    except Exception as exc:  # noqa: BLE001
        raise UserInputError(f"cannot load the base pipeline {base}: {exc}") from exc
    params = list(pipe.unet.parameters())
    if len(params) != len(shadow):
        raise UserInputError(
            f"the checkpoint has {len(shadow)} UNet tensors but the base pipeline's UNet has {len(params)}: "
            "give the pipeline the run was trained from (its model.components / model.pretrained folder)"
        )
    for i, (p, s) in enumerate(zip(params, shadow)):
        if p.shape != s.shape:
            raise UserInputError(f"UNet tensor {i} has shape {tuple(s.shape)} in the checkpoint but {tuple(p.shape)} "
                                 "in the base pipeline: give the pipeline the run was trained from")
    with torch.no_grad():
        for p, s in zip(params, shadow):
            p.copy_(s.to(p.dtype))
    pipe = _as_trained(pipe, Path(checkpoint))
    pipe.unet.to(dtype)
    pipe.vae.to(dtype)
    if pipe.image_encoder is not None:
        pipe.image_encoder.to(dtype)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left when saving or replacing failed
    return out
