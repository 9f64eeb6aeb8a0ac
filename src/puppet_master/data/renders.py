"""Reading one asset's render folder (written by ``blender/render.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from .. import limits


@dataclass
class RenderedAsset:
    """A render folder: ``meta.json``, ``tracks.npz``, ``view_VV/{rgba,index}_FFF.png``.

    Attributes:
        root: the folder.
        meta: parsed ``meta.json`` (parts, cameras, resolution, normalisation, …).
        positions: per part ``(F, V_p, 3)`` float32 vertex positions (normalised world).
        candidate_part: ``(C,)`` part of each candidate surface point.
        candidate_positions: ``(F, C, 3)``.
        visible: ``(V, F, C)`` bool, inside the image and not occluded.
    """

    root: Path
    meta: dict
    positions: list[np.ndarray]
    candidate_part: np.ndarray
    candidate_positions: np.ndarray
    visible: np.ndarray

    @classmethod
    def load(cls, root: str | Path) -> "RenderedAsset":
        root = Path(root)
        meta = json.loads(limits.read_bytes_bounded(root / "meta.json", "render metadata",
                                                    limits.current("MAX_JSON_BYTES"), "MAX_JSON_BYTES"))
        limits.check_regular_file(root / "tracks.npz", "render tracks")
        with np.load(root / "tracks.npz") as z:
            positions = [z[f"positions_{i}"] for i in range(len(meta["parts"]))]
            return cls(root, meta, positions, z["candidate_part"], z["candidate_positions"], z["visible"])

    @property
    def part_names(self) -> list[str]:
        return [p["name"] for p in self.meta["parts"]]

    @property
    def num_views(self) -> int:
        return len(self.meta["cameras"])

    @property
    def num_frames(self) -> int:
        return len(self.meta["frame_times"])

    @property
    def resolution(self) -> tuple[int, int]:
        w, h = self.meta["resolution"]
        return int(w), int(h)

    def project(self, view: int, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(..., 2)`` (x right, y down) of world points ``(..., 3)`` in ``view``."""
        cam = self.meta["cameras"][view]
        k, e = np.asarray(cam["K"]), np.asarray(cam["world_to_camera"])
        q = points @ e[:3, :3].T + e[:3, 3]
        return np.stack([k[0, 0] * q[..., 0] / q[..., 2] + k[0, 2], k[1, 1] * q[..., 1] / q[..., 2] + k[1, 2]], -1)

    def rgba(self, view: int, frame: int) -> np.ndarray:
        """uint8 ``(H, W, 4)``."""
        return np.asarray(PIL.Image.open(self.root / f"view_{view:02d}" / f"rgba_{frame:03d}.png").convert("RGBA"))

    def rgb_on_white(self, view: int, frame: int) -> np.ndarray:
        """uint8 ``(H, W, 3)``: the render composited on a white background."""
        rgba = self.rgba(view, frame).astype(np.float32)
        a = rgba[..., 3:] / 255.0
        return (rgba[..., :3] * a + 255.0 * (1 - a) + 0.5).astype(np.uint8)

    def part_index(self, view: int, frame: int) -> np.ndarray:
        """int ``(H, W)``: ``part + 1`` per pixel, 0 for background."""
        raw = np.asarray(PIL.Image.open(self.root / f"view_{view:02d}" / f"index_{frame:03d}.png").convert("RGB"))[..., 0]
        if self.meta.get("index_view_transform", "Raw") == "Raw":
            return raw.astype(np.int32)
        v = raw / 255.0  # written through the sRGB curve: undo it
        lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
        return np.rint(lin * 255).astype(np.int32)
