"""Drag-warped first-frame latents: a dense, local motion cue derived from sparse drags.

The paper's drag encoding (docs/design.md §3) marks one latent cell per drag point; the network
has to learn on its own that the content at a drag's start should appear at its current
point. Stable Video Diffusion's motion prior makes that learnable for the released model,
but a small UNet trained from scratch on a few hundred clips learns it very slowly
(recipes/default-model/README.md). :func:`warp_latents_by_drags` gives such a model
the cue directly: for every frame ``n`` it moves the first frame's latent along the drags
(a smooth backward warp whose displacement near each drag's frame-``n`` point is the
drag's displacement and fades to zero away from all drags). The UNet option
``drag_warp_image_latents`` concatenates this warped latent, frame by frame, in place of
the repeated first-frame latent (it is off in the paper's configuration).

The warp's two settings (radius, background weight) have one home, :class:`WarpSettings`:
its defaults are the functions' defaults and the UNet's constructor defaults, and a UNet's
own settings are read from its configuration by :meth:`WarpSettings.from_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class WarpSettings:
    """Settings of the drag displacement field (:func:`drag_displacement_field`), in latent cells.

    Attributes:
        radius: Gaussian radius of a drag's influence, in latent cells (> 0).
        background: weight of "no motion" (> 0); smaller makes the displacement at a drag's
            point closer to the full drag.

    Raises:
        ValueError: ``radius`` or ``background`` not > 0.
    """

    radius: float = 1.5
    background: float = 0.02

    def __post_init__(self) -> None:
        if not (self.radius > 0 and self.background > 0):
            raise ValueError(f"radius and background_weight must be > 0, got {self.radius} and {self.background}")

    @classmethod
    def from_config(cls, config: Any) -> "WarpSettings":
        """The settings a drag UNet was configured with (``drag_warp_radius``, ``drag_warp_background``)."""
        return cls(radius=float(config.drag_warp_radius), background=float(config.drag_warp_background))


#: The default settings (those of the embedded default model).
DEFAULT_WARP = WarpSettings()


def drag_displacement_field(
    drags: torch.Tensor,
    height: int,
    width: int,
    radius: float = DEFAULT_WARP.radius,
    background_weight: float = DEFAULT_WARP.background,
) -> torch.Tensor:
    """Backward displacement field of every frame, in latent cells.

    For an output cell centre ``p`` (cell units, x right / y down) of frame ``n``:

    ``d(p) = Σ_k w_k(p)·(u_k − v_k^n) / (b + Σ_k w_k(p))``, with
    ``w_k(p) = exp(−|p − v_k^n|² / (2·radius²))`` for each used drag slot ``k`` (start
    ``u_k``, frame-``n`` point ``v_k^n``, both scaled from normalised coordinates to cells)
    and ``b = background_weight``. So ``p + d(p)`` is where the cell's content was in frame
    0: at a drag's current point it is (almost exactly) the drag's start, far from every
    drag it is ``p`` itself. Unused slots (all zeros, docs/design.md §2) contribute nothing; at
    frame 0 (``v = u``) the field is zero.

    Args:
        drags: float ``(B, N, K, 4)`` normalised drags (docs/design.md §2).
        height, width: latent size ``h, w`` in cells.
        radius: Gaussian radius of a drag's influence, in cells (> 0).
        background_weight: weight of "no motion" (> 0); smaller makes the displacement at
            a drag's point closer to the full drag.

    Returns:
        ``(B, N, h, w, 2)`` displacement ``(dx, dy)`` in cells, dtype of ``drags``.

    Raises:
        ValueError: bad drag shape, ``radius ≤ 0`` or ``background_weight ≤ 0``.
    """
    if drags.ndim != 4 or drags.shape[-1] != 4:
        raise ValueError(f"drags must have shape (B, N, K, 4), got {tuple(drags.shape)}")
    WarpSettings(radius, background_weight)  # checks both
    start = torch.stack([drags[..., 0] * width, drags[..., 1] * height], dim=-1)  # (B, N, K, 2)
    current = torch.stack([drags[..., 2] * width, drags[..., 3] * height], dim=-1)
    used = drags.ne(0).any(dim=-1).any(dim=1)  # (B, K): slot holds a drag in some frame
    ys = torch.arange(height, dtype=drags.dtype, device=drags.device) + 0.5
    xs = torch.arange(width, dtype=drags.dtype, device=drags.device) + 0.5
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
    diff = grid[None, None, None] - current[:, :, :, None, None]  # (B, N, K, h, w, 2)
    weight = torch.exp(-(diff**2).sum(-1) / (2.0 * radius**2))  # (B, N, K, h, w)
    weight = weight * used[:, None, :, None, None].to(weight.dtype)
    shift = (start - current)[:, :, :, None, None]  # (B, N, K, 1, 1, 2)
    numerator = (weight[..., None] * shift).sum(dim=2)  # (B, N, h, w, 2)
    return numerator / (background_weight + weight.sum(dim=2))[..., None]


def warp_latents_by_drags(
    latents: torch.Tensor,
    drags: torch.Tensor,
    radius: float = DEFAULT_WARP.radius,
    background_weight: float = DEFAULT_WARP.background,
) -> torch.Tensor:
    """Warp a first-frame latent along the drags to every frame (bilinear backward warp).

    Frame ``n`` of the result samples ``latents`` at ``p + d_n(p)``
    (:func:`drag_displacement_field`), with border replication outside the latent. Frame 0
    (and every frame of a video without drags) equals ``latents`` exactly.

    Args:
        latents: ``(B, C, h, w)`` first-frame latent (any scaling).
        drags: ``(B, N, K, 4)`` normalised drags (docs/design.md §2).
        radius, background_weight: see :func:`drag_displacement_field`.

    Returns:
        ``(B, N, C, h, w)`` in the dtype of ``latents``.

    Raises:
        ValueError: mismatched batch sizes or bad shapes.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (B, C, h, w), got {tuple(latents.shape)}")
    if drags.ndim != 4 or drags.shape[0] != latents.shape[0]:
        raise ValueError(f"drags must be (B, N, K, 4) with B = {latents.shape[0]}, got {tuple(drags.shape)}")
    b, c, h, w = latents.shape
    field = drag_displacement_field(drags.float(), h, w, radius, background_weight)  # (B, N, h, w, 2)
    return _backward_warp(latents, field)


def warp_images_by_drags(
    images: torch.Tensor,
    drags: torch.Tensor,
    cell_size: int,
    radius: float = DEFAULT_WARP.radius,
    background_weight: float = DEFAULT_WARP.background,
) -> torch.Tensor:
    """Warp full-resolution images along the drags with the latent-grid displacement field.

    The field of :func:`drag_displacement_field` is computed on the latent grid (cells of
    ``cell_size`` pixels, e.g. the VAE's 8), up-sampled bilinearly to pixels and scaled to
    pixel units, so the images move as :func:`warp_latents_by_drags` moves their latents
    (the same displacement at cell centres, bilinear in between). Used by the pipeline's detail transfer (not in the paper).

    Args:
        images: ``(B, C, H, W)``, ``H`` and ``W`` multiples of ``cell_size``.
        drags: ``(B, N, K, 4)`` normalised drags (docs/design.md §2).
        cell_size: pixels per latent cell (≥ 1).
        radius, background_weight: see :func:`drag_displacement_field` (radius in cells).

    Returns:
        ``(B, N, C, H, W)`` in the dtype of ``images``; frame 0 equals ``images`` exactly.

    Raises:
        ValueError: bad shapes, or sizes that are not multiples of ``cell_size``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if drags.ndim != 4 or drags.shape[0] != images.shape[0]:
        raise ValueError(f"drags must be (B, N, K, 4) with B = {images.shape[0]}, got {tuple(drags.shape)}")
    b, c, height, width = images.shape
    if cell_size < 1 or height % cell_size or width % cell_size:
        raise ValueError(f"image size {height}x{width} must be a multiple of cell_size {cell_size}")
    h, w = height // cell_size, width // cell_size
    field = drag_displacement_field(drags.float(), h, w, radius, background_weight)  # (B, N, h, w, 2) cells
    n = field.shape[1]
    coarse = field.permute(0, 1, 4, 2, 3).reshape(b * n, 2, h, w)
    fine = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False) * cell_size
    fine = fine.reshape(b, n, 2, height, width).permute(0, 1, 3, 4, 2)
    still = field.abs().amax(dim=(2, 3, 4)) == 0  # (B, N): interpolation keeps zeros exact, but be explicit
    return _backward_warp(images, torch.where(still[:, :, None, None, None], torch.zeros_like(fine), fine))


def _backward_warp(images: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Frame ``n`` samples ``images`` at ``p + field[:, n](p)`` (bilinear, border replication).

    ``images`` ``(B, C, h, w)``; ``field`` ``(B, N, h, w, 2)`` in grid cells. Returns
    ``(B, N, C, h, w)``; frames whose field is zero everywhere are exact copies.
    """
    b, c, h, w = images.shape
    n = field.shape[1]
    ys = torch.arange(h, dtype=torch.float32, device=images.device) + 0.5
    xs = torch.arange(w, dtype=torch.float32, device=images.device) + 0.5
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2)
    source = grid + field.to(torch.float32)  # cell coordinates of the source, (B, N, h, w, 2)
    normalised = torch.stack([source[..., 0] / w, source[..., 1] / h], dim=-1) * 2.0 - 1.0  # align_corners=False
    src = images[:, None].expand(b, n, c, h, w).reshape(b * n, c, h, w)
    warped = F.grid_sample(
        src.float(), normalised.reshape(b * n, h, w, 2), mode="bilinear", padding_mode="border", align_corners=False
    )
    warped = warped.reshape(b, n, c, h, w).to(images.dtype)
    # frame(s) with no displacement stay bit-exact copies (bilinear sampling at cell centres is exact up to rounding)
    still = field.abs().amax(dim=(2, 3, 4)) == 0  # (B, N)
    return torch.where(still[:, :, None, None, None], images[:, None].expand_as(warped), warped)
