"""The drag-conditioning layers: modulation net (A) and drag tokens (B) (paper §3.2, docs/design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..drags.encoding import encode_drags, used_drag_slots
from ..drags.warp import warp_latents_by_drags


class DragEmbedding(nn.Module):
    """Small conv net mapping a drag encoding to modulation parameters (paper eq. 4).

    ``conv_in`` (3×3, ``6·K → widths[0]``) → SiLU → for each consecutive pair of
    ``widths``: 3×3 conv at the same width + SiLU, 3×3 conv to the next width + SiLU
    → ``conv_out`` (3×3, to ``out_channels``), zero-initialised so that training starts
    from the unmodulated backbone. Parameter names (``conv_in``, ``blocks.{m}``,
    ``conv_out``) follow the authors' release.

    Shapes: input ``(B·N, 6·K, h, w)`` → output ``(B·N, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int] = (256, 320, 320)) -> None:
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("drag_embedder_out_channels must name at least one width")
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
        self.conv_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, encoding: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv_in(encoding))
        for conv in self.blocks:
            x = F.silu(conv(x))
        return self.conv_out(x)


def sincos_pos_embed_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2D sine-cosine positional embedding on an ``height × width`` grid (MAE style).

    The first ``dim/2`` channels encode the column (x) index and the last ``dim/2``
    the row (y) index; each half is ``[sin(p·ω_i), cos(p·ω_i)]`` with
    ``ω_i = 10000^(−i/(dim/4))``. Computed in float64.

    Returns:
        float64 tensor ``(dim, height, width)``.

    Raises:
        ValueError: if ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"pos_embed_dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def one_axis(pos: np.ndarray) -> np.ndarray:
        out = pos[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (P, dim/2)

    ex = one_axis(np.arange(width, dtype=np.float64))  # (W, dim/2)
    ey = one_axis(np.arange(height, dtype=np.float64))  # (H, dim/2)
    grid = np.concatenate(
        [np.broadcast_to(ex[None], (height, width, dim // 2)), np.broadcast_to(ey[:, None], (height, width, dim // 2))],
        axis=-1,
    )
    return torch.from_numpy(np.ascontiguousarray(grid.transpose(2, 0, 1)))


def make_drag_token_mlp(in_features: int, width: int) -> nn.Sequential:
    """``Linear(in → width) → SiLU → Linear(width → width)``; keys ``0.*`` and ``2.*`` as released."""
    return nn.Sequential(nn.Linear(in_features, width), nn.SiLU(), nn.Linear(width, width))


def sample_at_points(features: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``features`` at normalised points (border padding, ``align_corners=False``).

    Args:
        features: ``(M, C, h, w)``.
        points: ``(M, K, 2)`` normalised ``(x, y)`` in [0, 1].

    Returns:
        ``(M, K, C)``.
    """
    grid = (points * 2 - 1)[:, None]  # (M, 1, K, 2)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


@dataclass
class DragConditioning:
    """Everything the drag blocks need, derived once from the drags of a call.

    The pipeline prepares it once per generation (not per denoising step) and passes it
    to every UNet evaluation.

    Attributes:
        drags: float ``(B, N, K, 4)`` (docs/design.md §2).
        flat: ``(B·N, K, 4)``: the same, frames folded into the batch.
        used: bool ``(B, K)``: slots that hold a drag in some frame.
        used_flat: ``(B·N, K)`` float mask of the same, one row per frame (for drag tokens).
        encodings: ``{(h, w): (B·N, 6·K, h, w)}`` for each resolution requested.
    """

    drags: torch.Tensor
    flat: torch.Tensor
    used: torch.Tensor
    encodings: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    used_flat: torch.Tensor | None = None
    _warp_cache: tuple | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.used_flat is None:
            self.used_flat = self.used.repeat_interleave(self.drags.shape[1], dim=0).to(self.drags.dtype)

    @classmethod
    def prepare(cls, drags: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> "DragConditioning":
        enc = {tuple(s): encode_drags(drags, tuple(s)).flatten(0, 1) for s in dict.fromkeys(map(tuple, sizes))}
        return cls(drags=drags, flat=drags.flatten(0, 1), used=used_drag_slots(drags), encodings=enc)

    @property
    def num_frames(self) -> int:
        return int(self.drags.shape[1])

    def warped_image_latents(self, image_latents: torch.Tensor, radius: float, background_weight: float) -> torch.Tensor:
        """:func:`~puppet_master.drags.warp.warp_latents_by_drags` of ``image_latents (B, C, h, w)`` by these drags.

        Returns ``(B, N, C, h, w)``. The result for the last ``image_latents`` tensor (same
        object) and settings is kept, so a sampling loop that passes the same first-frame
        latent at every step warps it once.
        """
        key = (radius, background_weight)
        cached = self._warp_cache
        if cached is not None and cached[0] is image_latents and cached[1] == key:
            return cached[2]
        warped = warp_latents_by_drags(image_latents, self.drags, radius, background_weight)
        self._warp_cache = (image_latents, key, warped)
        return warped

    def encoding(self, h: int, w: int) -> torch.Tensor:
        key = (h, w)
        if key not in self.encodings:
            self.encodings[key] = encode_drags(self.drags, key).flatten(0, 1)
        return self.encodings[key]
