"""Writing generated videos (mp4 / gif / webp) and drawing drags on frames."""

from __future__ import annotations

import logging
import math
import os
import stat
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import cv2
import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import PIL.Image
from PIL import ImageSequence

from . import limits
from .errors import UserInputError

VIDEO_SUFFIXES = (".mp4", ".gif", ".webp")

#: Drag colours (RGB), one per slot, as in the figures of the paper.
DRAG_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


#: Prefix of the temporary file a video is written to before it is renamed (short, so a
#: long output name still leaves room for it). The full temporary name is
#: ``.pm-<pid>-<output key>-<random><suffix>``: the writing process and a hash of the output
#: name, so a later run for the same output can remove what a killed one left.
TEMP_PREFIX = ".pm-"
#: Limits on a video read from a file: frames, and pixels per frame (:mod:`puppet_master.limits`).
MAX_VIDEO_FRAMES = limits.MAX_VIDEO_FRAMES
MAX_VIDEO_PIXELS = limits.MAX_VIDEO_PIXELS


def _temp_key(path: Path) -> str:
    return f"{zlib.crc32(path.name.encode('utf-8', 'surrogateescape')):08x}"


def _temp_prefix(path: Path) -> str:
    return f"{TEMP_PREFIX}{os.getpid()}-{_temp_key(path)}-"


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Remove the temporary files that killed runs (SIGKILL, power loss) left for the output ``path``.

    Only files of this user named for the same output whose writing process no longer
    exists are removed; a run in progress keeps its file.

    Returns:
        The files removed.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    removed = []
    try:
        candidates = list(parent.glob(f"{TEMP_PREFIX}*-{_temp_key(path)}-*{path.suffix.lower()}"))
    except OSError:
        return removed
    for tmp in candidates:
        pid = tmp.name[len(TEMP_PREFIX):].split("-", 1)[0]
        try:
            owner = os.lstat(tmp).st_uid
        except OSError:
            continue
        if pid.isdigit() and owner == os.geteuid() and not limits.process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


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
    remove_stale_temp_files(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=path.suffix.lower(), dir=parent)
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
    end, so an interrupted write never leaves a partial file under ``path``; the temporary
    file is removed when writing fails or is interrupted (an exception, Ctrl-C, SIGTERM in
    the command line), and one left by a killed process is removed by the next run for
    the same output (:func:`remove_stale_temp_files`).

    Args:
        frames: PIL images, or an array ``(N, H, W, 3)`` (uint8, or float in [0, 1]).
        fps: frames per second.

    Raises:
        UserInputError: see :func:`check_output_path`.
    """
    path = check_output_path(path, overwrite)
    arr = to_uint8_frames(frames)
    suffix = path.suffix.lower()
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
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


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Read all frames of a video as ``uint8 (N, H, W, 3)``, bounded before decoding.

    The file must be a regular file. GIF and WebP are decoded by Pillow, other formats
    (MP4, ...) frame by frame by ffmpeg. The frame size (and, where the container says so,
    the frame count) is checked before any frame is decoded, and decoding stops as soon
    as the frames or their bytes pass the limits, so a small file claiming thousands of
    large frames never allocates them (:func:`puppet_master.limits.check_video_size`).

    GIF and WebP writers (Pillow, libwebp) merge identical consecutive frames into one
    frame shown longer; those frames are expanded again by their duration relative to
    the shortest one, so a constant-rate clip keeps its frame count.

    Args:
        max_frames: most frames accepted (default :data:`MAX_VIDEO_FRAMES`).

    Raises:
        UserInputError: missing, empty, corrupt or non-regular file, more than
            ``max_frames`` frames, frames larger than :data:`MAX_VIDEO_PIXELS`, or more than
            :data:`~puppet_master.limits.MAX_VIDEO_BYTES` decoded.
    """
    path = Path(path)
    max_frames = limits.current("MAX_VIDEO_FRAMES") if max_frames is None else max_frames
    limits.open_regular(path, "video").close()  # the kind of file, before any decoder opens it
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


def _check_frames(path: Path, width: int, height: int, frames: int | None, max_frames: int) -> None:
    if frames is not None and frames > max_frames:
        raise UserInputError(f"video {str(path)!r} has {frames} frames, more than {max_frames}")
    limits.check_video_size(width, height, frames, f"video {str(path)!r}")


def _read_frames(path: Path, max_frames: int) -> np.ndarray:
    if path.suffix.lower() in (".gif", ".webp"):
        return _read_pillow_frames(path, max_frames)
    return _read_ffmpeg_frames(path, max_frames)


def _read_pillow_frames(path: Path, max_frames: int) -> np.ndarray:
    with limits.open_regular(path, "video") as fh:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            im = PIL.Image.open(fh)
        with im:
            width, height = im.size
            _check_frames(path, width, height, None, max_frames)
            _check_frames(path, width, height, getattr(im, "n_frames", 1), max_frames)  # counted without decoding
            frames, durations = [], []
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB")))
                durations.append(frame.info.get("duration") or 0)
    base = min((d for d in durations if d > 0), default=0)
    repeats = [max(1, int(round(d / base))) if base else 1 for d in durations]
    if sum(repeats) > max_frames:
        raise UserInputError(f"video {str(path)!r} has more than {max_frames} frames")
    _check_frames(path, width, height, sum(repeats), max_frames)
    return np.stack([f for f, r in zip(frames, repeats) for _ in range(r)])


def _drop_kill_notice(record: logging.LogRecord) -> bool:
    """Logging filter: drop imageio-ffmpeg's notice that it killed an ffmpeg we stopped on purpose."""
    return "had to kill ffmpeg" not in record.getMessage()


def _read_ffmpeg_frames(path: Path, max_frames: int) -> np.ndarray:
    """Frames decoded one at a time by ffmpeg (imageio-ffmpeg), stopping at the limits."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = (int(v) for v in meta["size"])
        duration, fps = meta.get("duration") or 0.0, meta.get("fps") or 0.0
        estimate = int(duration * fps) if math.isfinite(duration * fps) else None
        _check_frames(path, width, height, None, max_frames)
        if estimate is not None and estimate > max_frames + max(2, max_frames // 10):
            # the container's duration says so: refuse before decoding (the count below is the hard bound)
            _check_frames(path, width, height, estimate, max_frames)
        frames = []
        for raw in reader:
            if len(frames) >= max_frames:
                raise UserInputError(f"video {str(path)!r} has more than {max_frames} frames")
            limits.check_video_size(width, height, len(frames) + 1, f"video {str(path)!r}")
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
    finally:
        # stops ffmpeg when decoding ended early: imageio-ffmpeg waits 1.5 s for it to quit, then kills it
        # and logs that it had to; a stop we asked for is no news to the user (their error is the message)
        ffmpeg_log = logging.getLogger("imageio_ffmpeg")
        ffmpeg_log.addFilter(_drop_kill_notice)
        try:
            reader.close()
        finally:
            ffmpeg_log.removeFilter(_drop_kill_notice)
    if not frames:
        raise UserInputError(f"cannot read video {str(path)!r}: it has no frames")
    return np.stack(frames)


def side_by_side(videos: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate equally long ``(N, H, W, 3)`` videos horizontally."""
    return np.concatenate(list(videos), axis=2)
