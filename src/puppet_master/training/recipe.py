"""The embedded default model's training on one accelerator (or, slowly, on CPU), within a time budget.

``recipes/default-model/train_default_model_gpu.py`` runs it; the steps it took are written to its log
so that a rerun with the same step counts and seeds repeats the recipe. Three stages:

1. :func:`~puppet_master.training.vae.train_vae_fast`: the image VAE, from the previous
   default model's VAE, on crops of the training frames, synthetic objects and photographs.
2. :func:`encode_clips`: every training clip (and its mirror image) through the new VAE,
   held in device memory; the latent scaling factor is set to 1 / std of the latents.
3. :func:`train_unet_in_memory`: the drag UNet, from the previous default model's UNet,
   with the EDM loss of :func:`~puppet_master.training.losses.edm_denoising_loss` on
   those latents (stage 3 of the recipe: moving clips drawn 80 % of the time, moving
   latent cells weighted up to 5×, CFG dropout, EMA).

Unlike :class:`~puppet_master.training.Trainer` (accelerate, latent-cache files, one
DataLoader item per clip) the data sit in one tensor on the device and every random draw
is made there from one seeded generator, so a small model keeps an accelerator busy.
This module imports no pydantic.
"""

from __future__ import annotations

import copy
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from .. import edm
from ..data.splits import load_split_example, split_video_path
from ..errors import UserInputError
from .cache import flip_example
from .loop import LoopSettings, TrainingLoop
from .losses import edm_denoising_loss, largest_drag_motion


def load_split_clips(folder: str | Path, limit: int | None = None, workers: int = 8) -> list:
    """Every example of a split folder (``NAME.json`` + ``NAME.{gif,webp,mp4}``) at 256×256.

    Returns:
        list of :class:`~puppet_master.data.splits.EvalExample` sorted by name.

    Raises:
        UserInputError: missing folder, no examples, unreadable example.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"data folder {str(folder)!r} does not exist")
    metas = [m for m in sorted(folder.glob("*.json")) if split_video_path(m) is not None][:limit]
    if not metas:
        raise UserInputError(f"{str(folder)!r} holds no clips (NAME.json + NAME.gif/.webp)")
    if workers <= 1 or len(metas) < 16:
        return [load_split_example(m) for m in metas]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(load_split_example, metas, chunksize=8))


@torch.no_grad()
def encode_clips(vae, examples: list, device: str, flip: bool = True, batch_frames: int = 112) -> dict:
    """Posterior means of every frame of ``examples`` (and of their mirror images with ``flip``).

    Returns:
        dict of device tensors: ``latents`` float32 ``(M, N, C, h, w)`` *unscaled*,
        ``drags`` ``(M, N, K, 4)`` normalised, ``moving`` ``(M,)`` float32 largest drag
        motion (:func:`~puppet_master.training.losses.largest_drag_motion`).
    """

    clips, drag_list = [], []
    for ex in examples:
        clips.append(ex.frames)
        drag_list.append(ex.drags)
        if flip:
            frames_f, drags_f = flip_example(ex.frames, ex.drags)
            clips.append(frames_f)
            drag_list.append(drags_f)
    n = clips[0].shape[0]
    flat = np.concatenate(clips)  # (M·N, H, W, 3) uint8
    out = []
    for i in range(0, len(flat), batch_frames):
        x = torch.from_numpy(flat[i : i + batch_frames]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        # float32 (no autocast): these latents are the UNet's targets and its first-frame conditioning,
        # which the pipeline computes in float32
        z = vae.encode(x.contiguous(memory_format=torch.channels_last)).latent_dist.mode()
        out.append(z.float())
    lat = torch.cat(out)
    lat = lat.reshape(len(clips), n, *lat.shape[1:])
    drags = torch.stack(drag_list).float().to(device)
    moving = torch.tensor([largest_drag_motion(d) for d in drag_list], dtype=torch.float32, device=device)
    return {"latents": lat, "drags": drags, "moving": moving}


@dataclass
class UNetRecipeConfig:
    """Options of :func:`train_unet_in_memory` (stage 3 of ``recipes/default-model/configs/default-model-stage3.yaml`` by default)."""

    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    p_mean: float = edm.P_MEAN
    p_std: float = edm.P_STD
    cond_dropout_prob: float = 0.1
    image_dropout_prob: float = 0.1
    motion_weight: float = 4.0
    motion_scale: float = 0.25
    min_drag_motion: float = 0.04
    moving_share: float = 0.8
    seed: int = 0


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total))))


def train_unet_in_memory(unet, data: dict, scaling_factor: float, cfg: UNetRecipeConfig, steps: int | None,
                         budget_s: float, device: str, log=None, save=None, save_every_s: float = 60.0) -> dict:
    """Fine-tune the drag UNet on latents held in device memory.

    The optimizer steps are :class:`~puppet_master.training.loop.TrainingLoop`'s (budget
    planning, the non-finite policy, EMA, periodic saving); this function draws the batches.

    Args:
        unet: :class:`~puppet_master.models.UNetDragSpatioTemporalConditionModel` (float32);
            moved to ``device``.
        data: :func:`encode_clips` output (unscaled latents).
        scaling_factor: the VAE's latent scaling factor (the UNet sees ``latents × factor``;
            its first-frame latent stays unscaled, as in the pipeline).
        cfg: optimisation and loss settings.
        steps: optimizer steps, or ``None`` to fit them into ``budget_s`` (timed over the
            first steps; reported as ``steps_planned``).
        budget_s: wall-clock limit in seconds.
        log: ``f(dict)`` every 25 steps; save: ``f(ema_unet, step)`` every ``save_every_s``
            seconds and at the end, given a float32 copy of the UNet holding the EMA weights.

    Returns:
        report dict: ``steps_planned``, ``steps_done``, ``seconds``, ``loss`` (mean of the last
        50 steps), ``skipped_steps``.

    Raises:
        TrainingDiverged: the loss stayed non-finite (the loop's policy); the last save stands.
    """
    use_cuda = str(device).startswith("cuda")
    unet = unet.to(device).train()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    latents = data["latents"] * scaling_factor
    image_latents = data["latents"][:, 0]
    drags = data["drags"]
    m, n = latents.shape[:2]
    dim = unet.config.cross_attention_dim
    dim = dim if isinstance(dim, int) else dim[0]
    moving_idx = torch.nonzero(data["moving"] >= cfg.min_drag_motion).flatten()
    if len(moving_idx) == 0:
        moving_idx = torch.arange(m, device=device)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ema = EMAModel(params, decay=cfg.ema_decay)
    frame_w = edm.frame_weights(n, device=device)
    b = cfg.batch_size

    def batches():
        while True:
            from_moving = torch.rand(b, generator=g, device=device) < cfg.moving_share
            pick_moving = moving_idx[(torch.rand(b, generator=g, device=device) * len(moving_idx)).long()
                                     .clamp(max=len(moving_idx) - 1)]
            pick_all = (torch.rand(b, generator=g, device=device) * m).long().clamp(max=m - 1)
            idx = torch.where(from_moving, pick_moving, pick_all)
            sigma = edm.sigma_from_normal(torch.randn(b, generator=g, device=device), cfg.p_mean, cfg.p_std)
            eps = torch.randn(latents[idx].shape, generator=g, device=device)
            u = torch.rand(b, 2, generator=g, device=device)
            yield idx, sigma, eps, u

    def compute_loss(batch):
        idx, sigma, eps, u = batch
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda):
            loss = edm_denoising_loss(
                unet, latents[idx], image_latents[idx], torch.zeros(b, 1, dim, device=device), drags[idx], sigma, eps,
                u[:, 0] < cfg.cond_dropout_prob, u[:, 1] < cfg.image_dropout_prob, frame_w,
                cfg.motion_weight, cfg.motion_scale,
            )
        return loss, {}

    def ema_copy():
        model = copy.deepcopy(unet).float()
        ema.copy_to([p for p in model.parameters() if p.requires_grad])
        return model.eval()

    loop = TrainingLoop(
        unet, opt, LoopSettings(steps=steps, budget_s=budget_s, grad_clip=cfg.grad_clip, save_every_s=save_every_s),
        params=params, ema=ema,
        lr_at=lambda step, planned: (lr_factor(step, planned, cfg.warmup_steps) if planned is not None
                                     else min(1.0, (step + 1) / cfg.warmup_steps)),
        on_log=(lambda step, record: log({"stage": "unet", "step": step, **record})) if log else None,
        on_save=(lambda step: save(ema_copy(), step)) if save else None,
    )
    report = loop.run(batches(), compute_loss)
    return {"steps_planned": report.steps_planned, "steps_done": report.steps_done, "seconds": report.seconds,
            "loss": report.recent_loss, "skipped_steps": report.skipped_steps}
