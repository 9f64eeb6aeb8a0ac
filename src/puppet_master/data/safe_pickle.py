"""A restricted unpickler for the authors' published Drag-a-Move test batches.

Those files are plain pickles of a dict of tensors, lists and strings. Unpickling runs
whatever callables a pickle names, so we only allow the few that rebuild tensors and
plain values, and refuse everything else before it runs.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserInputError


class UnsafePickleError(UserInputError):
    """The pickle asks for a callable outside the allowed set (it may try to run code)."""


def _load_storage_from_bytes(data: bytes):
    # torch.storage._load_from_bytes would call torch.load(weights_only=False):
    # read the nested legacy torch.save payload with torch's own restricted unpickler.
    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


#: (module, name) → the object the unpickler may build. Nothing else is importable.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
}
for _name in ("FloatStorage", "DoubleStorage", "HalfStorage", "LongStorage", "IntStorage", "ShortStorage",
              "CharStorage", "ByteStorage", "BoolStorage", "BFloat16Storage"):
    ALLOWED_GLOBALS[("torch", _name)] = getattr(torch, _name)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`.

    Raises:
        UnsafePickleError: on any other global (e.g. ``os.system``, ``builtins.eval``).
    """

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: only tensors and plain values are allowed in test batches"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a pickle with persistent ids (not a plain test batch)")


def safe_load_pickle(path: str | Path) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler`.

    Raises:
        UserInputError: unreadable or corrupt file.
        UnsafePickleError: the file names a callable outside the allowed set.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return RestrictedUnpickler(fh).load()
    except UnsafePickleError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, RuntimeError) as exc:
        raise UserInputError(f"cannot read pickle {str(path)!r}: {exc}") from exc
