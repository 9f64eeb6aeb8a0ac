"""Input images for generation: loading, foreground on white, padding to the model's square.

The released model was trained on 256×256 renders of one object on a white background
(docs/design.md §1, §6). :func:`prepare_input` brings any image there and maps the drags
with it, so the user's pixel coordinates keep pointing at the same object points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image


from .drags import DragSet
from .errors import UserInputError

WHITE = (255, 255, 255)


def load_image(path: str | Path) -> PIL.Image.Image:
    """Open an image file fully (RGB or RGBA).

    Raises:
        UserInputError: the file is missing, a folder, or not a readable image.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"image {str(path)!r} does not exist")
    if not path.is_file():
        raise UserInputError(f"image {str(path)!r} is not a file")
    try:
        with PIL.Image.open(path) as img:
            img.load()
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            return img.convert("RGBA" if has_alpha else "RGB")
    except (PIL.UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserInputError(f"cannot read image {str(path)!r}: {exc}") from exc


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
    """
    w, h = image.size
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
