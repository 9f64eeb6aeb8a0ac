"""Typed drags: point trajectories on an image (paper §3, docs/design.md §2).

A *drag* ``d_k = (u_k, v_k^{1..N})`` says that the physical point under image
position ``u_k`` moves to ``v_k^n`` in frame ``n``; ``v_k^1 = u_k``.

Coordinate conventions used everywhere in this package:

* **pixels**: continuous image coordinates, origin at the top-left corner of the
  image, ``x`` to the right (columns), ``y`` down (rows); the image covers
  ``[0, width] x [0, height]``.
* **normalised**: pixels divided by ``(width, height)``, so the image covers
  ``[0, 1] x [0, 1]``.

The model-facing tensor layout (docs/design.md §2) is float ``(B, N, K_max, 4)`` holding, per
frame ``n`` and slot ``k``, ``(x_start, y_start, x_n, y_n)`` normalised; unused slots
are all zeros in every frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import DragError

#: Maximum number of drags the released model was trained with (docs/design.md §1).
K_MAX = 5
#: Number of frames of the released model (docs/design.md §1).
DEFAULT_NUM_FRAMES = 14
#: De-duplication threshold per frame, in pixels at 256x256 (docs/design.md §6): δ = 20·N.
DEDUP_PIXELS_PER_FRAME = 20.0
#: Resolution at which the de-duplication threshold is defined.
DEDUP_REFERENCE_SIZE = 256.0


def _as_point_array(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DragError(f"{what} must be numbers, got {values!r}") from exc
    return arr


@dataclass(frozen=True)
class DragSet:
    """A set of drags on one image, stored as pixel trajectories.

    Attributes:
        trajectories: float64 array ``(K, N, 2)``: for drag ``k`` and frame ``n`` the
            point ``(x, y)`` in **pixels** (x right, y down). Frame 0 is the start.
        width, height: size in pixels of the image the coordinates refer to.

    Raises:
        DragError: on construction, if there are no drags, more than ``max_drags``,
            fewer than 2 frames, non-finite values, or points outside the image.
    """

    trajectories: np.ndarray
    width: int
    height: int
    max_drags: int = K_MAX

    def __post_init__(self) -> None:
        traj = _as_point_array(self.trajectories, "drag trajectories")
        object.__setattr__(self, "trajectories", traj)
        if self.width <= 0 or self.height <= 0:
            raise DragError(f"image size must be positive, got {self.width}x{self.height}")
        if traj.ndim != 3 or traj.shape[-1] != 2:
            raise DragError(
                f"drag trajectories must have shape (num_drags, num_frames, 2), got {tuple(traj.shape)}"
            )
        k, n, _ = traj.shape
        if k == 0:
            raise DragError("no drags given: add at least one drag (e.g. --drag X0,Y0:X1,Y1)")
        if k > self.max_drags:
            raise DragError(f"{k} drags given but the model takes at most {self.max_drags}: remove {k - self.max_drags}")
        if n < 2:
            raise DragError(f"a drag trajectory needs at least 2 frames, got {n}")
        if not np.isfinite(traj).all():
            bad = int(np.argwhere(~np.isfinite(traj))[0][0])
            raise DragError(f"drag {bad + 1} has a non-finite coordinate (NaN or inf)")
        for idx in range(k):
            xs, ys = traj[idx, :, 0], traj[idx, :, 1]
            if xs.min() < 0 or ys.min() < 0 or xs.max() > self.width or ys.max() > self.height:
                worst = traj[idx][np.argmax((xs < 0) | (ys < 0) | (xs > self.width) | (ys > self.height))]
                raise DragError(
                    f"drag {idx + 1} leaves the image: point ({worst[0]:g}, {worst[1]:g}) is outside "
                    f"[0, {self.width}] x [0, {self.height}] pixels"
                )

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_pairs(
        cls,
        pairs: Sequence[tuple[Sequence[float], Sequence[float]]],
        width: int,
        height: int,
        num_frames: int = DEFAULT_NUM_FRAMES,
        normalized: bool = False,
        max_drags: int = K_MAX,
    ) -> "DragSet":
        """Build drags from ``(start, end)`` point pairs by linear interpolation.

        Frame 0 is the start and frame ``num_frames - 1`` the end, as the authors' demo
        does (docs/design.md §2).

        Args:
            pairs: ``[((x0, y0), (x1, y1)), ...]`` in pixels, or normalised if
                ``normalized``.
            width, height: image size in pixels.
            num_frames: trajectory length ``N`` (≥ 2).
            normalized: whether the pairs are in [0, 1] coordinates.

        Raises:
            DragError: malformed pairs or any of the :class:`DragSet` checks.
        """
        if num_frames < 2:
            raise DragError(f"num_frames must be at least 2, got {num_frames}")
        arr = _as_point_array(pairs, "drag start/end pairs")
        if arr.size == 0:
            raise DragError("no drags given: add at least one drag (e.g. --drag X0,Y0:X1,Y1)")
        if arr.ndim != 3 or arr.shape[1:] != (2, 2):
            raise DragError(f"each drag must be a pair of (x, y) points, got array of shape {arr.shape}")
        t = np.linspace(0.0, 1.0, num_frames)[None, :, None]
        traj = arr[:, None, 0] + (arr[:, None, 1] - arr[:, None, 0]) * t
        traj[:, 0] = arr[:, 0]
        traj[:, -1] = arr[:, 1]
        if normalized:
            traj = traj * np.array([width, height], dtype=np.float64)
        return cls(traj, width, height, max_drags)

    @classmethod
    def from_trajectories(
        cls,
        trajectories: Sequence[Sequence[Sequence[float]]],
        width: int,
        height: int,
        num_frames: int | None = None,
        normalized: bool = False,
        max_drags: int = K_MAX,
    ) -> "DragSet":
        """Build drags from full per-frame trajectories.

        Args:
            trajectories: ``K`` lists of ``N`` ``(x, y)`` points (pixels, or normalised
                if ``normalized``); all drags must have the same length.
            num_frames: if given, every trajectory must have exactly this many points.

        Raises:
            DragError: ragged or malformed trajectories, a wrong frame count, or any of
                the :class:`DragSet` checks.
        """
        trajectories = list(trajectories)
        if not trajectories:
            raise DragError("no drags given: add at least one drag")
        lengths = {len(t) for t in trajectories}
        if len(lengths) != 1:
            raise DragError(f"all drag trajectories must have the same number of frames, got lengths {sorted(lengths)}")
        traj = _as_point_array(trajectories, "drag trajectories")
        if traj.ndim != 3 or traj.shape[-1] != 2:
            raise DragError(f"trajectories must be lists of (x, y) points, got array of shape {traj.shape}")
        if num_frames is not None and traj.shape[1] != num_frames:
            raise DragError(f"drag trajectories have {traj.shape[1]} frames but {num_frames} frames are generated")
        if normalized:
            traj = traj * np.array([width, height], dtype=np.float64)
        return cls(traj, width, height, max_drags)

    @classmethod
    def from_json(
        cls,
        source: str | Path | dict | list,
        width: int | None = None,
        height: int | None = None,
        num_frames: int = DEFAULT_NUM_FRAMES,
        max_drags: int = K_MAX,
    ) -> "DragSet":
        """Read drags from JSON (a path, a JSON string, or the parsed object).

        Schema (see README "Drag formats")::

            {"image_size": [W, H],               # optional if width/height given
             "coordinates": "pixels",            # or "normalized"
             "drags": [{"start": [x, y], "end": [x, y]},
                       {"trajectory": [[x, y], ...]}]}

        A bare list of drag objects is accepted too. Start/end drags are interpolated
        over ``num_frames``; trajectories must have ``num_frames`` points.

        Raises:
            DragError: unreadable file, invalid JSON, missing keys, or failed checks.
        """
        data = source
        if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith(("{", "["))):
            path = Path(source)
            try:
                text = path.read_text()
            except OSError as exc:
                raise DragError(f"cannot read drags file {str(path)!r}: {exc.strerror or exc}") from exc
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DragError(f"drags file {str(path)!r} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        elif isinstance(source, str):
            try:
                data = json.loads(source)
            except json.JSONDecodeError as exc:
                raise DragError(f"drags JSON is not valid: {exc.msg} (line {exc.lineno})") from exc
        if isinstance(data, list):
            data = {"drags": data}
        if not isinstance(data, dict) or "drags" not in data:
            raise DragError('drags JSON must be an object with a "drags" list (or a list of drags)')
        coords = data.get("coordinates", "pixels")
        if coords not in ("pixels", "normalized"):
            raise DragError(f'"coordinates" must be "pixels" or "normalized", got {coords!r}')
        size = data.get("image_size")
        if size is not None:
            try:
                json_w, json_h = int(size[0]), int(size[1])
                if len(size) != 2 or json_w <= 0 or json_h <= 0:
                    raise ValueError
            except (TypeError, ValueError, IndexError):
                raise DragError('"image_size" must be [width, height] with positive integers') from None
            if width is None or height is None:
                width, height = json_w, json_h
        if width is None or height is None:
            raise DragError('drags JSON needs "image_size": [width, height] when no image is given')
        items = data["drags"]
        if not isinstance(items, list) or not items:
            raise DragError('"drags" must be a non-empty list')
        trajs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise DragError(f"drag {i + 1} must be an object with start/end or trajectory")
            if "trajectory" in item:
                t = _as_point_array(item["trajectory"], f"drag {i + 1} trajectory")
                if t.ndim != 2 or t.shape[-1] != 2:
                    raise DragError(f"drag {i + 1} trajectory must be a list of [x, y] points")
                if t.shape[0] != num_frames:
                    raise DragError(f"drag {i + 1} trajectory has {t.shape[0]} points but {num_frames} frames are generated")
            elif "start" in item and "end" in item:
                s = _as_point_array(item["start"], f"drag {i + 1} start")
                e = _as_point_array(item["end"], f"drag {i + 1} end")
                if s.shape != (2,) or e.shape != (2,):
                    raise DragError(f"drag {i + 1} start and end must be [x, y]")
                tt = np.linspace(0.0, 1.0, num_frames)[:, None]
                t = s[None] + (e - s)[None] * tt
                t[0], t[-1] = s, e
            else:
                raise DragError(f'drag {i + 1} needs "start" and "end", or "trajectory"')
            trajs.append(t)
        traj = np.stack(trajs)
        if coords == "normalized":
            traj = traj * np.array([width, height], dtype=np.float64)
        elif size is not None and (json_w, json_h) != (width, height):
            # pixel coordinates of an image of another size: rescale to this image
            traj = traj * np.array([width / json_w, height / json_h], dtype=np.float64)
        return cls(traj, width, height, max_drags)

    @classmethod
    def from_tensor(cls, drags: torch.Tensor | np.ndarray, width: int, height: int, max_drags: int | None = None) -> "DragSet":
        """Inverse of :meth:`to_tensor`: read the used slots of a ``(N, K_max, 4)`` layout.

        Args:
            drags: float ``(N, K_max, 4)`` (or ``(1, N, K_max, 4)``), normalised.
            width, height: pixel size to express the trajectories in.

        Raises:
            DragError: wrong shape or no used slot.
        """
        arr = drags.detach().cpu().double().numpy() if isinstance(drags, torch.Tensor) else np.asarray(drags, np.float64)
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 3 or arr.shape[-1] != 4:
            raise DragError(f"drag tensor must have shape (N, K_max, 4), got {arr.shape}")
        used = np.abs(arr).sum(axis=(0, 2)) > 0
        traj = np.transpose(arr[:, used, 2:4], (1, 0, 2)) * np.array([width, height], dtype=np.float64)
        return cls(traj, width, height, max_drags if max_drags is not None else max(arr.shape[1], 1))

    # ------------------------------------------------------------------ views
    @property
    def num_drags(self) -> int:
        return int(self.trajectories.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.trajectories.shape[1])

    @property
    def starts(self) -> np.ndarray:
        """``(K, 2)`` start points in pixels."""
        return self.trajectories[:, 0]

    @property
    def ends(self) -> np.ndarray:
        """``(K, 2)`` final-frame points in pixels."""
        return self.trajectories[:, -1]

    def normalized(self) -> np.ndarray:
        """``(K, N, 2)`` trajectories in normalised [0, 1] coordinates."""
        return self.trajectories / np.array([self.width, self.height], dtype=np.float64)

    def to_tensor(self, num_drags: int = K_MAX, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return the model layout ``(N, num_drags, 4)`` of docs/design.md §2.

        Slot ``k < K`` holds ``(x_start, y_start, x_n, y_n)`` normalised, the start
        repeated in every frame; slots ``k ≥ K`` are all zeros.

        Raises:
            DragError: if there are more drags than ``num_drags`` slots.
        """
        if self.num_drags > num_drags:
            raise DragError(f"{self.num_drags} drags do not fit in {num_drags} slots")
        norm = self.normalized()  # (K, N, 2)
        out = np.zeros((self.num_frames, num_drags, 4), dtype=np.float64)
        out[:, : self.num_drags, 0:2] = norm[:, 0][None]
        out[:, : self.num_drags, 2:4] = np.transpose(norm, (1, 0, 2))
        return torch.from_numpy(out).to(dtype)

    def resample(self, num_frames: int) -> "DragSet":
        """Linearly resample every trajectory to ``num_frames`` points (ends kept)."""
        if num_frames == self.num_frames:
            return self
        src = np.linspace(0.0, 1.0, self.num_frames)
        dst = np.linspace(0.0, 1.0, num_frames)
        traj = np.stack(
            [np.stack([np.interp(dst, src, t[:, c]) for c in range(2)], axis=-1) for t in self.trajectories]
        )
        return DragSet(traj, self.width, self.height, self.max_drags)

    def transformed(self, scale: float | tuple[float, float], offset: tuple[float, float], width: int, height: int) -> "DragSet":
        """Map the drags into another image: ``p' = p * scale + offset`` (pixels).

        Used when an input image is resized and padded to the model's square size.
        """
        s = np.broadcast_to(np.asarray(scale, dtype=np.float64), (2,))
        traj = self.trajectories * s + np.asarray(offset, dtype=np.float64)
        return DragSet(traj, width, height, self.max_drags)

    def deduplicated(self, delta: float | None = None) -> "DragSet":
        """Drop near-duplicate drags (docs/design.md §6).

        Two drags ``i < j`` are duplicates when ``Σ_n ‖v_i^n − v_j^n‖₂ ≤ δ``; the later
        one (``j``) is removed. ``δ`` defaults to ``20·N`` pixels **at 256×256**; for
        other image sizes distances are measured after scaling the image to 256×256.

        Returns:
            A new :class:`DragSet` keeping the first of every duplicate group.
        """
        keep = deduplicate_trajectories(self.normalized() * DEDUP_REFERENCE_SIZE, delta)
        return DragSet(self.trajectories[keep], self.width, self.height, self.max_drags)

    def to_json(self, coordinates: str = "pixels") -> dict:
        """JSON-serialisable dict in the :meth:`from_json` schema (full trajectories)."""
        if coordinates not in ("pixels", "normalized"):
            raise ValueError("coordinates must be 'pixels' or 'normalized'")
        traj = self.trajectories if coordinates == "pixels" else self.normalized()
        return {
            "image_size": [self.width, self.height],
            "coordinates": coordinates,
            "drags": [{"trajectory": [[float(x), float(y)] for x, y in t]} for t in traj],
        }


def deduplicate_trajectories(trajectories: np.ndarray, delta: float | None = None) -> list[int]:
    """Indices of the trajectories kept by the near-duplicate rule (docs/design.md §6, paper §4).

    Args:
        trajectories: ``(K, N, 2)`` in pixels at the reference 256×256 resolution.
        delta: threshold on ``Σ_n ‖v_i^n − v_j^n‖₂``; default ``20·N``.

    Returns:
        Sorted indices of drags to keep: greedily, a drag is kept unless it is within
        ``delta`` of an already kept one.
    """
    traj = np.asarray(trajectories, dtype=np.float64)
    if traj.ndim != 3 or traj.shape[-1] != 2:
        raise ValueError(f"trajectories must be (K, N, 2), got {traj.shape}")
    n = traj.shape[1]
    delta = DEDUP_PIXELS_PER_FRAME * n if delta is None else float(delta)
    keep: list[int] = []
    for i in range(traj.shape[0]):
        if all(np.linalg.norm(traj[i] - traj[j], axis=-1).sum() > delta for j in keep):
            keep.append(i)
    return keep


def parse_drag_argument(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Parse the command-line form ``X0,Y0:X1,Y1`` into ``((x0, y0), (x1, y1))``.

    Raises:
        DragError: if the text does not have that form or holds non-finite numbers.
    """
    parts = text.strip().split(":")
    if len(parts) != 2:
        raise DragError(f"--drag {text!r} must look like X0,Y0:X1,Y1 (start and end separated by ':')")
    points = []
    for part in parts:
        xy = part.split(",")
        if len(xy) != 2:
            raise DragError(f"--drag {text!r} must look like X0,Y0:X1,Y1 (x and y separated by ',')")
        try:
            x, y = float(xy[0]), float(xy[1])
        except ValueError:
            raise DragError(f"--drag {text!r} must look like X0,Y0:X1,Y1 with numbers") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DragError(f"--drag {text!r} has a non-finite coordinate")
        points.append((x, y))
    return points[0], points[1]


def stack_drag_tensors(drag_sets: Iterable[DragSet], num_drags: int = K_MAX) -> torch.Tensor:
    """Stack several drag sets into the batch layout ``(B, N, num_drags, 4)``."""
    tensors = [d.to_tensor(num_drags) for d in drag_sets]
    if len({t.shape for t in tensors}) > 1:
        raise DragError("all drag sets in a batch must have the same number of frames")
    return torch.stack(tensors)
