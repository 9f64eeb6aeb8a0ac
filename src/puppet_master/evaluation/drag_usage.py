"""Drag-usage probe: does a drag UNet use its drags? (a training diagnostic of ours).

Full evaluation samples whole videos and tracks points (minutes per clip set on a CPU).
This probe needs one UNet call per clip, σ and condition: it noises the clean latents of
held-out clips at fixed σ, denoises them once with the clip's drags and once with the
drags dropped (all zeros, the CFG null condition), and compares the squared error on the
latent cells that move. A model that ignores its drags scores the same both ways; the
relative gain grows as it learns to follow them (recipes/default-model/README.md, "Why the recipe looks like this").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import edm
from ..training.data import LatentCacheDataset


@dataclass
class DragUsage:
    """Probe result at one σ: mean squared error on moving cells (summed over channels)."""

    sigma: float
    error_with_drags: float
    error_without_drags: float
    error_copy_first_frame: float  # the error of predicting frame 0 everywhere
    num_clips: int

    @property
    def gain(self) -> float:
        """``1 − with / without``: the share of the moving-cell error the drags remove."""
        return 1.0 - self.error_with_drags / self.error_without_drags


@torch.no_grad()
def drag_usage(unet, clips: list[dict], sigmas: tuple[float, ...] = (0.5, 1.5, 4.0), threshold: float = 0.1,
               seed: int = 0) -> list[DragUsage]:
    """Run the probe on latent clips.

    Args:
        unet: a :class:`~puppet_master.models.UNetDragSpatioTemporalConditionModel` (eval mode).
        clips: dicts with ``latents (N, C, h, w)`` (scaled), ``image_latents (C, h, w)``,
            ``embedding (1, D)`` and ``drags (N, K, 4)`` normalised — the latent-cache
            layout of :mod:`puppet_master.training.data`.
        sigmas: EDM noise levels to probe.
        threshold: a cell moves when ``mean_c |x_n − x_0|`` exceeds this; clips with fewer
            than 4 moving cells are skipped.
        seed: the noise of clip ``i`` is drawn from ``Generator().manual_seed(seed + i)``
            (the same noise for both conditions and every σ).

    Returns:
        One :class:`DragUsage` per σ.

    Raises:
        ValueError: no clip has 4 moving cells.
    """
    p = next(unet.parameters())
    errors = {s: [0.0, 0.0] for s in sigmas}  # σ -> [with drags, without]
    copy_error = 0.0
    used = 0
    for i, clip in enumerate(clips):
        x = clip["latents"][None].to(p.device, p.dtype)
        mask = ((x - x[:, :1]).abs().mean(2, keepdim=True) > threshold).to(x.dtype)
        if mask.sum() < 4:
            continue
        used += 1
        copy_error += float(((x[:, :1] - x) ** 2 * mask).sum() / mask.sum())
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + i)).to(x.device, x.dtype)
        drags = clip["drags"][None].to(x.device, x.dtype)
        image_latents = clip["image_latents"][None].to(x.device, x.dtype)
        embedding = clip["embedding"][None].to(x.device, x.dtype)
        for s in sigmas:
            sigma = torch.full((1,), float(s), device=x.device, dtype=x.dtype)
            pc = edm.preconditioning(edm.append_dims(sigma, x.ndim))
            noisy = x + s * eps
            for slot, d in enumerate((drags, torch.zeros_like(drags))):
                out = unet(pc.c_in * noisy, pc.c_noise.reshape(1), image_latents=image_latents,
                           encoder_hidden_states=embedding, drags=d,
                           force_drop_ids=torch.zeros(1, device=x.device)).sample
                denoised = edm.denoise(out, noisy, sigma)
                errors[s][slot] += float(((denoised - x) ** 2 * mask).sum() / mask.sum())
    if not used:
        raise ValueError(f"no clip has 4 latent cells moving more than threshold={threshold}")
    return [DragUsage(s, errors[s][0] / used, errors[s][1] / used, copy_error / used, used) for s in sigmas]


def load_latent_clips(folder: str | Path) -> list[dict]:
    """Every clip of a latent-cache folder (``*.safetensors`` from ``puppet-master cache-latents``)."""
    ds = LatentCacheDataset(folder)
    return [ds[i] for i in range(len(ds))]
