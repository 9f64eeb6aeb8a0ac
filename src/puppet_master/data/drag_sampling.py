"""Sampling drags from rendered animations (paper §4; docs/design.md §6).

For a view and a random start frame: every *moving* part contributes one drag whose
origin is one of its candidate surface points that is *visible* (inside the image, not
occluded) at the start frame, chosen with probability ∝ its total 3D displacement over
the clip window; assets without separate parts (one mesh) get a random number of drags
drawn the same way. Trajectories are projected to pixels, near-duplicates are removed
(Σ_n ‖v_i^n − v_j^n‖₂ ≤ δ = 20·N px at 256×256) and at most K_max are kept.

Each sample is saved as ``NAME.json`` (schema below) beside ``NAME.gif`` (the clip on
white), which is also the evaluation split format, plus ``NAME_tracks.gif`` with the
drags drawn when asked::

    {"asset": "...", "view": 0, "start_frame": 2, "num_frames": 14, "category": "...",
     "render": "relative/path/to/render/folder",
     "image_size": [W, H], "coordinates": "pixels",
     "drags": [{"trajectory": [[x, y], ... N points], "part": "part_door_0", "candidate": 17}]}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..drags import K_MAX, deduplicate_trajectories
from ..video import draw_drags, write_video
from .renders import RenderedAsset


@dataclass
class DragSample:
    asset: str
    view: int
    start_frame: int
    trajectories: np.ndarray  # (K, N, 2) pixels
    parts: list[str]
    candidates: list[int]


def sample_drags(
    render: RenderedAsset,
    num_frames: int = 14,
    samples_per_view: int = 2,
    max_drags: int = K_MAX,
    seed: int = 0,
    motion_threshold: float = 0.02,
    views: list[int] | None = None,
    asset_id: str = "",
    start_frames: list[int] | None = None,
) -> list[DragSample]:
    """Drag samples of one rendered asset.

    Args:
        render: the asset's render folder.
        num_frames: ``N``; the render needs at least ``N`` frames (the window starts at
            a random frame ``s ∈ [0, F − N]``).
        samples_per_view: random start frames (and drag draws) per view.
        start_frames: the allowed start frames (an episodic asset's episode starts):
            each view draws its ``samples_per_view`` starts from them, without
            repetition while there are enough; ``None`` = any ``s ∈ [0, F − N]``.
        motion_threshold: a candidate moves when its 3D path length over the window
            exceeds this (normalised units: the clip's box has largest side 1).

    Returns:
        Samples with at least one drag (views where nothing visible moves give none).

    Raises:
        ValueError: fewer rendered frames than ``num_frames``; a start frame whose
            window runs past the render.
    """
    f_total = render.num_frames
    if f_total < num_frames:
        raise ValueError(f"render has {f_total} frames, fewer than num_frames={num_frames}")
    if start_frames is not None:
        bad = [s for s in start_frames if not 0 <= s <= f_total - num_frames]
        if bad or not start_frames:
            raise ValueError(f"start frames {bad or start_frames} leave no {num_frames}-frame window in {f_total} frames")
    rng = np.random.default_rng(seed)
    w, h = render.resolution
    part_of = render.candidate_part
    n_parts = len(render.part_names)
    out = []
    for view in views if views is not None else range(render.num_views):
        if start_frames is not None:
            starts = rng.choice(start_frames, size=samples_per_view, replace=samples_per_view > len(start_frames))
        for k in range(samples_per_view):
            s = int(rng.integers(0, f_total - num_frames + 1)) if start_frames is None else int(starts[k])
            window = render.candidate_positions[s : s + num_frames].astype(np.float64)  # (N, C, 3)
            path = np.linalg.norm(np.diff(window, axis=0), axis=-1).sum(0)  # (C,)
            eligible = render.visible[view, s] & (path > motion_threshold)
            chosen: list[int] = []
            moving_parts = [p for p in range(n_parts) if (eligible & (part_of == p)).any()]
            if n_parts > 1 and moving_parts:
                for p in moving_parts:
                    idx = np.nonzero(eligible & (part_of == p))[0]
                    chosen.append(int(rng.choice(idx, p=path[idx] / path[idx].sum())))
            elif eligible.any():
                idx = np.nonzero(eligible)[0]
                k = int(rng.integers(1, max_drags + 1))
                chosen = [int(c) for c in rng.choice(idx, size=min(k, len(idx)), replace=False, p=path[idx] / path[idx].sum())]
            if not chosen:
                continue
            rng.shuffle(chosen)
            traj = np.transpose(render.project(view, window[:, chosen]), (1, 0, 2))  # (K, N, 2)
            keep = deduplicate_trajectories(traj / np.array([w, h]) * 256.0)
            keep = keep[:max_drags]
            out.append(DragSample(asset_id or render.root.name, view, s, traj[keep],
                                  [render.part_names[part_of[chosen[i]]] for i in keep], [chosen[i] for i in keep]))
    return out


def write_sample(sample: DragSample, render: RenderedAsset, out_dir: str | Path, name: str, category: str = "",
                 tracks_gif: bool = False) -> Path:
    """Write ``NAME.json`` + ``NAME.gif`` (+ ``NAME_tracks.gif``) atomically; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = sample.trajectories.shape[1]
    frames = np.stack([render.rgb_on_white(sample.view, sample.start_frame + i) for i in range(n)])
    write_video(frames, out_dir / f"{name}.gif", fps=7, overwrite=True)
    if tracks_gif:
        write_video(draw_drags(frames, sample.trajectories), out_dir / f"{name}_tracks.gif", fps=7, overwrite=True)
    w, h = render.resolution
    spec = {
        "asset": sample.asset, "view": sample.view, "start_frame": sample.start_frame, "num_frames": n,
        "category": category, "render": os.path.relpath(render.root, out_dir),
        "image_size": [w, h], "coordinates": "pixels",
        "drags": [{"trajectory": [[round(float(x), 3), round(float(y), 3)] for x, y in t], "part": part, "candidate": c}
                  for t, part, c in zip(sample.trajectories, sample.parts, sample.candidates)],
    }
    tmp = out_dir / f".{name}.json.partial"
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, out_dir / f"{name}.json")
    return out_dir / f"{name}.json"
