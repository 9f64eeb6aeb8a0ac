"""A restricted unpickler for the authors' published Drag-a-Move test batches.

Those files are plain pickles of a dict of tensors, lists and strings. Unpickling runs
whatever callables a pickle names, so we only allow the few that rebuild tensors and
plain values, and refuse everything else before it runs.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import pickle
import pickletools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import limits
from ..errors import UserInputError


class UnsafePickleError(UserInputError):
    """The pickle asks for a callable outside the allowed set (it may try to run code)."""


#: Limits on what a test batch may hold (:mod:`puppet_master.limits`, with their environment
#: variables): file size, which also bounds all the tensor data its storages decode to;
#: elements per tensor (1 GiB of float32); nesting depth of lists / dicts / tuples.
MAX_PICKLE_BYTES = limits.MAX_PICKLE_BYTES
MAX_TENSOR_ELEMENTS = limits.MAX_TENSOR_ELEMENTS
MAX_DEPTH = limits.MAX_PICKLE_DEPTH


def _load_storage_from_bytes(data: bytes, budget: list[int] | None = None):
    """A tensor storage from its nested ``torch.save`` payload, read with torch's restricted unpickler.

    ``torch.storage._load_from_bytes`` would call ``torch.load(weights_only=False)``. The
    payload's declared tensor data (a zip record may be deflate-compressed: a few MB can
    declare gigabytes) is charged to ``budget`` (a one-item list, shared by every storage of
    one pickle) *before* ``torch.load`` allocates it.
    """
    if not isinstance(data, bytes):
        raise UnsafePickleError(f"a tensor storage must be bytes, got {type(data).__name__}")
    budget = [MAX_PICKLE_BYTES] if budget is None else budget
    try:
        needed = limits.torch_payload_bytes(data, "a tensor storage")
    except UserInputError as exc:
        raise UnsafePickleError(str(exc)) from None
    if needed > budget[0]:
        raise UnsafePickleError(f"the tensor storages of this pickle declare more than "
                                f"{limits.format_bytes(MAX_PICKLE_BYTES)} of data (a compressed or repeated "
                                f"storage?): not a test batch ({limits.raise_hint('MAX_PICKLE_BYTES')})")
    budget[0] -= needed
    storage = torch.load(io.BytesIO(data), weights_only=True)
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"a tensor storage holds a {type(storage).__name__}, not a storage")
    return storage


def _check_tensor_layout(storage, storage_offset, size, stride) -> None:
    """Refuse tensor layouts that do not fit their storage or claim more elements than it holds.

    A zero or overlapping stride lets a small file describe a huge tensor (e.g. shape
    ``(14, 2**31, 4)`` over one number) that later code would materialise.
    """
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"a tensor is built on a {type(storage).__name__}, not a storage")
    ints = lambda v: isinstance(v, (tuple, list)) and all(type(x) is int and x >= 0 for x in v)  # noqa: E731
    if type(storage_offset) is not int or storage_offset < 0 or not ints(size) or not ints(stride) \
            or len(size) != len(stride) or len(size) > 8:
        raise UnsafePickleError("a tensor has a malformed offset, size or stride")
    numel = math.prod(size)
    with warnings.catch_warnings():  # TypedStorage.size() warns that typed storages are deprecated
        warnings.simplefilter("ignore", UserWarning)
        storage_size = storage.size()
    available = storage_size - storage_offset
    if numel > MAX_TENSOR_ELEMENTS:
        raise UnsafePickleError(f"a tensor of shape {tuple(size)} is larger than the {MAX_TENSOR_ELEMENTS} element limit")
    if numel and (numel > available or storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage_size):
        raise UnsafePickleError(f"a tensor of shape {tuple(size)} and stride {tuple(stride)} does not fit its storage "
                                f"of {storage_size} elements")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    _check_tensor_layout(storage, storage_offset, size, stride)
    if not isinstance(requires_grad, bool) or backward_hooks or not isinstance(metadata, (dict, type(None))):
        raise UnsafePickleError("a tensor carries hooks or unexpected metadata")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_tensor(storage, storage_offset, size, stride):
    _check_tensor_layout(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


#: numpy dtype kinds a test batch may hold: booleans, numbers, byte and unicode strings.
_PLAIN_KINDS = "biufcSU"


def _numpy_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec, align, copy)
    if dtype.kind not in _PLAIN_KINDS or dtype.hasobject or dtype.itemsize > 1 << 16:
        raise UnsafePickleError(f"refusing numpy dtype {dtype}: only numbers and strings are allowed in test batches")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in _PLAIN_KINDS:
        raise UnsafePickleError("a numpy scalar needs a number or string dtype")
    if data is None:
        return dtype.type()
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError(f"a numpy {dtype} scalar needs {dtype.itemsize} bytes of data, "
                                f"got {len(data) if isinstance(data, bytes) else type(data).__name__}")
    return np.frombuffer(data, dtype=dtype)[0]


#: (module, name) → the object the unpickler may build. Nothing else is importable.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
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

    The tensor data all nested storages of one pickle decode to is bounded by
    :data:`MAX_PICKLE_BYTES` together, checked before each is allocated (a pickle may name
    the same small compressed payload many times).

    Raises:
        UnsafePickleError: on any other global (e.g. ``os.system``, ``builtins.eval``), or
            storages beyond the budget.
    """

    def __init__(self, file, **kwargs) -> None:
        super().__init__(file, **kwargs)
        self._storage_budget = [MAX_PICKLE_BYTES]

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return functools.partial(_load_storage_from_bytes, budget=self._storage_budget)
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

    The file must be a regular file (a device or FIFO is refused without reading it) and
    is read whole first, with a cap (at most :data:`MAX_PICKLE_BYTES`), so a header that
    claims more bytes than the file holds fails as truncated instead of allocating them.

    Raises:
        UserInputError: missing, non-regular, unreadable, oversized or corrupt file.
        UnsafePickleError: the file names a callable outside the allowed set, builds a
            tensor, dtype or scalar that is not plain data, or declares more tensor data
            than :data:`MAX_PICKLE_BYTES`.
    """
    path = Path(path)
    data = limits.read_bytes_bounded(path, "pickle", MAX_PICKLE_BYTES, "MAX_PICKLE_BYTES")
    try:
        for _ in pickletools.genops(data):  # walks the opcodes: a length beyond the file's end fails here, cheaply
            pass
        value = RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure of a corrupt file is the same problem for the user
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"cannot read pickle {str(path)!r}: {detail}") from None
    if _depth(value) > MAX_DEPTH:
        raise UserInputError(f"pickle {str(path)!r} is nested more than {MAX_DEPTH} levels deep: not a test batch")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of lists / tuples / sets / dicts, without recursion; stops past :data:`MAX_DEPTH`."""
    stack, deepest, seen = [(value, 1)], 0, set()
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (list, tuple, set, dict)) or id(node) in seen:
            continue
        seen.add(id(node))
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)
    return deepest
