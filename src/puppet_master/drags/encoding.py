"""Multi-resolution drag encoding fed to the drag-modulation nets (paper §3.2, App. A; docs/design.md §3)."""

from __future__ import annotations

import torch

#: Channels per drag slot: start (x, y), frame-n point (x, y), final-frame point (x, y).
CHANNELS_PER_DRAG = 6


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def encode_drags(drags: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Rasterise drags into the ``(B, N, 6·K, h, w)`` encoding of one UNet resolution.

    Every value is −1 except, for each used slot ``k`` and frame ``n``, three cells:
    the start point writes its sub-cell offsets into channels ``6k, 6k+1``, the frame-n
    point into ``6k+2, 6k+3`` and the final-frame point into ``6k+4, 6k+5``. A point
    ``(x, y)`` (normalised, x right / y down) marks cell
    ``(j, i) = (clip(round(w·x − 0.5), 0, w−1), clip(round(h·y − 0.5), 0, h−1))``
    (round half to even) and stores ``(w·x − j, h·y − i)``. A slot whose four values
    are all zero in a frame is left at −1 in that frame.

    Args:
        drags: float ``(B, N, K, 4)`` in the layout of docs/design.md §2.
        size: the block's spatial size ``s`` or ``(h, w)`` (e.g. 32, 16, 8 for
            256×256 images with SVD's VAE).

    Returns:
        Tensor ``(B, N, 6·K, h, w)`` of ``drags.dtype`` on ``drags.device``; equal
        bit for bit to the reference implementation's encoding for square sizes.

    Raises:
        ValueError: if ``drags`` is not 4-D with last dimension 4.
    """
    if drags.ndim != 4 or drags.shape[-1] != 4:
        raise ValueError(f"drags must have shape (B, N, K, 4), got {tuple(drags.shape)}")
    h, w = _as_hw(size)
    b, n, k, _ = drags.shape
    final = drags[:, -1:, :, 2:4].expand(b, n, k, 2)
    points = torch.stack([drags[..., 0:2], drags[..., 2:4], final], dim=3)  # (B, N, K, 3, 2)
    # per-axis Python scalars (no host tensor is created, so this runs inside CUDA-graph capture)
    scaled = torch.stack([points[..., 0] * w, points[..., 1] * h], dim=-1)
    cell = (scaled - 0.5).round().clamp_min(0)
    cell = torch.stack([cell[..., 0].clamp_max(w - 1), cell[..., 1].clamp_max(h - 1)], dim=-1)  # (B, N, K, 3, 2): (j, i)
    offsets = scaled - cell
    used = drags.ne(0).any(dim=-1)  # (B, N, K)
    values = torch.where(used[..., None, None], offsets, torch.full_like(offsets, -1.0))
    flat = (cell[..., 1] * w + cell[..., 0]).long()  # (B, N, K, 3)
    index = flat[..., None, None].expand(b, n, k, 3, 2, 1)
    encoding = torch.full((b, n, k, 3, 2, h * w), -1.0, dtype=drags.dtype, device=drags.device)
    encoding.scatter_(-1, index, values[..., None])
    return encoding.view(b, n, k * CHANNELS_PER_DRAG, h, w)


def used_drag_slots(drags: torch.Tensor) -> torch.Tensor:
    """Bool ``(B, K)``: whether slot ``k`` holds a drag in any frame (unused slots are all zeros)."""
    return drags.ne(0).any(dim=-1).any(dim=1)
