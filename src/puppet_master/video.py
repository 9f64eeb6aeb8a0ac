"""Writing generated videos (mp4 / gif / webp) and drawing drags on frames."""

from __future__ import annotations

import os
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import cv2
import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import PIL.Image
from PIL import ImageSequence

from .errors import UserInputError

VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")

#: Drag colours (RGB), one per slot, as in the figures of the paper.
DRAG_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


#: Prefix of the temporary file a video is written to before it is renamed (short, so a
#: long output name still leaves room for it).
TEMP_PREFIX = ".pm-"
#: Limits on a video read from a file: frames, and pixels per frame.
MAX_VIDEO_FRAMES = 1024
MAX_VIDEO_PIXELS = 4096 * 4096


def check_output_path(path: str | Path, overwrite: bool = False) -> Path:
    """Validate a video output path before any work is done.

    Besides the suffix and the folder's permissions, this creates (and removes) a
    temporary file in the folder and, for a new output, the output name itself, so a
    name the file system refuses (too long, invalid characters, a read-only mount) is
    reported now rather than after minutes of sampling.

    Raises:
        UserInputError: unsupported suffix, existing file without ``overwrite``, a
            folder, missing or non-writable folder, or a name that cannot be created.
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserInputError(f"output {str(path)!r} must end in one of {', '.join(VIDEO_SUFFIXES)}")
    try:
        exists, is_dir = path.exists() or path.is_symlink(), path.is_dir()
    except OSError as exc:
        raise UserInputError(f"output {str(path)!r} is not a usable file name: {exc.strerror or exc}") from None
    if exists and not overwrite:
        raise UserInputError(f"output {str(path)!r} already exists: pass --overwrite to replace it")
    if is_dir:
        raise UserInputError(f"output {str(path)!r} is a folder")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        problem = "is not a folder" if parent.exists() else "does not exist"
        raise UserInputError(f"output folder {str(parent)!r} {problem}")
    if not os.access(parent, os.W_OK):
        raise UserInputError(f"output folder {str(parent)!r} is not writable")
    _probe_output(path, parent, exists)
    return path


def _probe_output(path: Path, parent: Path, exists: bool) -> None:
    """Create a temporary file in ``parent``; for a new output also create (and remove) ``path`` itself."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix.lower(), dir=parent)
    except OSError as exc:
        raise UserInputError(f"cannot write in output folder {str(parent)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        if exists:
            # renaming over a file in a sticky folder (like /tmp) needs its owner or the folder's
            folder, target = os.stat(parent), os.stat(path)
            if folder.st_mode & stat.S_ISVTX and os.geteuid() not in (0, target.st_uid, folder.st_uid):
                raise UserInputError(f"output {str(path)!r} belongs to another user in a shared folder: "
                                     "it cannot be replaced; choose another name")
        else:  # the output name itself must be creatable in the folder
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.unlink(path)
    except OSError as exc:
        raise UserInputError(f"output {str(path)!r} cannot be created: {exc.strerror or exc}") from None
    finally:
        os.unlink(tmp)


def to_uint8_frames(frames) -> np.ndarray:
    """Frames as ``uint8 (N, H, W, 3)`` from PIL images, float arrays in [0, 1] or uint8 arrays."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        arr = frames
    else:
        arr = np.stack([np.asarray(f.convert("RGB")) if isinstance(f, PIL.Image.Image) else np.asarray(f) for f in frames])
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return arr


def draw_drags(frames: np.ndarray, trajectories: np.ndarray, upto_current: bool = True, thickness: int = 2) -> np.ndarray:
    """Draw drags on frames: the track so far, an arrow to the current point, a dot at the start.

    Args:
        frames: ``uint8 (N, H, W, 3)``.
        trajectories: ``(K, N', 2)`` in the frames' pixels (x right, y down); resampled
            to ``N`` frames if needed. Points outside the frame are drawn to its edge.
        upto_current: draw frame ``n`` with the track up to ``n`` (else the whole drag).

    Returns:
        A new ``uint8 (N, H, W, 3)`` array.
    """
    out = frames.copy()
    n, h, w = out.shape[:3]
    traj = np.asarray(trajectories, dtype=np.float64)
    if traj.shape[1] != n:
        src, dst = np.linspace(0, 1, traj.shape[1]), np.linspace(0, 1, n)
        traj = np.stack([np.stack([np.interp(dst, src, t[:, c]) for c in range(2)], -1) for t in traj])
    for f in range(n):
        canvas = np.ascontiguousarray(out[f])
        last = f if upto_current else n - 1
        for k, track in enumerate(traj):
            color = DRAG_COLORS[k % len(DRAG_COLORS)]
            # points off the frame (a part moving out of view) are drawn to the edge: OpenCV clips the
            # lines; the clip here only keeps the integer conversion in range
            pts = np.round(np.clip(track[: last + 1], [-w, -h], [2 * w, 2 * h])).astype(np.int32)
            if len(pts) > 1:
                cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, color, thickness, cv2.LINE_AA)
            start, end = tuple(int(v) for v in pts[0]), tuple(int(v) for v in pts[-1])
            if start != end:
                cv2.arrowedLine(canvas, tuple(int(v) for v in pts[max(0, len(pts) - 2)]), end, color, thickness, cv2.LINE_AA, tipLength=0.5)
            cv2.circle(canvas, start, thickness + 2, color, -1, cv2.LINE_AA)
        out[f] = canvas
    return out


def write_video(frames, path: str | Path, fps: float = 7.0, overwrite: bool = False) -> Path:
    """Write frames to ``.mp4`` (H.264 via ffmpeg), ``.gif`` or ``.webp`` (looping) atomically.

    The file is written under a temporary name in the same folder and renamed at the
    end, so an interrupted write never leaves a partial file under ``path``.

    Args:
        frames: PIL images, or an array ``(N, H, W, 3)`` (uint8, or float in [0, 1]).
        fps: frames per second.

    Raises:
        UserInputError: see :func:`check_output_path`.
    """
    path = check_output_path(path, overwrite)
    arr = to_uint8_frames(frames)
    suffix = path.suffix.lower()
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".mp4":
            # yuv420p needs even sizes; macro_block_size=2 pads odd sizes minimally
            with imageio.get_writer(tmp_name, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=2, quality=8) as writer:
                for frame in arr:
                    writer.append_data(frame)
        else:
            images = [PIL.Image.fromarray(f) for f in arr]
            kwargs = dict(save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
            if suffix == ".webp":
                kwargs["quality"] = 90
            images[0].save(tmp_name, **kwargs)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def read_video(path: str | Path, max_frames: int = MAX_VIDEO_FRAMES) -> np.ndarray:
    """Read all frames of a video as ``uint8 (N, H, W, 3)``.

    GIF and WebP writers (Pillow, libwebp) merge identical consecutive frames into one
    frame shown longer; those frames are expanded again by their duration relative to
    the shortest one, so a constant-rate clip keeps its frame count.

    Raises:
        UserInputError: missing, empty or corrupt file, more than ``max_frames`` frames,
            or frames larger than :data:`MAX_VIDEO_PIXELS`.
    """
    path = Path(path)
    try:
        frames = _read_frames(path, max_frames)
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder error means "not a readable video" to the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"cannot read video {str(path)!r}: {first}") from None
    if len(frames) > max_frames:
        raise UserInputError(f"video {str(path)!r} has more than {max_frames} frames")
    return frames


def _read_frames(path: Path, max_frames: int) -> np.ndarray:
    if path.suffix.lower() in (".gif", ".webp"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            im = PIL.Image.open(path)
        with im:
            _check_frame_size(path, *im.size)
            if getattr(im, "n_frames", 1) > max_frames:
                raise UserInputError(f"video {str(path)!r} has {im.n_frames} frames, more than {max_frames}")
            frames, durations = [], []
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB")))
                durations.append(frame.info.get("duration") or 0)
        base = min((d for d in durations if d > 0), default=0)
        repeats = [max(1, int(round(d / base))) if base else 1 for d in durations]
        if sum(repeats) > max_frames:
            raise UserInputError(f"video {str(path)!r} has more than {max_frames} frames")
        return np.stack([f for f, r in zip(frames, repeats) for _ in range(r)])
    props = iio.improps(path)
    if len(props.shape) >= 3:
        _check_frame_size(path, props.shape[-2] if len(props.shape) == 4 else props.shape[1],
                          props.shape[-3] if len(props.shape) == 4 else props.shape[0])
    frames = iio.imread(path, index=None)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] < 3 or frames.dtype != np.uint8:
        raise UserInputError(f"video {str(path)!r} is not an 8-bit colour video (got {frames.shape} {frames.dtype})")
    return frames[..., :3]


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_VIDEO_PIXELS:
        raise UserInputError(f"video {str(path)!r} has {width}x{height} frames, larger than the "
                             f"{MAX_VIDEO_PIXELS // 10**6} megapixel limit")


def side_by_side(videos: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate equally long ``(N, H, W, 3)`` videos horizontally."""
    return np.concatenate(list(videos), axis=2)
