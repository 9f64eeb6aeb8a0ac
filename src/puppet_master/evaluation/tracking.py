"""Point trackers behind one small interface (for the flow error, paper §5 / docs/design.md §7).

* :class:`DISTracker` (default, no weights): OpenCV's DIS dense optical flow between
  consecutive frames, points advected through the chained flow with bilinear lookup.
  Measured against the ground-truth drags on the ground-truth Drag-a-Move dev videos
  (256×256): mean trajectory RMSE 11.9 px, median 7.6 px — the metric's noise floor.
  Plain pyramidal Lucas–Kanade measures mean 22.5 / median 10.3 px there.
* :class:`LucasKanadeTracker`: OpenCV pyramidal LK from frame to frame (for comparison).
* :class:`CoTrackerTracker`: Meta's CoTracker (what the paper uses) when the
  ``cotracker`` package and a local checkpoint are given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from .. import limits
from ..errors import UserInputError


class PointTracker(Protocol):
    """Tracks query points of frame 0 through a video.

    ``track(video, points) -> (K, N, 2)``: ``video`` uint8 ``(N, H, W, 3)``, ``points``
    ``(K, 2)`` in pixels (x right, y down, pixel centres at ``i + 0.5``); returns the
    points' positions in every frame, frame 0 equal to the queries.
    """

    name: str

    def track(self, video: np.ndarray, points: np.ndarray) -> np.ndarray: ...


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def _lookup(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an ``(H, W, 2)`` field at pixel points ``(K, 2)`` (border replicated)."""
    x = (points[:, 0:1] - 0.5).astype(np.float32)
    y = (points[:, 1:2] - 0.5).astype(np.float32)
    fx = cv2.remap(field[..., 0], x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[:, 0]
    fy = cv2.remap(field[..., 1], x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[:, 0]
    return np.stack([fx, fy], axis=-1).astype(np.float64)


def _check(video: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    video = np.asarray(video)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"video must be (N, H, W, 3), got {video.shape}")
    return video, points


class DISTracker:
    """Chained DIS optical flow (OpenCV), no learned weights. See the module docstring."""

    name = "opencv-dis"

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> None:
        self.preset = preset

    def track(self, video: np.ndarray, points: np.ndarray) -> np.ndarray:
        video, points = _check(video, points)
        dis = cv2.DISOpticalFlow_create(self.preset)
        out = [points]
        prev = _gray(video[0])
        for frame in video[1:]:
            cur = _gray(frame)
            flow = dis.calc(prev, cur, None)
            out.append(out[-1] + _lookup(flow, out[-1]))
            prev = cur
        return np.stack(out, axis=1)


class LucasKanadeTracker:
    """OpenCV pyramidal Lucas–Kanade from frame to frame."""

    name = "opencv-lk"

    def track(self, video: np.ndarray, points: np.ndarray) -> np.ndarray:
        video, points = _check(video, points)
        out = [points]
        prev = _gray(video[0])
        for frame in video[1:]:
            cur = _gray(frame)
            p, _, _ = cv2.calcOpticalFlowPyrLK(
                prev, cur, (out[-1] - 0.5).astype(np.float32).reshape(-1, 1, 2), None, winSize=(21, 21), maxLevel=3
            )
            out.append(p.reshape(-1, 2).astype(np.float64) + 0.5)
            prev = cur
        return np.stack(out, axis=1)


class CoTrackerTracker:
    """CoTracker (Karaev et al.), as in the paper's flow error, from a local checkpoint.

    Trust: the model's code comes from the installed ``cotracker`` package; the
    checkpoint is read here with ``torch.load(weights_only=True)`` (tensors and plain
    containers only, no code) and loaded into a model built without a checkpoint, so
    the package never unpickles the file itself.

    Args:
        checkpoint: path to a CoTracker checkpoint (e.g. ``scaled_offline.pth``): a
            state dict, optionally under a ``"model"`` key.
        device: torch device.

    Raises:
        UserInputError: the ``cotracker`` package or the checkpoint is missing, or the
            checkpoint is not a plain state dict of this model.
    """

    name = "cotracker"

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        path = Path(checkpoint)
        if not path.exists():
            raise UserInputError(f"CoTracker checkpoint {str(path)!r} does not exist")
        limit = limits.current("MAX_CHECKPOINT_BYTES")
        limits.open_regular(path, "CoTracker checkpoint", limit, "MAX_CHECKPOINT_BYTES").close()
        try:
            from cotracker.predictor import CoTrackerPredictor  # optional dependency
        except ImportError:
            raise UserInputError(
                "the cotracker package is not installed: pip install git+https://github.com/facebookresearch/co-tracker"
            ) from None
        try:
            with limits.open_regular(path, "CoTracker checkpoint", limit, "MAX_CHECKPOINT_BYTES") as fh:
                limits.torch_payload_bytes(fh, f"CoTracker checkpoint {str(path)!r}", limit, "MAX_CHECKPOINT_BYTES")
                fh.seek(0)
                state = torch.load(fh, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
            predictor = CoTrackerPredictor(checkpoint=None)
            predictor.model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - an unreadable or foreign file is one problem for the user
            raise UserInputError(f"cannot load the CoTracker checkpoint {str(path)!r}: "
                                 f"{limits.load_error_reason(exc)}") from None
        self.device = device
        self.model = predictor.to(device).eval()

    def track(self, video: np.ndarray, points: np.ndarray) -> np.ndarray:
        video, points = _check(video, points)
        frames = torch.from_numpy(video).permute(0, 3, 1, 2)[None].float().to(self.device)
        queries = np.concatenate([np.zeros((len(points), 1)), points - 0.5], axis=1)
        q = torch.from_numpy(queries)[None].float().to(self.device)
        with torch.no_grad():
            tracks, _ = self.model(frames, queries=q)
        return tracks[0].permute(1, 0, 2).cpu().double().numpy() + 0.5


def make_tracker(name: str = "opencv-dis", checkpoint: str | Path | None = None, device: str = "cpu") -> PointTracker:
    """Tracker by name: ``opencv-dis`` (default), ``opencv-lk`` or ``cotracker`` (needs ``checkpoint``).

    Raises:
        UserInputError: unknown name or missing CoTracker checkpoint.
    """
    if name == "opencv-dis":
        return DISTracker()
    if name == "opencv-lk":
        return LucasKanadeTracker()
    if name == "cotracker":
        if checkpoint is None:
            raise UserInputError("--tracker cotracker needs --cotracker-checkpoint PATH")
        return CoTrackerTracker(checkpoint, device)
    raise UserInputError(f"unknown tracker {name!r}: use opencv-dis, opencv-lk or cotracker")
