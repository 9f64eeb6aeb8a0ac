"""Motion statistics of an animation from its vertex tracks (paper §4; docs/design.md §6).

Computed on the normalised coordinates of the render step (the clip's bounding box
has largest side 1), so they compare across assets of any size.
"""

from __future__ import annotations

import numpy as np

FEATURE_NAMES = [
    "clip_bbox_x", "clip_bbox_y", "clip_bbox_z",            # size of the box over the whole clip
    "clip_center_x", "clip_center_y", "clip_center_z",      # its location (≈0 after normalisation)
    "max_frame_bbox",                                       # largest single-frame box (largest side)
    "first_frame_bbox",                                     # frame-0 box (largest side)
    "mean_total_displacement", "max_total_displacement",    # per-vertex path length
    "moving_vertex_fraction",                               # share of vertices that move at all
    "rigid_residual_ratio",                                 # motion NOT explained by one global rigid transform
    "num_moving_parts",
]


def _kabsch_residual(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance after the best rigid (rotation + translation) fit of ``a`` onto ``b`` (both (V, 3))."""
    ca, cb = a.mean(0), b.mean(0)
    h = (a - ca).T @ (b - cb)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1, 1, d]) @ u.T
    fitted = (a - ca) @ r.T + cb
    return float(np.sqrt(((fitted - b) ** 2).sum(-1).mean()))


def motion_features(positions: list[np.ndarray], move_eps: float = 0.01) -> np.ndarray:
    """Feature vector (order :data:`FEATURE_NAMES`) of per-part tracks ``[(F, V_p, 3), ...]``.

    The rigid-residual ratio fits one rigid transform (Kabsch) from frame 0 to each frame
    for *all* vertices together: ≈0 when the whole object only translates/rotates.
    """
    pts = np.concatenate([p.astype(np.float64) for p in positions], axis=1)  # (F, V, 3)
    lo, hi = pts.reshape(-1, 3).min(0), pts.reshape(-1, 3).max(0)
    frame_extent = (pts.max(1) - pts.min(1)).max(1)  # (F,)
    steps = np.linalg.norm(np.diff(pts, axis=0), axis=-1)  # (F-1, V)
    total = steps.sum(0) if len(steps) else np.zeros(pts.shape[1])
    disp = np.linalg.norm(pts - pts[:1], axis=-1)  # (F, V)
    rigid = [_kabsch_residual(pts[0], pts[f]) for f in range(1, len(pts))]
    rms_disp = float(np.sqrt((disp[1:] ** 2).mean())) if len(pts) > 1 else 0.0
    moving_parts = sum(
        bool(np.linalg.norm(p - p[:1], axis=-1).max() > move_eps) if len(p) else False for p in positions
    )
    return np.array([
        *(hi - lo), *((hi + lo) / 2),
        float(frame_extent.max()), float(frame_extent[0]),
        float(total.mean()), float(total.max()),
        float((disp.max(0) > move_eps).mean()),
        float(max(rigid) / rms_disp) if rms_disp > 1e-9 else 0.0,
        float(moving_parts),
    ])


def is_static(positions: list[np.ndarray], eps: float = 1e-3) -> bool:
    """True when no vertex moves more than ``eps`` (normalised units) over the clip."""
    return all(float(np.linalg.norm(p - p[:1], axis=-1).max(initial=0.0)) <= eps for p in positions)
