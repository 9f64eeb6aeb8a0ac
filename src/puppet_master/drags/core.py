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

import math
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .. import limits
from ..errors import DragError, UserInputError
from ..values import parse_json

#: Maximum number of drags the released model was trained with (docs/design.md §1).
K_MAX = 5
#: Number of frames of the released model (docs/design.md §1).
DEFAULT_NUM_FRAMES = 14
#: De-duplication threshold per frame, in pixels at 256x256 (docs/design.md §6): δ = 20·N.
DEDUP_PIXELS_PER_FRAME = 20.0
#: Resolution at which the de-duplication threshold is defined.
DEDUP_REFERENCE_SIZE = 256.0
#: Later trajectory points may leave the image (a part moving out of view; the encoding
#: clips them to the border, docs/design.md §3) but not by more than this many image sizes.
OUTSIDE_MARGIN = 1.0
#: Limits on a drags JSON file: size in bytes, nesting depth, largest image side; on a drag
#: tensor read from a file (:meth:`DragSet.from_tensor`): frames and slots. All in
#: :mod:`puppet_master.limits`, with their environment variables.
MAX_JSON_BYTES = limits.MAX_JSON_BYTES
MAX_JSON_DEPTH = limits.MAX_JSON_DEPTH
MAX_IMAGE_SIDE = limits.MAX_IMAGE_SIDE
MAX_TENSOR_FRAMES = limits.MAX_TENSOR_FRAMES
MAX_TENSOR_SLOTS = limits.MAX_TENSOR_SLOTS


def _as_point_array(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise DragError(f"{what} must be numbers, got {_short(values)}") from exc
    return arr


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a user value cut to ``limit`` characters (for error messages)."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _interpolate(starts: np.ndarray, ends: np.ndarray, num_frames: int) -> np.ndarray:
    """Linear start → end trajectories ``(K, num_frames, 2)`` from ``(K, 2)`` starts and ends.

    Frame 0 is exactly the start and the last frame exactly the end (docs/design.md §2).
    """
    t = np.linspace(0.0, 1.0, num_frames)[None, :, None]
    traj = starts[:, None] + (ends - starts)[:, None] * t
    traj[:, 0] = starts
    traj[:, -1] = ends
    return traj


@dataclass(frozen=True)
class DragSet:
    """A set of drags on one image, stored as pixel trajectories.

    Attributes:
        trajectories: float64 array ``(K, N, 2)``: for drag ``k`` and frame ``n`` the
            point ``(x, y)`` in **pixels** (x right, y down). Frame 0 is the start.
        width, height: size in pixels of the image the coordinates refer to.

    A drag must *start* on the image; its later points may leave it (a part moving out
    of view, as in the Drag-a-Move test set) by up to :data:`OUTSIDE_MARGIN` image sizes.

    Raises:
        DragError: on construction, if there are no drags, more than ``max_drags``,
            fewer than 2 frames, non-finite values, a start outside the image, or a
            point more than one image size outside it.
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
        size = np.array([self.width, self.height], dtype=np.float64)
        for idx in range(k):
            x0, y0 = traj[idx, 0]
            if not (0 <= x0 <= self.width and 0 <= y0 <= self.height):
                raise DragError(
                    f"drag {idx + 1} starts outside the image: ({x0:g}, {y0:g}) is not in "
                    f"[0, {self.width}] x [0, {self.height}] pixels; a drag must start on the image"
                )
            far = (traj[idx] < -size * OUTSIDE_MARGIN) | (traj[idx] > size * (1 + OUTSIDE_MARGIN))
            if far.any():
                x, y = traj[idx][np.argmax(far.any(axis=-1))]
                raise DragError(
                    f"drag {idx + 1} goes to ({x:g}, {y:g}), more than one image size outside the "
                    f"{self.width}x{self.height} image: check the coordinates (pixels or normalised?)"
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
        traj = _interpolate(arr[:, 0], arr[:, 1], num_frames)
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
        try:
            trajectories = list(trajectories)
            lengths = {len(t) for t in trajectories}
        except TypeError:
            raise DragError(f"drag trajectories must be lists of (x, y) points, got {_short(trajectories)}") from None
        if not trajectories:
            raise DragError("no drags given: add at least one drag")
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
        over ``num_frames``; trajectories must have ``num_frames`` points. Pixel
        coordinates given for an ``image_size`` other than ``width x height`` are
        rescaled to this image.

        Raises:
            DragError: unreadable, non-UTF-8, oversized or too deeply nested file;
                invalid JSON; wrong types or sizes; non-finite numbers; failed checks.
        """
        data = read_drags_json(source)
        if isinstance(data, list):
            data = {"drags": data}
        if not isinstance(data, dict) or "drags" not in data:
            raise DragError('drags JSON must be an object with a "drags" list (or a list of drags)')
        coords = data.get("coordinates", "pixels")
        if coords not in ("pixels", "normalized"):
            raise DragError(f'"coordinates" must be "pixels" or "normalized", got {_short(coords)}')
        json_size = _json_image_size(data.get("image_size"))
        if width is None or height is None:
            if json_size is None:
                raise DragError('drags JSON needs "image_size": [width, height] when no image is given')
            width, height = json_size
        items = data["drags"]
        if not isinstance(items, list) or not items:
            raise DragError('"drags" must be a non-empty list')
        if len(items) > max_drags:
            raise DragError(f"{len(items)} drags given but the model takes at most {max_drags}: remove {len(items) - max_drags}")
        traj = np.stack([_json_drag(item, i, num_frames) for i, item in enumerate(items)])
        if coords == "normalized":
            traj = traj * np.array([width, height], dtype=np.float64)
        elif json_size is not None and json_size != (width, height):
            # pixel coordinates of an image of another size: rescale to this image
            traj = traj * (np.array([width, height], dtype=np.float64) / np.array(json_size, dtype=np.float64))
        return cls(traj, width, height, max_drags)

    @classmethod
    def from_tensor(cls, drags: torch.Tensor | np.ndarray, width: int, height: int, max_drags: int | None = None) -> "DragSet":
        """Inverse of :meth:`to_tensor`: read the used slots of a ``(N, K_max, 4)`` layout.

        The shape is checked before any data is copied, so a tensor that only claims a
        huge size (e.g. zero strides) is refused without allocating it.

        Args:
            drags: float ``(N, K_max, 4)`` (or ``(1, N, K_max, 4)``), normalised.
            width, height: pixel size to express the trajectories in.

        Raises:
            DragError: not a float array, wrong shape, more than :data:`MAX_TENSOR_FRAMES`
                frames or :data:`MAX_TENSOR_SLOTS` slots, non-finite values, no used slot,
                or any of the :class:`DragSet` checks.
        """
        if isinstance(drags, torch.Tensor):
            floating = drags.is_floating_point()
        else:
            try:
                drags = np.asarray(drags)
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:
                raise DragError(f"drag tensor must be a float array of shape (N, K_max, 4): {exc}") from None
            floating = drags.dtype.kind == "f"
        shape = tuple(drags.shape)
        if len(shape) == 4 and shape[0] == 1:
            shape, drags = shape[1:], drags[0]
        if not floating or len(shape) != 3 or shape[-1] != 4:
            raise DragError(f"drag tensor must be a float array of shape (N, K_max, 4), got shape {shape} "
                            f"of {drags.dtype}")
        if not (2 <= shape[0] <= MAX_TENSOR_FRAMES and 1 <= shape[1] <= MAX_TENSOR_SLOTS):
            raise DragError(f"drag tensor of shape {shape} must have 2 to {MAX_TENSOR_FRAMES} frames and "
                            f"1 to {MAX_TENSOR_SLOTS} slots")
        arr = drags.detach().cpu().double().numpy() if isinstance(drags, torch.Tensor) else drags.astype(np.float64)
        if not np.isfinite(arr).all():
            raise DragError("drag tensor holds non-finite values (NaN or inf)")
        used = np.abs(arr).sum(axis=(0, 2)) > 0
        traj = np.transpose(arr[:, used, 2:4], (1, 0, 2)) * np.array([width, height], dtype=np.float64)
        return cls(traj, width, height, max_drags if max_drags is not None else shape[1])

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


def read_drags_json(source: str | Path | dict | list) -> Any:
    """The parsed drags JSON of a path, a JSON string or an already parsed object.

    Raises:
        DragError: missing, not a regular file (a folder, device or FIFO is refused
            without reading it), larger than :data:`MAX_JSON_BYTES`, not UTF-8, not JSON,
            nested deeper than :data:`MAX_JSON_DEPTH`, or holding an overlong integer or a
            non-finite number (:func:`puppet_master.values.parse_json`).
    """
    if isinstance(source, (dict, list)):
        data = source
    else:
        is_text = isinstance(source, str) and source.lstrip().startswith(("{", "["))
        what = "drags JSON" if is_text else f"drags file {str(source)!r}"
        if is_text:
            raw = source.encode("utf-8", "surrogatepass")
        else:
            try:  # a regular file (never a device or FIFO), read with a cap
                raw = limits.read_bytes_bounded(Path(source), "drags file", MAX_JSON_BYTES, "MAX_JSON_BYTES")
            except DragError:
                raise
            except UserInputError as exc:
                raise DragError(str(exc)) from None
        if len(raw) > MAX_JSON_BYTES:
            raise DragError(f"{what} is larger than {limits.format_bytes(MAX_JSON_BYTES)}: it cannot be a drags file "
                            f"({limits.raise_hint('MAX_JSON_BYTES')})")
        try:
            data = parse_json(raw, what, DragError)
        except DragError as exc:
            if "nested too deeply" not in str(exc):
                raise
            raise DragError(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise DragError(f"drags JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return data


def _depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of lists/dicts, counted without recursion and stopping past ``limit``."""
    stack, deepest = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (list, dict)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _number(value: Any, what: str) -> float:
    """A finite JSON number (``bool`` is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DragError(f"{what} must be a number, got {_short(value)}")
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise DragError(f"{what} must be a finite number, got {_short(value)}")
    return out


def _json_point(value: Any, what: str) -> np.ndarray:
    """An ``[x, y]`` pair of finite numbers as float64 ``(2,)``."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DragError(f"{what} must be [x, y], got {_short(value)}")
    return np.array([_number(v, what) for v in value], dtype=np.float64)


def _json_image_size(size: Any) -> tuple[int, int] | None:
    """``"image_size"`` as ``(width, height)`` positive integers, or ``None`` when absent."""
    if size is None:
        return None
    problem = '"image_size" must be [width, height] with positive whole numbers'
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise DragError(f"{problem}, got {_short(size)}")
    w, h = (_number(v, '"image_size"') for v in size)
    if not (w.is_integer() and h.is_integer() and 0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
        raise DragError(f"{problem} up to {MAX_IMAGE_SIDE}, got {_short(size)}")
    return int(w), int(h)


def _json_drag(item: Any, index: int, num_frames: int) -> np.ndarray:
    """One drag object of the JSON schema as a ``(num_frames, 2)`` trajectory (file coordinates)."""
    what = f"drag {index + 1}"
    if not isinstance(item, dict):
        raise DragError(f"{what} must be an object with start/end or trajectory, got {_short(item)}")
    if "trajectory" in item:
        points = item["trajectory"]
        if not isinstance(points, list) or not points:
            raise DragError(f"{what} trajectory must be a list of [x, y] points")
        if len(points) != num_frames:
            raise DragError(f"{what} trajectory has {len(points)} points but {num_frames} frames are generated")
        return np.stack([_json_point(p, f"{what} trajectory point {n + 1}") for n, p in enumerate(points)])
    if "start" in item and "end" in item:
        start, end = _json_point(item["start"], f"{what} start"), _json_point(item["end"], f"{what} end")
        return _interpolate(start[None], end[None], num_frames)[0]
    raise DragError(f'{what} needs "start" and "end", or "trajectory"')


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
