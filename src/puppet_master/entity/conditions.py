"""DragAnything's per-frame conditions: Gaussian trajectory discs and entity-feature discs (Wu et al. 2024, §3.3).

For every frame ``n`` and entity ``k`` with trajectory point ``p_k^n`` and radius ``r_k``
(its mask's largest inscribed circle, capped at 50 px):

* the **trajectory map** gets a 2D Gaussian (σ = 40/200 of the disc's box, cut to the
  disc) resized into the box ``[p − r, p + r]`` (clipped to the image: the Gaussian is
  squeezed there, as in the release), scaled to 0..255, gray copied to 3 channels;
* the **entity map** gets the entity's feature vector on every pixel of the disc of
  radius ``r_k`` around ``p_k^n``.

Later entities overwrite earlier ones where they overlap. All maps are at the model's
pixel resolution (x right, y down); the ControlNet's embedder reduces them 8× to the
latent grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np
import torch

#: Side of the release's Gaussian template and its σ, in template pixels.
TEMPLATE_SIZE = 200
TEMPLATE_SIGMA = 40.0


@lru_cache(maxsize=4)
def gaussian_disc_template(size: int = TEMPLATE_SIZE, sigma: float = TEMPLATE_SIGMA) -> np.ndarray:
    """The release's heat-map stamp: uint8 ``(size, size)``, a Gaussian cut to the inscribed disc, peak 255."""
    idx = np.arange(size, dtype=np.float64) - size / 2
    gauss = np.exp(-(idx[:, None] ** 2 + idx[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)
    disc = cv2.circle(np.zeros((size, size), np.float32), (size // 2, size // 2), size // 2, 1, -1)
    gauss = gauss * disc
    out = (gauss / gauss.max() * 255).astype(np.uint8)
    out.flags.writeable = False
    return out


@dataclass
class DragAnythingConditions:
    """The conditions of one video.

    Attributes:
        trajectory_maps: float32 ``(N, 3, H, W)``, values 0..255 (the release feeds the
            ControlNet this range).
        entity_index: int64 ``(N, H, W)``: index of the entity painted at each pixel, −1
            where none. With :attr:`entity_vectors` it stores the entity maps compactly.
        entity_vectors: ``(K, C_e)`` entity representations (pooled DIFT features).
    """

    trajectory_maps: torch.Tensor
    entity_index: torch.Tensor
    entity_vectors: torch.Tensor

    @property
    def num_frames(self) -> int:
        return int(self.trajectory_maps.shape[0])

    def entity_maps(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Dense entity maps ``(n, C_e, H, W)`` of frames ``start:stop`` (zeros outside the discs)."""
        vectors = self.entity_vectors
        table = torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors])
        idx = self.entity_index[start:stop].to(vectors.device) + 1
        return table[idx].permute(0, 3, 1, 2)


def draganything_conditions(
    trajectories: np.ndarray,
    radii: Sequence[int],
    entity_vectors: torch.Tensor,
    height: int,
    width: int,
) -> DragAnythingConditions:
    """Paint the per-frame trajectory and entity maps.

    Args:
        trajectories: ``(K, N, 2)`` points in pixels of the model's ``width × height``
            image (x right, y down); truncated to whole pixels as in the release.
        radii: ``K`` disc radii in pixels (:func:`~puppet_master.entity.inscribed_radius`).
        entity_vectors: ``(K, C_e)``, one per trajectory.
        height, width: model resolution in pixels.

    Returns:
        :class:`DragAnythingConditions` with ``N`` frames.

    Raises:
        ValueError: mismatched counts or shapes.
    """
    traj = np.asarray(trajectories, dtype=np.float64)
    if traj.ndim != 3 or traj.shape[-1] != 2:
        raise ValueError(f"trajectories must be (K, N, 2), got {traj.shape}")
    k, n = traj.shape[:2]
    if len(radii) != k or entity_vectors.shape[0] != k:
        raise ValueError(f"need one radius and one entity vector per trajectory ({k}), got {len(radii)} / {entity_vectors.shape[0]}")
    template = gaussian_disc_template()
    pts = np.floor(traj).astype(np.int64)
    pts[..., 0] = pts[..., 0].clip(0, width - 1)
    pts[..., 1] = pts[..., 1].clip(0, height - 1)
    heat = np.zeros((n, height, width), np.uint8)
    index = np.full((n, height, width), -1, np.int64)
    for f in range(n):
        for e in range(k):
            cx, cy = (int(v) for v in pts[e, f])
            r = int(radii[e])
            x1, x2 = max(cx - r, 0), min(cx + r, width - 1)
            y1, y2 = max(cy - r, 0), min(cy + r, height - 1)
            if x2 - x1 > 3 and y2 - y1 > 3:
                heat[f, y1:y2, x1:x2] = cv2.resize(template, (x2 - x1, y2 - y1))
            disc = cv2.circle(np.zeros((height, width), np.uint8), (cx, cy), r, 1, -1).astype(bool)
            index[f][disc] = e
    maps = torch.from_numpy(heat).float()[:, None].expand(n, 3, height, width).contiguous()
    return DragAnythingConditions(trajectory_maps=maps, entity_index=torch.from_numpy(index), entity_vectors=entity_vectors)
