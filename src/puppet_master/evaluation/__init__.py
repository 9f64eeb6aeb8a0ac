"""Evaluation on the Drag-a-Move protocol (docs/design.md §7): loaders and the restricted unpickler."""

from .safe_pickle import RestrictedUnpickler, UnsafePickleError, safe_load_pickle

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "safe_load_pickle"]
