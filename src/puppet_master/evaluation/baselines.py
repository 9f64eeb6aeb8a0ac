"""Non-learned baselines for drag-conditioned video generation (docs/design.md §7).

* ``static``: frame 0 repeated — no motion at all.
* ``warp``: frame 0 warped by a thin-plate spline whose handles follow the drags, with
  fixed anchors on the image border and on background pixels, frame by frame.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import optional_imports

with optional_imports("eval"):
    from scipy.interpolate import RBFInterpolator


def static_video(frame0: np.ndarray, num_frames: int) -> np.ndarray:
    """Frame 0 repeated: uint8 ``(N, H, W, 3)``."""
    return np.repeat(np.asarray(frame0)[None], num_frames, axis=0)


def _anchor_points(frame0: np.ndarray, starts: np.ndarray, stride: int, keep_out: float, white: int) -> np.ndarray:
    h, w = frame0.shape[:2]
    border = []
    for t in np.linspace(0, 1, 9):
        border += [(t * w, 0.0), (t * w, float(h)), (0.0, t * h), (float(w), t * h)]
    ys, xs = np.mgrid[stride // 2 : h : stride, stride // 2 : w : stride]
    background = (frame0[ys, xs, :3] >= white).all(-1)
    grid = np.stack([xs[background] + 0.5, ys[background] + 0.5], -1)
    pts = np.concatenate([np.array(border), grid]) if len(grid) else np.array(border)
    if len(starts):
        dist = np.linalg.norm(pts[:, None] - starts[None], axis=-1).min(1)
        pts = pts[dist > keep_out]
    return np.unique(np.round(pts, 3), axis=0)


def warp_video(
    frame0: np.ndarray,
    trajectories: np.ndarray,
    anchor_stride: int = 16,
    keep_out: float = 24.0,
    white: int = 245,
    grid_step: int = 4,
) -> np.ndarray:
    """Thin-plate-spline warp of frame 0 driven by the drags.

    For frame ``n`` the warp maps each drag's current point ``v_k^n`` back to its start
    ``u_k`` (backward warping), with zero displacement at the anchors: 36 points on the
    image border and background (near-white) pixels on a grid, except within
    ``keep_out`` pixels of a drag start. The displacement field is evaluated on a
    ``grid_step`` grid and interpolated, then applied with ``cv2.remap`` (white fill).

    Args:
        frame0: uint8 ``(H, W, 3)``.
        trajectories: ``(K, N, 2)`` drags in pixels (x right, y down).

    Returns:
        uint8 ``(N, H, W, 3)``; frame 0 equals ``frame0``.
    """
    frame0 = np.asarray(frame0)
    traj = np.asarray(trajectories, dtype=np.float64)
    h, w = frame0.shape[:2]
    n = traj.shape[1]
    starts = traj[:, 0]
    anchors = _anchor_points(frame0, starts, anchor_stride, keep_out, white)
    gy, gx = np.mgrid[0 : h + grid_step : grid_step, 0 : w + grid_step : grid_step].astype(np.float64)
    grid = np.stack([gx.ravel(), gy.ravel()], -1)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = [frame0.copy()]
    for f in range(1, n):
        handles = traj[:, f]
        ctrl = np.concatenate([handles, anchors])
        disp = np.concatenate([starts - handles, np.zeros_like(anchors)])
        field = RBFInterpolator(ctrl, disp, kernel="thin_plate_spline", smoothing=1e-3)(grid).reshape(*gx.shape, 2)
        # bilinear upsampling of the coarse field: pixel (x, y) sits at grid coordinate (x, y) / grid_step
        coarse = field.astype(np.float32)
        map_field = np.stack(
            [cv2.remap(coarse[..., c], (xs + 0.5) / grid_step, (ys + 0.5) / grid_step, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for c in range(2)],
            axis=-1,
        )
        map_x = xs + map_field[..., 0]
        map_y = ys + map_field[..., 1]
        out.append(cv2.remap(frame0, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255)))
    return np.stack(out)
