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

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..drags import DragSet, read_drags_json
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


def _category(value) -> str:
    """The ``category`` entry of a batch: a string, or a list/tuple whose first item is one."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return str(value) if isinstance(value, (str, np.str_)) else ""


def _batch_drags(value, name: str, size: int) -> torch.Tensor:
    """A batch's ``drags`` as float32 ``(N, K, 4)``, checked (type, shape, limits, values) before use."""
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        raise UserInputError(f"{name}: 'drags' must be a float tensor of shape (1, N, K, 4), got {type(value).__name__}")
    DragSet.from_tensor(value, size, size)  # shape, dtype, limits, finite values, starts on the image
    drags = torch.as_tensor(value).to(torch.float32)
    return (drags[0] if drags.ndim == 4 else drags).contiguous()


def load_dragamove_example(pkl: str | Path, size: int = EVAL_SIZE) -> EvalExample:
    """Read one published test batch (``NNNNN.pkl`` with its ``NNNNN.gif``).

    Everything is checked before use: the pickle is read with the restricted unpickler
    and its ``drags`` must be a float ``(1, N, K, 4)`` tensor with starts on the image
    (later points may leave it: a part moving out of view).

    Raises:
        UserInputError: missing or unreadable GIF, unreadable/unsafe pickle, unexpected
            contents, frame count that does not match the drags.
    """
    pkl = Path(pkl)
    gif = pkl.with_suffix(".gif")
    if not gif.is_file():
        raise UserInputError(f"{pkl.name} has no ground-truth video {gif.name} beside it")
    data = safe_load_pickle(pkl)
    if not isinstance(data, dict) or "drags" not in data:
        raise UserInputError(f"{pkl.name} is not a Drag-a-Move test batch (no 'drags' entry)")
    try:
        drags = _batch_drags(data["drags"], pkl.name, size)
    except UserInputError as exc:
        raise UserInputError(f"{pkl.name}: {exc}") from None
    frames = _resize_video(read_video(gif), size)
    if frames.shape[0] != drags.shape[0]:
        raise UserInputError(f"{gif.name} has {frames.shape[0]} frames but its drags have {drags.shape[0]}")
    return EvalExample(pkl.stem, frames, drags, _category(data.get("category", "")))


#: Video formats a split folder may hold beside ``NAME.json``, in order of preference.
SPLIT_VIDEO_SUFFIXES = (".gif", ".mp4", ".webp")


def split_video_path(meta: str | Path) -> Path | None:
    """The clip beside a split example's ``NAME.json`` (``NAME.gif``, ``.mp4`` or ``.webp``), or ``None``."""
    meta = Path(meta)
    return next((meta.with_suffix(s) for s in SPLIT_VIDEO_SUFFIXES if meta.with_suffix(s).is_file()), None)


def load_split_example(meta: str | Path, size: int = EVAL_SIZE, num_drags: int = 5) -> EvalExample:
    """Read one example of a split folder (``NAME.json`` + ``NAME.{gif,mp4,webp}``).

    Raises:
        UserInputError: missing or unreadable video, invalid drags JSON.
    """
    meta = Path(meta)
    video = split_video_path(meta)
    if video is None:
        raise UserInputError(f"{meta.name} has no video (NAME.gif, .mp4 or .webp) beside it")
    frames = read_video(video)
    h, w = frames.shape[1:3]
    spec = read_drags_json(meta)
    drags = DragSet.from_json(spec, width=w, height=h, num_frames=frames.shape[0], max_drags=num_drags)
    category = spec.get("category", "") if isinstance(spec, dict) else ""
    return EvalExample(meta.stem, _resize_video(frames, size), drags.to_tensor(num_drags), _category(category))


@dataclass
class EvalDataset:
    """The readable examples of an evaluation folder and the ones that were not.

    Attributes:
        format: ``"dragamove"`` or ``"split"``.
        examples: readable examples, sorted by name.
        skipped: ``[{"name": ..., "reason": ...}]`` for every unreadable example.
    """

    format: str
    examples: list[EvalExample]
    skipped: list[dict]


def scan_eval_dataset(root: str | Path, limit: int | None = None, size: int = EVAL_SIZE) -> EvalDataset:
    """Load every example of ``root``, keeping going past unreadable ones.

    ``root`` holds Drag-a-Move batches if it has ``*.pkl`` files, else a split folder.
    An example that cannot be read (corrupt video, unsafe pickle, invalid drags) is
    listed in :attr:`EvalDataset.skipped` with its reason.

    Raises:
        UserInputError: missing folder, no examples, or none of them readable.
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
    examples, skipped = [], []
    for f in files:
        try:
            examples.append(loader(f, size=size))
        except UserInputError as exc:
            skipped.append({"name": f.stem, "reason": str(exc)})
    if not examples:
        raise UserInputError(f"none of the {len(files)} examples in {str(root)!r} can be read; "
                             f"{skipped[0]['name']}: {skipped[0]['reason']}")
    return EvalDataset(fmt, examples, skipped)


def load_eval_dataset(root: str | Path, limit: int | None = None, size: int = EVAL_SIZE) -> tuple[str, list[EvalExample]]:
    """Load every example of ``root`` (see :func:`scan_eval_dataset`), refusing any unreadable one.

    Returns:
        ``(format name, examples sorted by name)``.

    Raises:
        UserInputError: missing folder, no examples, or an unreadable example (the first).
    """
    data = scan_eval_dataset(root, limit=limit, size=size)
    if data.skipped:
        raise UserInputError(f"{data.skipped[0]['name']}: {data.skipped[0]['reason']}")
    return data.format, data.examples
