"""Input images for generation: loading, foreground on white, padding to the model's square.

The released model was trained on 256×256 renders of one object on a white background
(docs/design.md §1, §6). :func:`prepare_input` brings any image there and maps the drags
with it, so the user's pixel coordinates keep pointing at the same object points.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import PIL.ImageOps

from . import limits
from .drags import DragSet
from .errors import UserInputError

WHITE = (255, 255, 255)


#: Largest input image accepted, in pixels (8192×8192 by default; :data:`puppet_master.limits.MAX_IMAGE_PIXELS`).
MAX_IMAGE_PIXELS = limits.MAX_IMAGE_PIXELS


def open_image(path: str | Path, what: str = "image", pad_to_square: bool = True,
               notice: Callable[[str], None] | None = None) -> PIL.Image.Image:
    """Open and decode an image file as it is displayed, with every check before decoding.

    The file must be a regular file (a folder, device or FIFO is refused without reading
    it); its size from the header is checked with :func:`puppet_master.limits.check_image_size`
    (pixels, and the square it is padded to when ``pad_to_square``) before the pixels are
    decoded. The EXIF orientation (phone photos) is applied, so the result is in the
    pixels the user sees and points on it are in displayed coordinates (x right, y down).
    Of an animated file (GIF, APNG, WebP) the first frame is decoded and ``notice`` is told so.

    Args:
        path: image file.
        what: what the file is, for messages (``"image"``, ``"mask"``).

    Returns:
        The decoded image in its file mode (not converted).

    Raises:
        UserInputError: missing, not a regular file, not a readable image, or too large.
    """
    path = Path(path)
    label = f"{what} {str(path)!r}"
    with limits.open_regular(path, what) as fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
                img = PIL.Image.open(fh)
            limits.check_image_size(*img.size, what=label, pad_to_square=pad_to_square)
            frames = getattr(img, "n_frames", 1)
            img.load()
            if frames > 1 and notice is not None:
                notice(f"{path.name} is animated ({frames} frames): the first frame is used")
            PIL.ImageOps.exif_transpose(img, in_place=True)
            return img
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
            raise UserInputError(f"{label} is larger than the {limits.current('MAX_IMAGE_PIXELS') / 1e6:.0f} "
                                 "megapixel limit: downscale it first") from None
        except UserInputError:
            raise
        except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
            raise UserInputError(f"cannot read {label}: {exc}") from None


def load_image(path: str | Path, notice: Callable[[str], None] | None = None) -> PIL.Image.Image:
    """Open an image file fully, as RGB or RGBA (8 bits per channel), upright.

    High-bit-depth images (16-bit greyscale PNG ``I;16``, 32-bit integer ``I``, float
    ``F``) are rescaled to 8 bits by their value range, not clipped. Of an animated file
    (GIF, APNG, WebP) the first frame is used and ``notice`` is told so. The EXIF
    orientation is applied (:func:`open_image`): drags are given in the displayed pixels.

    Args:
        path: image file.
        notice: called with a one-line message about a silent choice (animated input).

    Raises:
        UserInputError: the file is missing, a folder or another non-regular file, not a
            readable image, more than :data:`MAX_IMAGE_PIXELS` pixels, or so elongated
            that its padded square is (checked before decoding).
    """
    return _to_rgb_or_rgba(open_image(path, "image", notice=notice))


def _to_rgb_or_rgba(img: PIL.Image.Image) -> PIL.Image.Image:
    """8-bit RGB, or RGBA when the image has transparency; high bit depths rescaled, not clipped."""
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        else:
            top = 65535.0 if img.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > top):  # outside any usual range: stretch
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr, top = arr - lo, max(hi - lo, 1e-12)
        grey = np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return PIL.Image.fromarray(grey).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    return img.convert("RGBA" if has_alpha else "RGB")


def composite_on_white(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB image with the alpha channel (if any) used as foreground mask over white."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    background = PIL.Image.new("RGBA", image.size, WHITE + (255,))
    return PIL.Image.alpha_composite(background, image).convert("RGB")


@dataclass(frozen=True)
class SquareTransform:
    """How an input image was placed in the model's square: ``p_model = (p_input + pad) · scale``.

    Attributes:
        scale: model pixels per input pixel.
        pad: ``(left, top)`` padding in input pixels added before scaling.
        size: side of the model image in pixels.
    """

    scale: float
    pad: tuple[float, float]
    size: int

    def to_model(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) + np.asarray(self.pad)) * self.scale

    def to_input(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) / self.scale - np.asarray(self.pad)


def square_pad(image: PIL.Image.Image, size: int) -> tuple[PIL.Image.Image, SquareTransform]:
    """Pad an RGB or RGBA image to a centred square (aspect kept) and resize it to ``size × size``.

    The margins are white (transparent white for an RGBA image, so its alpha channel still
    marks the foreground); an odd margin is split by rounding half to even, so the image
    lands on whole pixels. Resizing uses Lanczos filtering and is skipped when the square's
    side is already ``size``. Used by the command line, the Python API (through
    :func:`prepare_input`) and the demo alike.

    Returns:
        ``(square image of the input's mode, transform from input to square pixels)``.

    Raises:
        UserInputError: the square would exceed :data:`MAX_IMAGE_PIXELS` (checked before
            it is allocated).
    """
    w, h = image.size
    limits.check_image_size(w, h, what="image")
    side = max(w, h)
    left, top = int(round((side - w) / 2.0)), int(round((side - h) / 2.0))
    fill = WHITE + (0,) if image.mode == "RGBA" else WHITE
    square = PIL.Image.new(image.mode, (side, side), fill)
    square.paste(image, (left, top))
    if side != size:
        square = square.resize((size, size), PIL.Image.Resampling.LANCZOS)
    return square, SquareTransform(scale=size / side, pad=(float(left), float(top)), size=size)


def prepare_input(image: PIL.Image.Image, drags: DragSet, size: int = 256) -> tuple[PIL.Image.Image, DragSet, SquareTransform]:
    """Composite on white, pad to a centred square (aspect kept) and resize to ``size``.

    Args:
        image: RGB or RGBA input image.
        drags: drags in the input image's pixels (their ``width``/``height`` must equal
            the image's).
        size: side of the square model input (256 for the released model).

    Returns:
        ``(square RGB image, drags in the square's pixels, transform)``.

    Raises:
        UserInputError: if the drags refer to an image of another size.
    """
    w, h = image.size
    if (drags.width, drags.height) != (w, h):
        raise UserInputError(f"drags are for a {drags.width}x{drags.height} image but the image is {w}x{h}")
    square, transform = square_pad(composite_on_white(image), size)
    pad = transform.pad
    mapped = drags.transformed(transform.scale, (pad[0] * transform.scale, pad[1] * transform.scale), size, size)
    return square, mapped, transform


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits in a frame of another aspect (scaled to fit, centred): ``p_frame = p_input · scale + offset``.

    Attributes:
        scale: ``(sx, sy)`` frame pixels per input pixel (equal but for the rounding of
            :attr:`size` to whole pixels).
        offset: ``(left, top)`` of the image in the frame, in frame pixels.
        size: ``(w, h)`` of the image in the frame, in pixels.
        frame: ``(W, H)`` of the frame, in pixels.
    """

    scale: tuple[float, float]
    offset: tuple[int, int]
    size: tuple[int, int]
    frame: tuple[int, int]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of the image in the frame (right and bottom exclusive)."""
        return self.offset[0], self.offset[1], self.offset[0] + self.size[0], self.offset[1] + self.size[1]

    def map_drags(self, drags: DragSet) -> DragSet:
        """Drags in the input's pixels → the same points in the frame's pixels."""
        return drags.transformed(self.scale, (float(self.offset[0]), float(self.offset[1])), *self.frame)


def letterbox(image: PIL.Image.Image, width: int, height: int) -> tuple[PIL.Image.Image, Letterbox]:
    """Fit an image into a ``width × height`` frame keeping its aspect: scale (Lanczos), centre, pad white.

    An image of the frame's aspect fills it (no padding); otherwise the image spans the
    frame's width or height and white margins fill the rest. Used by DragAnything, whose
    model works at a fixed, wide resolution (576 × 320 for the released weights), so that
    a photo of another aspect is not stretched.

    Args:
        image: RGB (or RGBA, composited on white) image.
        width, height: the frame's size in pixels.

    Returns:
        ``(RGB frame image, placement)``.
    """
    w, h = image.size
    scale = min(width / w, height / h)
    size = (min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale))))
    offset = ((width - size[0]) // 2, (height - size[1]) // 2)
    placed = composite_on_white(image)
    if placed.size != size:
        placed = placed.resize(size, PIL.Image.Resampling.LANCZOS)
    frame = PIL.Image.new("RGB", (width, height), WHITE)
    frame.paste(placed, offset)
    return frame, Letterbox(scale=(size[0] / w, size[1] / h), offset=offset, size=size, frame=(width, height))
