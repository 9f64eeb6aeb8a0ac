"""Resource limits on everything read from or written for a user, and the checks that apply them.

One place owns the limits (README "Safety and bad input"; docs/design.md §8). Every reader
of user input checks the *kind* of file first (a regular file: never a folder, a device
such as ``/dev/zero``, a FIFO or a socket, which can be endless or block) and its size
before reading, and bounds what it decodes *before* allocating it: image pixels after
orientation and padding, video frames, the tensor data of pickles and torch files, the
expanded size of YAML documents. Every copy has a byte budget and removes its partial file
when it fails.

Each limit ``NAME`` below can be changed with the environment variable
``PUPPET_MASTER_NAME`` (a whole number; bytes for sizes), e.g.
``PUPPET_MASTER_MAX_IMAGE_PIXELS=268435456``. The variables are read once, when this
module is imported; a malformed value is refused there. Error messages name the variable
that raises the limit they hit.

This module imports only the standard library and :mod:`puppet_master.errors`, so every
layer of the package may use it.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import stat
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from .errors import UserInputError

#: Prefix of the environment variables that override the limits.
ENV_PREFIX = "PUPPET_MASTER_"


def env_name(name: str) -> str:
    """The environment variable that overrides limit ``name`` (``PUPPET_MASTER_<name>``)."""
    return ENV_PREFIX + name


#: Limits whose environment variable does not hold a usable value: ``{name: message}``. Importing never
#: fails on them (every module imports this one); :func:`check_environment` and :func:`current` raise.
_INVALID: dict[str, str] = {}


def _limit(name: str, default: int) -> int:
    raw = os.environ.get(env_name(name), "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        _INVALID[name] = f"environment variable {env_name(name)} must be a whole number >= 1, got {raw[:40]!r}"
        return default
    return value


def check_environment() -> None:
    """Refuse a ``PUPPET_MASTER_<NAME>`` limit variable that is not a whole number >= 1 (the CLI calls it first).

    Raises:
        UserInputError: naming the variable and the value.
    """
    if _INVALID:
        raise UserInputError(next(iter(_INVALID.values())))


# --------------------------------------------------------------------------------------- limits
#: Pixels of an input image or mask, and of the square an image is padded to (its longer
#: side squared): 8192 × 8192.
MAX_IMAGE_PIXELS = _limit("MAX_IMAGE_PIXELS", 8192 * 8192)
#: Frames of a video read from a file.
MAX_VIDEO_FRAMES = _limit("MAX_VIDEO_FRAMES", 1024)
#: Pixels of one frame of a video read from a file (4096 × 4096).
MAX_VIDEO_PIXELS = _limit("MAX_VIDEO_PIXELS", 4096 * 4096)
#: Bytes of a decoded video (all frames, 8-bit RGB).
MAX_VIDEO_BYTES = _limit("MAX_VIDEO_BYTES", 1 << 30)
#: Bytes of a JSON file: drags, split examples, model configurations, curation models, labels.
MAX_JSON_BYTES = _limit("MAX_JSON_BYTES", 1 << 20)
#: Nesting depth of a drags JSON document.
MAX_JSON_DEPTH = _limit("MAX_JSON_DEPTH", 16)
#: Largest ``image_size`` side a drags JSON may name, in pixels.
MAX_IMAGE_SIDE = _limit("MAX_IMAGE_SIDE", 1 << 16)
#: Frames and slots of a drag tensor read from a file.
MAX_TENSOR_FRAMES = _limit("MAX_TENSOR_FRAMES", 1024)
MAX_TENSOR_SLOTS = _limit("MAX_TENSOR_SLOTS", 64)
#: Bytes of a training config (YAML).
MAX_CONFIG_BYTES = _limit("MAX_CONFIG_BYTES", 1 << 20)
#: Values (every scalar, list and mapping, counted each time an alias repeats it) of a
#: YAML document once its aliases are expanded.
MAX_CONFIG_NODES = _limit("MAX_CONFIG_NODES", 100_000)
#: Bytes of a pickle (a Drag-a-Move test batch), and of all the tensor data it decodes.
MAX_PICKLE_BYTES = _limit("MAX_PICKLE_BYTES", 256 << 20)
#: Elements of one tensor of a pickle (1 GiB of float32).
MAX_TENSOR_ELEMENTS = _limit("MAX_TENSOR_ELEMENTS", 1 << 28)
#: Nesting depth of lists / dicts / tuples in a pickle.
MAX_PICKLE_DEPTH = _limit("MAX_PICKLE_DEPTH", 32)
#: Bytes of a model checkpoint file read with ``torch.load`` (SAM, CoTracker), and of the
#: tensor data it decodes.
MAX_CHECKPOINT_BYTES = _limit("MAX_CHECKPOINT_BYTES", 4 << 30)
#: Side, in pixels, of the frames a model generates (``--size``, ``--resolution``).
MAX_MODEL_SIDE = _limit("MAX_MODEL_SIDE", 1024)
#: ``num_train_timesteps`` of a scheduler configuration (diffusers allocates arrays of it).
MAX_TRAIN_TIMESTEPS = _limit("MAX_TRAIN_TIMESTEPS", 100_000)
#: Bytes of one asset file that ``data build`` copies (folder and Objaverse sources).
MAX_ASSET_BYTES = _limit("MAX_ASSET_BYTES", 2 << 30)
#: Bytes of one file uploaded to the demo.
MAX_UPLOAD_BYTES = _limit("MAX_UPLOAD_BYTES", 64 << 20)

#: The names of all limits above (the README lists them with their variables).
LIMITS = ("MAX_IMAGE_PIXELS", "MAX_VIDEO_FRAMES", "MAX_VIDEO_PIXELS", "MAX_VIDEO_BYTES", "MAX_JSON_BYTES",
          "MAX_JSON_DEPTH", "MAX_IMAGE_SIDE", "MAX_TENSOR_FRAMES", "MAX_TENSOR_SLOTS", "MAX_CONFIG_BYTES",
          "MAX_CONFIG_NODES", "MAX_PICKLE_BYTES", "MAX_TENSOR_ELEMENTS", "MAX_PICKLE_DEPTH", "MAX_CHECKPOINT_BYTES",
          "MAX_MODEL_SIDE", "MAX_TRAIN_TIMESTEPS", "MAX_ASSET_BYTES", "MAX_UPLOAD_BYTES")


def current(name: str) -> int:
    """The value of limit ``name`` now (tests and callers may have changed the module attribute).

    Raises:
        UserInputError: its environment variable holds no usable value.
    """
    if name in _INVALID:
        raise UserInputError(_INVALID[name])
    return int(globals()[name])


def raise_hint(name: str) -> str:
    """``"set PUPPET_MASTER_<name> to raise the limit"``: the fix an error message names."""
    return f"set {env_name(name)} to raise the limit"


def format_bytes(n: int) -> str:
    """``n`` bytes as ``"1 MiB"``, ``"2.5 GiB"``, ``"300 bytes"``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"
    return f"{n} bytes"


# ---------------------------------------------------------------------------------- file kinds
def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words: ``file``, ``folder``, ``FIFO (named pipe)``, ``character device``…"""
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _not_regular(what: str, path: Path, mode: int) -> UserInputError:
    return UserInputError(f"cannot read {what} {str(path)!r}: it is not a file (it is a {file_kind(mode)}); "
                          "give a regular file")


def check_regular_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` (symbolic links followed), refusing anything but a regular file.

    Never opens the file, so a FIFO cannot block and a device is never read.

    Raises:
        UserInputError: missing, not readable, or a folder / device / FIFO / socket.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserInputError(f"cannot read {what} {str(path)!r}: it does not exist") from None
    except OSError as exc:
        raise UserInputError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(what, path, st.st_mode)
    return st


def open_regular(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None,
                 limit_name: str | None = None) -> BinaryIO:
    """Open a regular file for reading in binary mode, checking its kind and size on the open file.

    The file is opened with ``O_NONBLOCK`` (opening a FIFO never waits for a writer) and
    checked with ``fstat`` on the opened descriptor, so a path swapped after a check
    cannot slip through.

    Args:
        max_bytes: refuse a larger file (``None``: no size limit).
        limit_name: the limit ``max_bytes`` comes from (named in the error message).

    Raises:
        UserInputError: missing, unreadable, not a regular file, or larger than ``max_bytes``.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserInputError(f"cannot read {what} {str(path)!r}: it does not exist") from None
    except IsADirectoryError:
        raise _not_regular(what, path, stat.S_IFDIR) from None
    except OSError as exc:
        raise UserInputError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(what, path, st.st_mode)
        if max_bytes is not None and st.st_size > max_bytes:
            raise _too_large(what, path, max_bytes, limit_name)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _too_large(what: str, path: Path, max_bytes: int, limit_name: str | None) -> UserInputError:
    hint = f"; {raise_hint(limit_name)}" if limit_name else ""
    return UserInputError(f"{what} {str(path)!r} is larger than {format_bytes(max_bytes)}{hint}")


def read_bytes_bounded(path: str | os.PathLike, what: str, max_bytes: int, limit_name: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (read with a cap, never unbounded).

    Raises:
        UserInputError: see :func:`open_regular`; also a file that grew past ``max_bytes``
            while it was read.
    """
    with open_regular(path, what, max_bytes, limit_name) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise UserInputError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise _too_large(what, Path(path), max_bytes, limit_name)
    return data


# ------------------------------------------------------------------------------- decoded sizes
def check_image_size(width: int, height: int, what: str = "image", pad_to_square: bool = True) -> None:
    """Refuse an image whose pixels (or, with ``pad_to_square``, whose padded square) exceed the limit.

    ``width``/``height`` are the image's size in pixels as displayed (after EXIF
    orientation, which may swap them; the pixel count and the square do not change).
    Call it before decoding: the header gives the size.

    Raises:
        UserInputError: more than :data:`MAX_IMAGE_PIXELS` pixels, or a longer side whose
            square exceeds them (an extreme aspect ratio, e.g. 65536 × 1024).
    """
    limit = current("MAX_IMAGE_PIXELS")
    megapixels = f"{limit / 1e6:.0f} megapixel limit"
    if width * height > limit:
        raise UserInputError(f"{what} is {width}x{height} pixels, more than the {megapixels}: downscale it first "
                             f"(or {raise_hint('MAX_IMAGE_PIXELS')})")
    side = max(width, height)
    if pad_to_square and side * side > limit:
        raise UserInputError(f"{what} is {width}x{height} pixels: padded to a square it is {side}x{side}, more than "
                             f"the {megapixels} (at most {math.isqrt(limit)} pixels on the longer side): crop or "
                             f"downscale it first (or {raise_hint('MAX_IMAGE_PIXELS')})")


def check_model_side(value: int, flag: str) -> None:
    """Refuse a generated frame side (``--size``, a ``--resolution`` side) above :data:`MAX_MODEL_SIDE`.

    Raises:
        UserInputError: naming ``flag`` and the limit.
    """
    limit = current("MAX_MODEL_SIDE")
    if value > limit:
        raise UserInputError(f"{flag} {value} is larger than {limit} pixels, the most a model is run at "
                             f"({raise_hint('MAX_MODEL_SIDE')})")


def check_video_size(width: int, height: int, frames: int | None, what: str) -> None:
    """Refuse a video whose frames, frame pixels or decoded bytes (8-bit RGB) exceed the limits.

    ``frames`` may be ``None`` when not known yet (only the frame size is checked).

    Raises:
        UserInputError: more than :data:`MAX_VIDEO_PIXELS` pixels per frame, more than
            :data:`MAX_VIDEO_FRAMES` frames, or more than :data:`MAX_VIDEO_BYTES` decoded.
    """
    if width * height > current("MAX_VIDEO_PIXELS"):
        raise UserInputError(f"{what} has {width}x{height} frames, larger than the "
                             f"{current('MAX_VIDEO_PIXELS') / 1e6:.0f} megapixel limit "
                             f"({raise_hint('MAX_VIDEO_PIXELS')})")
    if frames is None:
        return
    if frames > current("MAX_VIDEO_FRAMES"):
        raise UserInputError(f"{what} has more than {current('MAX_VIDEO_FRAMES')} frames "
                             f"({raise_hint('MAX_VIDEO_FRAMES')})")
    if frames * width * height * 3 > current("MAX_VIDEO_BYTES"):
        raise UserInputError(f"{what} is {frames} frames of {width}x{height}: decoded it is larger than "
                             f"{format_bytes(current('MAX_VIDEO_BYTES'))} ({raise_hint('MAX_VIDEO_BYTES')})")


def check_expanded_size(value: Any, what: str, max_nodes: int | None = None) -> None:
    """Refuse nested lists / dicts that hold more than ``max_nodes`` values once shared parts are counted
    each time they occur (a YAML alias bomb: a few lines naming one list a billion times).

    Walks without recursion and stops as soon as the limit is passed; the value itself is
    never formatted.

    Raises:
        UserInputError: more than ``max_nodes`` (default :data:`MAX_CONFIG_NODES`) values.
    """
    limit = current("MAX_CONFIG_NODES") if max_nodes is None else max_nodes
    stack, count = [value], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise UserInputError(f"{what} expands to more than {limit} values (YAML aliases repeating data?): not "
                                 f"a config ({raise_hint('MAX_CONFIG_NODES')})")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)


# --------------------------------------------------------------------------- torch.save payloads
#: Bytes per element of the typed storages a torch file may name.
_STORAGE_ELEMENT_BYTES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1,
}
_ZIP_MAGIC = b"PK\x03\x04"


class _Placeholder:
    """Stands for any object a probed pickle builds; accepts any call, item or state, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass

    def append(self, item) -> None:
        pass

    def extend(self, items) -> None:
        pass


class _StorageType(_Placeholder):
    def __new__(cls, name: str = "", *args, **kwargs):
        obj = object.__new__(cls)
        obj.element_bytes = _STORAGE_ELEMENT_BYTES.get(name, 16)
        return obj


class _SizeProbe(pickle.Unpickler):
    """Reads the persistent ids of a legacy ``torch.save`` pickle: ``(storage key → declared bytes)``.

    Every global resolves to a :class:`_Placeholder` (nothing is imported or run); the
    storage types resolve to objects that know their element size.
    """

    def __init__(self, file) -> None:
        super().__init__(file)
        self.storages: dict[str, int] = {}

    def find_class(self, module: str, name: str):
        if name in _STORAGE_ELEMENT_BYTES:
            return _StorageType(name)
        return _Placeholder

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise ValueError("a persistent id that is not a storage")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if type(numel) is not int or numel < 0:
            raise ValueError("a storage of malformed size")
        size = numel * (storage_type.element_bytes if isinstance(storage_type, _StorageType) else 16)
        self.storages[str(key)] = max(self.storages.get(str(key), 0), size)
        return _Placeholder()


def _pickle_end(stream: BinaryIO, start: int, max_pickle_bytes: int) -> int:
    """Offset just past the pickle starting at ``start`` in ``stream``: its opcodes are walked in a
    window of at most ``max_pickle_bytes`` (nothing is built, nothing beyond the window is read)."""
    size = 1 << 16
    while True:
        size = min(size, max_pickle_bytes + 1)
        stream.seek(start)
        window = io.BytesIO(stream.read(size))
        try:
            for opcode, _, _ in pickletools.genops(window):
                if opcode.name == "STOP":
                    return start + window.tell()
        except ValueError:
            if len(window.getbuffer()) < size:  # the file ends inside the pickle
                raise
        if len(window.getbuffer()) < size:
            raise ValueError("a pickle without its end")
        if size > max_pickle_bytes:
            raise ValueError(f"a pickle of more than {format_bytes(max_pickle_bytes)}")
        size *= 16


def torch_payload_bytes(source: bytes | BinaryIO, what: str, max_bytes: int | None = None,
                        limit_name: str | None = None, max_pickle_bytes: int | None = None) -> int:
    """Bytes of tensor data that ``torch.load`` would allocate for a ``torch.save`` payload.

    Read from the payload's own declarations, without building any tensor: for the zip
    format, the uncompressed sizes of its records (a record may be deflate-compressed, so
    a small file can declare gigabytes); for the legacy format (what ``pickle`` writes
    for a tensor storage), the element counts its pickle gives each storage, which
    ``torch.load`` allocates before reading the data.

    Args:
        source: the payload's bytes, or a seekable binary file (left at an unspecified position).
        max_bytes: refuse a payload declaring more (``None``: only return the amount).
        limit_name: the limit ``max_bytes`` comes from (named in the message).
        max_pickle_bytes: largest pickle inside the payload (default :data:`MAX_PICKLE_BYTES`).

    Raises:
        UserInputError: malformed payload, or more than ``max_bytes`` declared.
    """
    max_pickle = current("MAX_PICKLE_BYTES") if max_pickle_bytes is None else max_pickle_bytes
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        stream.seek(0)
        if stream.read(4) == _ZIP_MAGIC:
            stream.seek(0)
            with zipfile.ZipFile(stream) as archive:
                infos = archive.infolist()
            if any(i.filename.endswith(".pkl") and i.file_size > max_pickle for i in infos):
                raise ValueError(f"a pickle of more than {format_bytes(max_pickle)}")
            total = sum(i.file_size for i in infos)
        else:
            offset = 0
            for _ in range(3):  # magic number, protocol version, system info
                offset = _pickle_end(stream, offset, max_pickle)
            end = _pickle_end(stream, offset, max_pickle)  # the object, with its storages as persistent ids
            stream.seek(offset)
            probe = _SizeProbe(io.BytesIO(stream.read(end - offset)))
            probe.load()
            total = sum(probe.storages.values())
    except UserInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to parse the declarations is a malformed payload
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"{what} is not a readable torch file: {detail}") from None
    if max_bytes is not None and total > max_bytes:
        hint = f" ({raise_hint(limit_name)})" if limit_name else ""
        raise UserInputError(f"{what} declares {format_bytes(total)} of tensor data, more than the "
                             f"{format_bytes(max_bytes)} limit{hint}")
    return total


def load_error_reason(exc: BaseException, limit: int = 300) -> str:
    """One line saying why ``torch.load(weights_only=True)`` (or another reader) refused a file.

    torch's refusal of a pickled object opens with advice to retry with
    ``weights_only=False`` (which would run the file's code); that advice is dropped and
    the line naming the refused object is kept.
    """
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        detail = next((line for line in lines if not line.startswith("Check the documentation")), "")
        return f"it holds more than tensors and plain data ({detail[:limit] or 'refused by torch'})"
    return text.splitlines()[0][:limit] if text else type(exc).__name__


# ------------------------------------------------------------------------------------ copying
def copy_bounded(src: str | os.PathLike, dst: str | os.PathLike, what: str, max_bytes: int | None = None,
                 limit_name: str = "MAX_ASSET_BYTES", chunk: int = 1 << 20) -> int:
    """Copy a regular file to a new file ``dst`` with a byte budget; returns the bytes copied.

    ``src`` is checked (kind and size) on the opened file before anything is written,
    ``dst`` is created exclusively (never overwrites), and the copy stops once it passes
    the budget (a file that grows while it is read). On any failure, also an interrupt,
    ``dst`` is removed.

    Args:
        max_bytes: the budget (default :data:`MAX_ASSET_BYTES`).

    Raises:
        UserInputError: ``src`` missing, not a regular file, or larger than the budget.
        OSError: ``dst`` exists or cannot be written.
    """
    limit = current(limit_name) if max_bytes is None else max_bytes
    dst = Path(dst)
    with open_regular(src, what, limit, limit_name) as source:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        copied = 0
        try:
            with os.fdopen(fd, "wb") as target:
                while True:
                    block = source.read(min(chunk, limit + 1 - copied))
                    if not block:
                        break
                    copied += len(block)
                    if copied > limit:
                        raise _too_large(what, Path(src), limit, limit_name)
                    target.write(block)
        except BaseException:
            dst.unlink(missing_ok=True)
            raise
    return copied


# ---------------------------------------------------------------------- leftovers of killed runs
def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (``False`` for ids that cannot be one)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process (or undecidable): treat as alive
    return True
