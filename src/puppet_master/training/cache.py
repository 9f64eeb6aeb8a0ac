"""Latent cache: encode videos with the VAE and first frames with the image encoder once.

The authors train from cached SVD latents to save memory and time (App. C). The cache
is a folder of ``NAME.safetensors`` files with the keys of
:mod:`puppet_master.training.data` (``latents`` scaled by the VAE factor,
``image_latents`` unscaled VAE mean, ``embedding``, ``drags``) and the category in the
metadata; :class:`~puppet_master.training.data.LatentCacheDataset` reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .. import limits
from ..data.splits import load_dragamove_example, load_split_example
from ..drags.encoding import used_drag_slots
from ..errors import UserInputError
from ..pipelines.loading import load_pipeline


@torch.no_grad()
def cache_example(pipe, frames: np.ndarray, drags: torch.Tensor, category: str, out_file: Path) -> None:
    """Encode one clip and write it atomically.

    Args:
        pipe: a :class:`~puppet_master.pipelines.PuppetMasterPipeline` (its VAE and image encoder).
        frames: uint8 ``(N, H, W, 3)``.
        drags: ``(N, K, 4)`` normalised.
    """
    device = pipe._execution_device
    video = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).to(device)  # (N, 3, H, W) in [0, 1]
    latents = pipe.encode_first_frame(video * 2 - 1)  # posterior means of every frame
    tensors = {
        "latents": (latents * pipe.vae.config.scaling_factor).float().cpu().contiguous(),
        "image_latents": latents[0].float().cpu().contiguous(),
        "embedding": pipe.encode_image_embedding(video[:1])[0].float().cpu().contiguous(),
        "drags": drags.float().cpu().contiguous(),
    }
    tmp = out_file.with_name(f".{out_file.name}.partial")
    try:
        save_file(tensors, str(tmp), metadata={"category": category})
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)  # an interrupted write leaves no partial file


def flip_example(frames: np.ndarray, drags: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Mirror a clip left-right: frames ``(N, H, W, 3)`` and normalised drags ``(N, K, 4)``.

    x becomes 1 − x in both the start and the current point of every *used* slot; unused
    slots stay all zeros (docs/design.md §2), so they still mean "no drag".
    """
    flipped = drags.clone()
    used = used_drag_slots(drags[None])[0]  # (K,)
    flipped[:, used, 0] = 1.0 - drags[:, used, 0]
    flipped[:, used, 2] = 1.0 - drags[:, used, 2]
    return np.ascontiguousarray(frames[:, :, ::-1]), flipped


def build_cache(data: str | Path, model: str | None, out: str | Path, size: int = 256, device: str = "cpu",
                limit: int | None = None, progress: bool = True, flip: bool = False) -> int:
    """Encode every example of a split / Drag-a-Move folder into ``out``; existing files are skipped.

    With ``flip`` every clip is also stored mirrored left-right (``NAME_flip.safetensors``,
    see :func:`flip_example`): twice the training clips for the price of encoding.

    Returns:
        Number of files written in this call.

    A run stopped early (an error, Ctrl-C, SIGTERM through the command line) keeps the
    files it finished and leaves no partial file; an ``out`` folder it created and wrote
    nothing to is removed again.

    Raises:
        UserInputError: bad folders or model, ``size`` above
            :data:`~puppet_master.limits.MAX_MODEL_SIDE` or one the model cannot work at (a
            multiple of its VAE and UNet strides); nothing is created then.
    """
    data, out = Path(data), Path(out)
    limits.check_model_side(size, "--size")
    if not data.is_dir():
        raise UserInputError(f"data folder {str(data)!r} does not exist")
    files = sorted(data.glob("*.pkl")) or sorted(data.glob("*.json"))
    loader = load_dragamove_example if files and files[0].suffix == ".pkl" else load_split_example
    if limit:
        files = files[:limit]
    if not files:
        raise UserInputError(f"{str(data)!r} holds no examples")
    for part in (out, *out.parents):
        if part.exists() and not part.is_dir():
            raise UserInputError(f"--out {str(out)!r}: {str(part)!r} is a file, not a folder")
    pipe = load_pipeline(model, device=device)
    stride = pipe.vae_scale_factor * pipe.unet.spatial_stride
    if size < stride or size % stride:
        raise UserInputError(f"--size must be a positive multiple of {stride} for this model, got {size}")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        for f in tqdm(files, desc="caching latents", disable=not progress):
            target = out / f"{f.stem}.safetensors"
            flipped = out / f"{f.stem}_flip.safetensors"
            if target.exists() and (flipped.exists() or not flip):
                continue
            ex = loader(f, size=size)
            if not target.exists():
                cache_example(pipe, ex.frames, ex.drags, ex.category, target)
                written += 1
            if flip and not flipped.exists():
                cache_example(pipe, *flip_example(ex.frames, ex.drags), ex.category, flipped)
                written += 1
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # nothing was cached: leave no new folder behind
        raise
    return written
