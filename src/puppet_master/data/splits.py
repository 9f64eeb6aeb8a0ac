"""Drag clips on disk: the authors' Drag-a-Move test batches and split folders (docs/design.md §6–7).

Read by evaluation (test sets) and by training (latent caching, VAE frames).

Both give :class:`EvalExample` objects at the evaluation size (256×256).

* **Drag-a-Move batches** (``NNNNN.pkl`` + ``NNNNN.gif``, as published with the paper):
  the pickle is read with a restricted unpickler; the 512×512 GIF is resized with
  area interpolation.
* **Split folders** (written by our data pipeline or by hand): ``NAME.gif`` / ``NAME.mp4``
  next to ``NAME.json`` in the drags JSON schema (README "Drag formats", one trajectory
  point per video frame), with an optional ``"category"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..drags import DragSet
from ..errors import UserInputError
from ..video import read_video
from .safe_pickle import safe_load_pickle

EVAL_SIZE = 256


@dataclass
class EvalExample:
    """One test example.

    Attributes:
        name: identifier (file stem).
        frames: ground-truth video, uint8 ``(N, S, S, 3)``; frame 0 is the input image.
        drags: float32 ``(N, K_max, 4)`` normalised (docs/design.md §2).
        category: object category (``""`` if unknown).
    """

    name: str
    frames: np.ndarray
    drags: torch.Tensor
    category: str = ""

    @property
    def size(self) -> int:
        return int(self.frames.shape[1])

    def trajectories(self) -> np.ndarray:
        """Used drags as ``(K, N, 2)`` pixel trajectories at the evaluation size."""
        return DragSet.from_tensor(self.drags, self.size, self.size).trajectories


def _resize_video(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def load_dragamove_example(pkl: str | Path, size: int = EVAL_SIZE) -> EvalExample:
    """Read one published test batch (``NNNNN.pkl`` with its ``NNNNN.gif``).

    Raises:
        UserInputError: missing GIF, unreadable/unsafe pickle, unexpected contents.
    """
    pkl = Path(pkl)
    data = safe_load_pickle(pkl)
    gif = pkl.with_suffix(".gif")
    if not gif.is_file():
        raise UserInputError(f"{pkl.name} has no ground-truth video {gif.name} beside it")
    if not isinstance(data, dict) or "drags" not in data:
        raise UserInputError(f"{pkl} is not a Drag-a-Move test batch (no 'drags' entry)")
    drags = torch.as_tensor(data["drags"], dtype=torch.float32)
    if drags.ndim == 4:
        drags = drags[0]
    frames = _resize_video(read_video(gif), size)
    if frames.shape[0] != drags.shape[0]:
        raise UserInputError(f"{gif.name} has {frames.shape[0]} frames but its drags have {drags.shape[0]}")
    category = data.get("category", [""])
    category = str(category[0]) if isinstance(category, (list, tuple)) and category else str(category)
    return EvalExample(pkl.stem, frames, drags, category)


#: Video formats a split folder may hold beside ``NAME.json``, in order of preference.
SPLIT_VIDEO_SUFFIXES = (".gif", ".mp4", ".webp")


def split_video_path(meta: str | Path) -> Path | None:
    """The clip beside a split example's ``NAME.json`` (``NAME.gif``, ``.mp4`` or ``.webp``), or ``None``."""
    meta = Path(meta)
    return next((meta.with_suffix(s) for s in SPLIT_VIDEO_SUFFIXES if meta.with_suffix(s).is_file()), None)


def load_split_example(meta: str | Path, size: int = EVAL_SIZE, num_drags: int = 5) -> EvalExample:
    """Read one example of a split folder (``NAME.json`` + ``NAME.{gif,mp4,webp}``).

    Raises:
        UserInputError: missing video or invalid drags.
    """
    meta = Path(meta)
    video = split_video_path(meta)
    if video is None:
        raise UserInputError(f"{meta.name} has no video (NAME.gif, .mp4 or .webp) beside it")
    frames = read_video(video)
    h, w = frames.shape[1:3]
    spec = json.loads(meta.read_text())
    drags = DragSet.from_json(spec, width=w, height=h, num_frames=frames.shape[0], max_drags=num_drags)
    return EvalExample(meta.stem, _resize_video(frames, size), drags.to_tensor(num_drags), str(spec.get("category", "")))


def load_eval_dataset(root: str | Path, limit: int | None = None, size: int = EVAL_SIZE) -> tuple[str, list[EvalExample]]:
    """Load every example of ``root``: Drag-a-Move batches if it holds ``*.pkl``, else a split folder.

    Returns:
        ``(format name, examples sorted by name)``.

    Raises:
        UserInputError: missing folder or no examples.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"evaluation data folder {str(root)!r} does not exist")
    pkls = sorted(root.glob("*.pkl"))
    if pkls:
        fmt, files, loader = "dragamove", pkls, load_dragamove_example
    else:
        fmt, files, loader = "split", sorted(root.glob("*.json")), load_split_example
    if limit is not None:
        files = files[:limit]
    if not files:
        raise UserInputError(f"{str(root)!r} holds no test examples (NNNNN.pkl + .gif, or NAME.json + video)")
    return fmt, [loader(f, size=size) for f in files]
