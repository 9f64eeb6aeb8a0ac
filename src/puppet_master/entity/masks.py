"""Entity masks for DragAnything: loading, drag → entity assignment, inscribed radius, fallbacks.

An *entity* is a region of the first frame given by a boolean mask ``(H, W)`` (row = y
down, column = x right, pixels of the image it belongs to). A drag moves the entity whose
mask contains its start point.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import PIL.Image

from ..errors import UserInputError
from ..segmentation import grabcut_foreground

#: The release caps the disc radius at 50 pixels (at its 576×320 resolution).
MAX_RADIUS = 50


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image: white (> 127) is the entity; an alpha channel, if not opaque, is used instead.

    Args:
        path: PNG/JPEG/... file.
        size: ``(width, height)`` the mask must have (that of the input image).

    Returns:
        bool ``(H, W)``.

    Raises:
        UserInputError: missing/unreadable file, wrong size, or an empty mask.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"mask {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            img = PIL.Image.open(path)
        with img:
            if size is not None and tuple(img.size) != tuple(size):  # from the header: nothing decoded yet
                raise UserInputError(
                    f"mask {str(path)!r} is {img.size[0]}x{img.size[1]} but the image is {size[0]}x{size[1]}: "
                    "give masks of the image's size"
                )
            img.load()
            if img.mode in ("RGBA", "LA") and np.asarray(img.getchannel("A")).min() < 255:
                arr = np.asarray(img.getchannel("A"))
            else:
                arr = np.asarray(img.convert("L"))
    except UserInputError:
        raise
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise UserInputError(f"mask {str(path)!r} is larger than Pillow's decompression-bomb limit: give a mask of "
                             "the image's size") from None
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UserInputError(f"cannot read mask {str(path)!r}: {exc}") from None
    mask = arr > 127
    if not mask.any():
        raise UserInputError(f"mask {str(path)!r} is empty (no pixel brighter than 127): white marks the entity")
    return mask


def assign_drags_to_masks(starts: np.ndarray, masks: Sequence[np.ndarray]) -> list[int]:
    """For each drag, the index of the entity mask containing its start point.

    When several masks contain it (an object and one of its parts), the smallest wins.

    Args:
        starts: ``(K, 2)`` start points in pixels (x right, y down) of the masks' image.
        masks: bool ``(H, W)`` masks.

    Returns:
        ``K`` mask indices.

    Raises:
        UserInputError: no masks, or a drag starting outside every mask.
    """
    if len(masks) == 0:
        raise UserInputError("no entity masks given: add --mask FILE (white = entity) for the dragged entities")
    h, w = masks[0].shape
    areas = [int(m.sum()) for m in masks]
    out = []
    for k, (x, y) in enumerate(np.asarray(starts, dtype=np.float64)):
        col, row = min(max(int(x), 0), w - 1), min(max(int(y), 0), h - 1)
        hits = [i for i, m in enumerate(masks) if m[row, col]]
        if not hits:
            raise UserInputError(
                f"drag {k + 1} starts at ({x:g}, {y:g}), outside every mask: start each drag on the entity it moves "
                "or add a mask covering that point"
            )
        out.append(min(hits, key=lambda i: areas[i]))
    return out


def inscribed_radius(mask: np.ndarray, max_radius: int | None = MAX_RADIUS) -> int:
    """Radius in pixels of the largest circle inside ``mask`` (Euclidean distance transform).

    DragAnything uses it as the radius of an entity's Gaussian disc, capped at
    ``max_radius`` (50 px at 576×320 in the release; ``None`` = no cap).

    Args:
        mask: bool ``(H, W)`` at the model's resolution.

    Returns:
        ``int`` radius (0 for an empty or one-pixel-thin mask).
    """
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    radius = int(dist.max()) if dist.size else 0
    return radius if max_radius is None else min(radius, int(max_radius))


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a bool mask to ``(height, width)`` (bilinear, threshold ½, as the release does)."""
    if mask.shape == (height, width):
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR) > 0


def _component_at(mask: np.ndarray, point: tuple[int, int]) -> np.ndarray:
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    label = labels[point[1], point[0]]
    return labels == label if label else mask


def segment_entities(image: PIL.Image.Image, starts: np.ndarray, max_side: int = 512) -> list[np.ndarray]:
    """Offline entity masks: one GrabCut segment per drag, seeded at its start point.

    Each mask is the connected region around the seed that GrabCut
    (:func:`puppet_master.segmentation.grabcut_foreground`) separates from the rest of the
    image; it always contains the seed. Large images are segmented at ``max_side`` pixels
    on their longer side and the masks scaled back.

    Args:
        image: the input image.
        starts: ``(K, 2)`` drag start points in pixels of ``image``.

    Returns:
        ``K`` bool masks ``(H, W)`` of the image's size.
    """
    w, h = image.size
    scale = min(1.0, max_side / max(w, h))
    small = image.convert("RGB")
    if scale < 1.0:
        small = small.resize((max(1, round(w * scale)), max(1, round(h * scale))), PIL.Image.Resampling.BILINEAR)
    sw, sh = small.size
    masks = []
    for x, y in np.asarray(starts, dtype=np.float64):
        seed = (min(max(int(x * scale), 0), sw - 1), min(max(int(y * scale), 0), sh - 1))
        fg = _component_at(grabcut_foreground(small, [seed]), seed)
        full = resize_mask(fg, w, h)
        full[min(max(int(y), 0), h - 1), min(max(int(x), 0), w - 1)] = True
        masks.append(full)
    return masks


def sam_entity_masks(image: PIL.Image.Image, starts: np.ndarray, checkpoint: str | Path, model_type: str = "vit_h",
                     device: str = "cpu") -> list[np.ndarray]:
    """Entity masks from Segment Anything (the release's choice), one per drag start point.

    Needs the optional ``segment-anything`` package and a local SAM checkpoint
    (e.g. ``sam_vit_h_4b8939.pth``); each start point is a positive point prompt and the
    highest-scoring of SAM's masks is kept.

    Raises:
        UserInputError: ``segment-anything`` not installed or the checkpoint missing.
    """
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as exc:
        raise UserInputError(
            "SAM is not installed (pip install segment-anything): give --mask files or use the built-in GrabCut "
            "segmentation instead"
        ) from exc
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserInputError(f"SAM checkpoint {str(checkpoint)!r} does not exist")
    if model_type not in sam_model_registry:
        raise UserInputError(f"unknown SAM model type {model_type!r}: choose from {', '.join(sam_model_registry)}")
    sam = sam_model_registry[model_type](checkpoint=str(checkpoint)).to(device)
    predictor = SamPredictor(sam)
    predictor.set_image(np.asarray(image.convert("RGB")))
    masks = []
    for x, y in np.asarray(starts, dtype=np.float64):
        candidates, scores, _ = predictor.predict(
            point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=True
        )
        masks.append(candidates[int(np.argmax(scores))].astype(bool))
    return masks
