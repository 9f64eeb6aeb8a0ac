"""Entity masks for DragAnything: loading, drag → entity assignment, inscribed radius, fallbacks.

An *entity* is a region of the first frame given by a boolean mask ``(H, W)`` (row = y
down, column = x right, pixels of the image it belongs to). A drag moves the entity whose
mask contains its start point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import PIL.Image
import safetensors.torch
import torch

from .. import limits
from ..errors import UserInputError
from ..preprocessing import open_image
from ..segmentation import grabcut_foreground

#: The release caps the disc radius at 50 pixels (at its 576×320 resolution).
MAX_RADIUS = 50


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask image: white (> 127) is the entity; an alpha channel, if not opaque, is used instead.

    Read like an input image (:func:`puppet_master.preprocessing.open_image`): a regular
    file, its size checked before decoding, the EXIF orientation applied, so the mask is
    in the pixels the user sees, as the image is.

    Args:
        path: PNG/JPEG/... file.
        size: ``(width, height)`` the mask must have (that of the input image).

    Returns:
        bool ``(H, W)``.

    Raises:
        UserInputError: missing, non-regular or unreadable file, too large, wrong size, or
            an empty mask.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"mask {str(path)!r} does not exist")
    img = open_image(path, "mask", pad_to_square=False)
    if img.mode in ("RGBA", "LA") and np.asarray(img.getchannel("A")).min() < 255:
        arr = np.asarray(img.getchannel("A"))
    else:
        arr = np.asarray(img.convert("L"))
    mask = arr > 127
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        raise UserInputError(
            f"mask {str(path)!r} is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}: "
            "give masks of the image's size"
        )
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


#: SAM's image-encoder width → model type of ``segment_anything.sam_model_registry``.
SAM_ENCODER_WIDTHS = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}


def load_sam_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a local SAM checkpoint, read without running any code from it.

    A ``.safetensors`` file is read with safetensors; any other file with
    ``torch.load(weights_only=True)`` (tensors and plain containers only). The flag is
    passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment does
    not turn it off (torch honours that variable only when the caller leaves
    ``weights_only`` unset). Before reading, the file must be a regular file of at most
    :data:`~puppet_master.limits.MAX_CHECKPOINT_BYTES`, and the tensor data it declares
    (zip records may be compressed) must fit that limit too.

    Returns:
        ``{parameter name: tensor}`` (a ``"model"`` or ``"state_dict"`` wrapper is removed).

    Raises:
        UserInputError: missing, non-regular, oversized, unreadable, or not a plain state dict.
    """
    path = Path(checkpoint)
    what = "SAM checkpoint"
    if not path.exists():
        raise UserInputError(f"{what} {str(path)!r} does not exist")
    limit = limits.current("MAX_CHECKPOINT_BYTES")
    with limits.open_regular(path, what, limit, "MAX_CHECKPOINT_BYTES") as fh:
        try:
            if path.suffix.lower() == ".safetensors":
                state = safetensors.torch.load_file(str(path))
            else:
                limits.torch_payload_bytes(fh, f"{what} {str(path)!r}", limit, "MAX_CHECKPOINT_BYTES")
                fh.seek(0)
                state = torch.load(fh, map_location="cpu", weights_only=True)
        except UserInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreadable or foreign file is one problem for the user
            raise UserInputError(f"cannot load the {what} {str(path)!r} (only tensors are read; nothing was "
                                 f"run): {limits.load_error_reason(exc)}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserInputError(f"{what} {str(path)!r} is not a state dict of tensors")
    return state


def sam_model_type(state: dict[str, torch.Tensor]) -> str:
    """``vit_h``, ``vit_l`` or ``vit_b`` from a SAM state dict (its image encoder's width).

    Raises:
        UserInputError: not a SAM state dict.
    """
    weight = state.get("image_encoder.patch_embed.proj.weight")
    model_type = None
    if isinstance(weight, torch.Tensor) and weight.ndim:
        model_type = SAM_ENCODER_WIDTHS.get(int(weight.shape[0]))
    if model_type is None:
        raise UserInputError("the SAM checkpoint is not a Segment Anything model (no ViT-H/L/B image encoder)")
    return model_type


def sam_entity_masks(image: PIL.Image.Image, starts: np.ndarray, checkpoint: str | Path, model_type: str | None = None,
                     device: str = "cpu") -> list[np.ndarray]:
    """Entity masks from Segment Anything (the release's choice), one per drag start point.

    Needs the optional ``segment-anything`` package and a local SAM checkpoint
    (e.g. ``sam_vit_h_4b8939.pth``); each start point is a positive point prompt and the
    highest-scoring of SAM's masks is kept.

    Trust: the model's code comes from the installed ``segment_anything`` package; the
    checkpoint is read here by :func:`load_sam_state_dict` (no code runs) and loaded into
    a model the package builds without a checkpoint, so it never unpickles the file itself.

    Args:
        model_type: ``vit_h``, ``vit_l`` or ``vit_b``; ``None`` reads it from the checkpoint.

    Raises:
        UserInputError: ``segment-anything`` not installed, the checkpoint missing, unsafe,
            unreadable or not of the model type.
    """
    try:
        from segment_anything import SamPredictor, sam_model_registry  # optional dependency
    except ImportError as exc:
        raise UserInputError(
            "SAM is not installed (pip install segment-anything): give --mask files or use the built-in GrabCut "
            "segmentation instead"
        ) from exc
    state = load_sam_state_dict(checkpoint)
    model_type = model_type or sam_model_type(state)
    if model_type not in sam_model_registry:
        raise UserInputError(f"unknown SAM model type {model_type!r}: choose from {', '.join(sam_model_registry)}")
    sam = sam_model_registry[model_type](checkpoint=None)  # built without a checkpoint: the package reads no file
    try:
        sam.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise UserInputError(f"the SAM checkpoint {str(checkpoint)!r} does not fit a {model_type} model: "
                             f"{first}") from None
    predictor = SamPredictor(sam.to(device))
    predictor.set_image(np.asarray(image.convert("RGB")))
    masks = []
    for x, y in np.asarray(starts, dtype=np.float64):
        candidates, scores, _ = predictor.predict(
            point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=True
        )
        masks.append(candidates[int(np.argmax(scores))].astype(bool))
    return masks
